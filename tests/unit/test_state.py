"""Per-customer state: repeats of an event_id are recognised; memory stays bounded."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
import struct
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson

from pipeline.config import load_config
from pipeline.core.engine import Engine
from pipeline.core.state import VERSION, CustomerState, load, plain
from pipeline.tools.replay import Replay
from tests.integration import scenario

DAY = 86400.0
WEEK = timedelta(days=7)
YEAR = timedelta(days=365)


def test_a_repeated_event_id_is_recognised_after_a_round_trip_through_bytes() -> None:
    state = CustomerState().remember("e-1", 0.0, WEEK, 256)
    assert state is not None
    restored = CustomerState.from_bytes(state.to_bytes())
    assert restored.remember("e-1", 10.0, WEEK, 256) is None
    assert restored.remember("e-2", 10.0, WEEK, 256) is not None


def test_ids_older_than_the_window_before_the_newest_are_forgotten() -> None:
    state = CustomerState().remember("old", 0.0, WEEK, 256)
    assert state is not None
    state = state.remember("new", 8 * DAY, WEEK, 256)
    assert state is not None
    assert len(state.seen) == 1
    assert state.remember("new", 8 * DAY, WEEK, 256) is None


def test_at_most_max_ids_are_kept_newest_first() -> None:
    state: CustomerState | None = CustomerState()
    for i in range(10):
        assert state is not None
        state = state.remember(f"e-{i}", float(i), WEEK, 4)
    assert state is not None
    assert len(state.seen) == 4
    assert state.remember("e-9", 9.0, WEEK, 4) is None
    assert state.remember("e-0", 0.0, WEEK, 4) is not None  # forgotten: past the bound


def test_a_state_stored_by_the_previous_version_is_read_and_its_ids_still_recognised() -> None:
    """Version 2 kept the digests as hex with float times: a worker upgraded in place reads
    its changelog and still knows the events it has seen."""
    old = orjson.dumps(
        {
            "v": 2,
            "seen": [[hashlib.blake2b(b"e-1", digest_size=8).hexdigest(), 1764745200.25]],
            "p": 3,
        }
    )
    state = CustomerState.from_bytes(old)
    assert state.partition == 3
    assert state.remember("e-1", 1764745300.0, WEEK, 256) is None
    again = CustomerState.from_bytes(state.to_bytes())
    assert again.remember("e-1", 1764745300.0, WEEK, 256) is None
    assert again.seen[0][1] == 1764745201.0  # to the second, rounded up: kept, never dropped early
    assert CustomerState.from_bytes(again.to_bytes()) == again  # and it stays so


def test_each_remembered_id_costs_at_most_12_bytes_stored() -> None:
    """The part of the state that grows with every event: 8-byte digest and its gap from the
    id before, packed; events an irregular few minutes to hours apart, as in life."""
    rng = random.Random(3)
    t = 1764745200.5
    one = CustomerState().remember("e-0", t, YEAR, 256)
    state = one
    for i in range(1, 101):
        assert state is not None
        t += rng.uniform(60, 6 * 3600)
        state = state.remember(f"event-{i:040d}", t, YEAR, 256)
    assert one is not None
    assert state is not None
    per_id = (len(state.to_bytes()) - len(one.to_bytes())) / 100
    assert 8 <= per_id <= 12  # the digests themselves do not compress
    again = CustomerState.from_bytes(state.to_bytes())
    assert [d for d, _ in again.seen] == [d for d, _ in state.seen]
    for (_, read), (_, kept) in zip(again.seen, state.seen, strict=True):
        assert kept <= read < kept + 1  # to the second, never older: not forgotten early
    assert again.remember("event-" + "0" * 39 + "7", t, YEAR, 256) is None


def test_a_version_3_state_is_read_and_written_back_compressed_with_the_same_meaning() -> None:
    """A worker upgraded in place reads the plain JSON states of its changelog: the ids it
    has seen, the rules' state, recent events and the rest carry over."""
    seen = [
        (hashlib.blake2b(f"e-{i}".encode(), digest_size=8).digest(), 1764745200.25 + i * 3600)
        for i in range(5)
    ]
    old = {
        "v": 3,
        "seen": base64.b64encode(b"".join(struct.pack("<8sd", d, t) for d, t in seen)).decode(),
        "rules": {
            "repeated_contact": ["1cafeee38a9b", {"billing": {"e": [[1.5, "e-4"]], "q": None}}]
        },
        "profile": {"tier": "gold", "occurred_at": "2026-12-03T06:00:00+00:00"},
        "p": 2,
        "recent": [
            [1764745200.25, "interaction.contact", "billing"],
            [1764748800.125, "order.shipped", "o-1"],
            [1764752400.0, "a.later.type", ""],
        ],
        "orders": {"o-1": {"status": "shipped"}},
        "open": {"x1": {"rule": "missing_delivery", "status": "open", "subject": {}}},
    }
    state = CustomerState.from_bytes(orjson.dumps(old))
    assert state.remember("e-3", 1764760000.0, WEEK, 256) is None
    stored = state.to_bytes()
    assert len(stored) < len(state.to_bytes(compress=False))  # compressed
    again = CustomerState.from_bytes(stored)
    assert again.remember("e-3", 1764760000.0, WEEK, 256) is None
    assert again.remember("e-9", 1764760000.0, WEEK, 256) is not None
    assert (again.rules, again.profile, again.partition) == (state.rules, state.profile, 2)
    assert (again.orders, again.open) == (state.orders, state.open)
    assert again.recent == (
        (1764745200.25, "interaction.contact", "billing"),
        (1764748800.125, "order.shipped", "o-1"),
        (1764752400.0, "a.later.type", ""),  # a type the codes do not know: kept by name
    )
    assert plain(stored)["v"] == VERSION


def test_a_version_4_state_is_read_and_written_back_as_version_6_with_the_same_meaning() -> None:
    """Version 4 (compact JSON in a zstd frame) is what a worker's changelog holds before the
    upgrade: every part reads the same, through a round trip of the new version too."""
    import zstandard

    times = [1764745200 + i * 3600 for i in range(5)]
    ids = b"".join(hashlib.blake2b(f"e-{i}".encode(), digest_size=8).digest() for i in range(5))
    ages = struct.pack("<5I", *(times[-1] - t for t in times))
    rules = {
        "repeated_contact": ["1cafeee38a9b", {"billing": {"e": [[1.5, "e-4"]], "q": None}}],
        "missing_delivery": ["f89134945b11", {"o-1": {"x": 1764748800.125}}],
    }
    old = {
        "v": 4,
        "sn": times[-1],
        "seen": base64.b64encode(ids + ages).decode(),
        "rules": rules,
        "profile": {"tier": "gold", "occurred_at": "2026-12-03T06:00:00+00:00"},
        "p": 0,
        "r": [[1764745200.25, 1764748800.125], [0, "a.later.type"], ["billing", ""]],
        "orders": {"o-2": {"status": "placed", "value": {"amount": "1.50", "currency": "EUR"}}},
        "open": {"x1": {"rule": "missing_delivery", "status": "open", "subject": {}}},
    }
    stored = zstandard.ZstdCompressor().compress(orjson.dumps(old))
    for state in (CustomerState.from_bytes(stored),) * 2:
        assert state.partition == 0
        assert [t for _, t in state.seen] == times
        assert state.remember("e-2", times[-1], WEEK, 256) is None
        assert state.rules == rules
        assert state.profile == old["profile"]
        assert (state.orders, state.open) == (old["orders"], old["open"])
        assert state.recent == (
            (1764745200.25, "interaction.contact", "billing"),
            (1764748800.125, "a.later.type", ""),
        )
        again = CustomerState.from_bytes(state.to_bytes())
        assert again == CustomerState.from_bytes(state.to_bytes(compress=False))
        assert (again.seen, again.rules, again.profile, again.partition) == (
            state.seen,
            state.rules,
            state.profile,
            0,
        )
        assert (again.recent, again.orders, again.open) == (state.recent, state.orders, state.open)
        stored = state.to_bytes()
        assert plain(stored)["v"] == VERSION


def test_a_version_6_state_reads_back_equal_with_the_types_it_was_written_with() -> None:
    """MessagePack keeps what JSON kept: floats stay floats (exactly), ints ints, lists lists,
    tuples of recent events tuples; nested rule states and the profile come back equal."""
    state = CustomerState(
        seen_ids=bytes(range(16)),
        seen_times=(1764745201, 1764748801),
        rules={"r": ["v1", {"k": {"e": [[1.25, "e-1"], [2.0, "e-2"]], "q": None}}]},
        profile={"tier": "gold", "attributes": {"n": 3, "x": [1, 2.5, True, None]}},
        partition=0,
        recent=((1764745200.1, "interaction.contact", "billing"), (1764748800.0, "x.y", "")),
        orders={"o-1": {"status": "placed", "value": {"amount": "1.50", "currency": "EUR"}}},
        open={"x": {"rule": "r", "status": "open", "subject": {"order_id": "o-1"}}},
    )
    for compress in (True, False):
        read = CustomerState.from_bytes(state.to_bytes(compress))
        assert read == state
        assert read.rules["r"][1]["k"]["e"][1][0].__class__ is float
        assert read.profile is not None
        assert read.profile["attributes"]["n"].__class__ is int
        assert read.recent[1][0].__class__ is float
        assert plain(state.to_bytes(compress))["v"] == VERSION
    assert CustomerState.from_bytes(CustomerState().to_bytes()) == CustomerState()


def test_a_customers_state_is_stored_in_well_under_half_its_plain_json() -> None:
    """What the memory store and the changelog hold per customer (issue 7: 1 KB)."""
    rng = random.Random(5)
    t = 1764745200.0
    state = CustomerState(profile={"tier": "gold", "name": "Customer 000042"}, partition=1)
    for _ in range(40):
        t += rng.uniform(600, 12 * 3600)
        step = state.remember(f"crm-{rng.getrandbits(64):016x}", t, WEEK, 256)
        assert step is not None
        state = step._replace(
            recent=(*step.recent, (t, "interaction.contact", rng.choice(CATEGORIES)))[-20:],
        )
    as_json = orjson.dumps(
        {
            "seen": [[d.hex(), t] for d, t in state.seen],
            "recent": state.recent,
            "profile": state.profile,
            "p": 1,
        }
    )
    assert len(state.to_bytes()) < 0.45 * len(as_json)
    assert CustomerState.from_bytes(state.to_bytes()).recent == state.recent


CATEGORIES = ("billing/refund", "billing/overcharge", "tv/no-signal", "internet/slow", "moving")


def test_empty_table_value_is_a_new_customer() -> None:
    assert CustomerState.from_bytes(None) == CustomerState()
    assert len(CustomerState().remember("e", 0.0, WEEK, 4).to_bytes()) < 150  # type: ignore[union-attr]


def test_a_heavy_customers_state_stays_bounded_over_a_year() -> None:
    """Ten contacts a day for a year, weekly complaints, an order every other day: windows
    expire, closed orders age out, remembered ids are capped; the state does not grow with time."""
    from datetime import UTC, datetime, timedelta

    from pipeline.config import load_config
    from pipeline.tools.replay import Replay

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    replay = Replay(load_config(), errors=io.StringIO())
    sizes = []
    n = 0

    def line(type_: str, at: datetime, **fields: str) -> bytes:
        nonlocal n
        n += 1
        return orjson.dumps(
            {
                "event_id": f"h{n}",
                "type": type_,
                "customer_id": "heavy",
                "occurred_at": at.isoformat(),
                **fields,
            }
        )

    for day in range(365):
        lines = [
            line(
                "interaction.contact",
                t0 + timedelta(days=day, minutes=30 * k),
                channel="call",
                category=f"cat-{k % 5}",
            )
            for k in range(10)
        ]
        if day % 2 == 0:
            lines.append(
                line("order.shipped", t0 + timedelta(days=day, hours=9), order_id=f"o{day}")
            )
            lines.append(
                line("order.delivered", t0 + timedelta(days=day, hours=30), order_id=f"o{day}")
            )
        list(replay.feed(lines))
        sizes.append(len(replay.states[b"heavy"]))
    assert max(sizes[60:]) <= 1.2 * max(sizes[30:60])  # flat after the first month
    assert sizes[-1] < 8 * 1024


def test_rules_with_nothing_to_remember_take_no_room() -> None:
    """A rule whose state is its initial one (nothing counted, nothing pending) is left out of
    the customer's state, and reads back the same: detection is unchanged."""
    from pipeline.config import load_config
    from pipeline.core.engine import Engine

    engine = Engine(load_config())
    contact = {
        "event_id": "e-1",
        "type": "interaction.contact",
        "customer_id": "c-1",
        "occurred_at": "2026-12-01T10:00:00+00:00",
        "channel": "call",
        "category": "billing/refund",
        "summary": "a question about the bill",
    }
    state, _ = engine.observe(CustomerState(), contact, 1764583200.0)
    assert set(state.rules) == {"repeated_contact"}  # the others saw nothing to keep
    full = {r.name: [r.version, r.detector.initial()] for r in engine.rules}
    as_before = CustomerState(rules={**full, **state.rules})
    second = {**contact, "event_id": "e-2", "occurred_at": "2026-12-01T11:00:00+00:00"}
    ours = engine.observe(state, second, 1764586800.0)
    before = engine.observe(as_before, second, 1764586800.0)
    assert ours[1] == before[1]  # the same findings
    assert ours[0].rules == before[0].rules  # a stored initial state reads the same as none
    assert set(ours[0].rules) == {"repeated_contact"}


def test_a_stored_state_takes_little_more_memory_than_its_length() -> None:
    """The memory store keeps every customer's state bytes: orjson's own output buffers are
    4-16 times the JSON (4 KiB at least), which made the worker's memory grow with the states."""
    state = CustomerState(profile={"name": "x" * 900}, partition=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [state.to_bytes() for _ in range(2000)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    length = sum(len(value) for value in kept)
    assert used < 1.2 * length + 2000 * 64  # the bytes, their headers, the list


def _reference(
    seen: list[tuple[bytes, float]], event_id: str, at: float, window: float, max_ids: int
) -> list[tuple[bytes, float]] | None:
    """Dedupe written plainly (the code before the ids were packed): a list of (digest, time),
    sorted by time, the new id after those of its time, stored to the second rounded up."""
    key = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    if any(d == key for d, _ in seen):
        return None
    horizon = max([at, *(t for _, t in seen)]) - window
    kept = sorted([*(e for e in seen if e[1] >= horizon), (key, at)], key=lambda e: e[1])
    return [(d, float(math.ceil(t))) for d, t in kept[-max_ids:]]


def test_remembering_agrees_with_a_plain_list_of_ids_and_times() -> None:
    """Late, repeated and same-second ids, both bounds: what is remembered and what is
    forgotten is the same as a plain sorted list's, event after event, through bytes."""
    rng = random.Random(11)
    for max_ids in (1, 3, 8, 256):
        state = CustomerState()
        model: list[tuple[bytes, float]] = []
        t = 1764745200.0
        for i in range(400):
            t += rng.choice([0.0, 0.5, 1.0, 600.0, 3 * DAY])
            at = t - rng.choice([0.0, 0.0, 0.5, 2.0, 5 * DAY, 9 * DAY])  # some late, some ties
            event_id = f"e-{rng.randrange(i + 1)}"  # some repeats
            expected = _reference(model, event_id, at, WEEK.total_seconds(), max_ids)
            step = state.remember(event_id, at, WEEK, max_ids)
            assert (step is None) == (expected is None), (max_ids, i)
            if step is not None and expected is not None:
                state = CustomerState.from_bytes(step.to_bytes())
                model = expected
                assert list(state.seen) == model, (max_ids, i)


def test_a_state_read_lazily_is_written_back_as_it_was_and_finds_what_a_full_read_finds() -> None:
    """The processor reads states lazily (`from_bytes(..., lazy=True)`): sections an event does
    not touch stay MessagePack. The bytes written back and the findings must not tell."""
    now = datetime(2026, 3, 1, 9, tzinfo=UTC)
    config = load_config()
    replay = Replay(config, errors=io.StringIO())
    list(replay.feed([orjson.dumps(e) for e in scenario.build(now, noise=200)]))
    list(replay.finish())
    engine = Engine(config)
    later = now.timestamp() + DAY
    at = datetime.fromtimestamp(later, UTC).isoformat()
    touched = 0
    for customer, value in replay.states.items():
        assert CustomerState.from_bytes(value, lazy=True).to_bytes() == value
        orders = list(load(CustomerState.from_bytes(value, lazy=True).orders))
        events: list[dict[str, object]] = [
            {"type": "interaction.complaint", "sentiment": "negative", "channel": "phone"},
            {"type": "interaction.contact", "category": "billing", "channel": "chat"},
            {"type": "customer.profile", "tier": "gold", "name": "New Name"},
            {"type": "interaction.maintenance_requested", "asset_id": "a-1"},
            {"type": "order.shipped", "order_id": "o-new", "promised_by": at},
            *({"type": "order.delivered", "order_id": o} for o in orders[:1]),
        ]
        for n, fields in enumerate(events):
            event = {
                "event_id": f"later-{n}",
                "customer_id": customer.decode(),
                "occurred_at": at,
                **fields,
            }
            lazy, lazy_found = engine.observe(
                CustomerState.from_bytes(value, lazy=True), event, later
            )
            full, full_found = engine.observe(CustomerState.from_bytes(value), event, later)
            assert lazy.to_bytes() == full.to_bytes()
            assert lazy_found == full_found
            assert [engine.context(lazy, f) for f in lazy_found] == [
                engine.context(full, f) for f in full_found
            ]
            touched += bool(lazy_found)
    assert touched  # some of the events found something: contexts were compared
