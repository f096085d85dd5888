"""The soak's paced load is one story told in chunks (bench/workload.py `Story`): an order placed
near a chunk's end is still shipped and delivered in the next, as it would be in life. Chunks
built one by one (`paced`) cut those episodes, and the soak's state and findings measured the
cut (orders never delivered) rather than the workload."""

from __future__ import annotations

import itertools

import orjson

from bench import workload

CHUNK = 30.0  # seconds: a model day per chunk, as the soak runs it


def _orders(chunks: list[list[workload.Msg]]) -> tuple[dict[str, float], dict[str, set[str]]]:
    """When each order was placed, and every other order event's type by order id."""
    placed: dict[str, float] = {}
    later: dict[str, set[str]] = {}
    for chunk in chunks:
        for m in chunk:
            event = orjson.loads(m.value)
            if event["type"] == "order.placed":
                placed[event["order_id"]] = m.t
            elif event["type"].startswith("order."):
                later.setdefault(event["order_id"], set()).add(event["type"])
    return placed, later


def _undelivered(chunks: list[list[workload.Msg]]) -> float:
    """Of the orders placed in the middle chunks (their whole story fits in the run), the share
    neither delivered nor cancelled."""
    placed, later = _orders(chunks)
    start, end = chunks[1][0].t, chunks[-2][-1].t
    middle = [o for o, t in placed.items() if start <= t <= end]
    open_ = [o for o in middle if not later.get(o, set()) & {"order.delivered", "order.cancelled"}]
    return len(open_) / len(middle)


def _orphans(chunks: list[list[workload.Msg]]) -> set[str]:
    """Orders with events after the first chunk but no `placed` (the first chunk's lead has
    episodes under way before it)."""
    placed, later = _orders(chunks)
    first = {orjson.loads(m.value).get("order_id") for m in chunks[0]}
    return {o for o in later if o not in placed and o not in first}


def test_a_story_in_chunks_carries_episodes_across_their_edges() -> None:
    story = workload.Story(2000, CHUNK, "t", seed=3)
    chunks = [story.next(200.0, CHUNK) for _ in range(6)]
    # The model loses 1% of parcels: about that many orders are never delivered.
    assert _undelivered(chunks) < 0.03
    assert not _orphans(chunks)


def test_chunks_follow_one_another_in_order_without_gaps() -> None:
    story = workload.Story(500, CHUNK, "t", seed=4)
    chunks = [story.next(100.0, 5.0) for _ in range(4)]
    for before, after in itertools.pairwise(chunks):
        assert before[-1].t <= after[0].t  # sent in order across the edge
    for chunk in chunks:
        first: dict[str, float] = {}  # each message's first sending
        for m in chunk:
            first.setdefault(m.event_id, m.t)
        times = list(first.values())
        assert times == sorted(times)  # in time order, but for the upstream retries
        assert 0.9 * 500 <= len(chunk) <= 1.1 * 500  # the rate asked, carried events included
    ids = [m.event_id for chunk in chunks for m in chunk]
    assert len(set(ids)) > 0.99 * len(ids)  # only the workload's upstream retries repeat


def test_chunks_built_alone_cut_the_episodes() -> None:
    """What the story fixes: the same load built chunk by chunk leaves several times the
    model's lost parcels undelivered (the measurement above would not catch a regression
    otherwise)."""
    chunks = [workload.paced(2000, 200.0, CHUNK, f"t{k}", seed=k) for k in range(6)]
    assert _undelivered(chunks) > 0.10
    assert _orphans(chunks)
