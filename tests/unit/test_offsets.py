"""The fetch loop around a rebalance: after a seek to the committed offsets (every rebalance) or a
clear of the agents' queues, every record from the committed offset on must reach the agents
again, and nothing may be committed as a broker "gap" that the broker did send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from mode import Service

from pipeline.runtime.durable import App
from pipeline.runtime.offsets import SafeConsumer, start

TOPIC = "casewatch.interactions"
PART = TP(TOPIC, 0)
COMMITTED = 100

# SafeConsumer replaces Faust's fetch loop on Faust's own consumer: `make test-upstream` runs these.
pytestmark = pytest.mark.upstream


@dataclass
class Record:
    topic: str
    offset: int
    tp: TP = PART
    key: bytes = b"c1"
    value: bytes = b"{}"


@dataclass
class Broker:
    """What aiokafka would hand out: a batch fetched before the seek, then (its position moved
    back to the committed offset by the seek) the same records again."""

    batches: list[list[int]]
    during: Callable[[int], Awaitable[None]]  # runs while the record at that offset is delivered
    pause_before: int | None = None  # the fetch loop yields to other tasks before this record
    delivered: list[int | str] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)


class Fetcher(Service):
    pass


async def drain(consumer: Any, broker: Broker, drain_messages: Any) -> list[int | str]:
    fetcher = Fetcher()
    batches = iter(broker.batches)

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Record]]:  # noqa: ASYNC109
        batch = next(batches, None)
        if batch is None:
            fetcher._stopped.set()
            return
        for offset in batch:
            if offset == broker.pause_before and "seek" not in broker.delivered:
                await asyncio.sleep(0.05)  # e.g. the loop's sleep(0) every 100 records
            yield PART, Record(TOPIC, offset)

    ours = drain_messages is SafeConsumer._drain_messages

    async def wait_next_records(timeout: float) -> tuple[dict[TP, list[Record]], set[TP]]:  # noqa: ASYNC109
        # Ours takes a fetch's records a partition at a time, not through `getmany`.
        batch = next(batches, None)
        if batch is None:
            fetcher._stopped.set()
            return {}, {PART}
        return {PART: [Record(TOPIC, offset) for offset in batch]}, {PART}

    async def callback(message: Record) -> None:
        broker.delivered.append(message.offset)
        if ours and message.offset == broker.pause_before and "seek" not in broker.delivered:
            await asyncio.sleep(0.05)  # the delivery waits (the agent's queue is full)
        await broker.during(message.offset)

    async def seek_to_committed() -> dict[TP, int]:
        broker.delivered.append("seek")
        return {PART: COMMITTED}

    async def add_gap(tp: TP, first: int, to: int) -> None:
        broker.gaps.append((first, to))

    consumer.getmany = getmany
    consumer._wait_next_records = wait_next_records
    consumer._to_message = lambda tp, record: record
    consumer.callback = callback
    consumer.seek_to_committed = seek_to_committed
    consumer._add_gap = add_gap
    consumer.assignment = lambda: {PART}
    consumer.flow_active = True
    consumer._read_offset[PART] = COMMITTED
    consumer.app.topics.acks_enabled_for = lambda topic: True
    try:
        await asyncio.wait_for(drain_messages(consumer, fetcher), 5)
    finally:
        consumer._thread.thread_loop.close()  # the consumer's thread never ran
    return broker.delivered


def consumer() -> Any:
    app = App("offsets-test", broker="kafka://localhost:1", autodiscover=False, web_enabled=False)
    c = app.consumer
    assert isinstance(c, SafeConsumer)
    return c


def after_seek(delivered: list[int | str]) -> list[int | str]:
    last = max(i for i, x in enumerate(delivered) if x == "seek")
    return delivered[last + 1 :]


@pytest.mark.parametrize(
    "drain_messages", [FaustConsumer._drain_messages, SafeConsumer._drain_messages]
)
def test_a_seek_during_a_batch_reads_everything_again(drain_messages: Any) -> None:
    """The recovery seeks to the committed offset while the loop hands out a batch."""

    async def scenario() -> list[int | str]:
        c = consumer()

        async def during(offset: int) -> None:
            if offset == 105 and "seek" not in broker.delivered:
                await c.perform_seek()

        broker = Broker([list(range(100, 110)), list(range(100, 112))], during)
        return await drain(c, broker, drain_messages)

    delivered = asyncio.run(scenario())
    if drain_messages is FaustConsumer._drain_messages:
        # faust 0.15.3 goes on with the stale batch and drops the broker's new copies as read:
        # records 100-105 delivered before the seek are never delivered after it
        assert not set(range(100, 106)) & set(after_seek(delivered))
    else:
        assert after_seek(delivered) == list(range(100, 112))


@pytest.mark.parametrize(
    "drain_messages", [FaustConsumer._drain_messages, SafeConsumer._drain_messages]
)
def test_a_seek_between_two_records_is_not_a_gap(drain_messages: Any) -> None:
    """The seek lands between two deliveries: the next stale record looks like a jump."""

    async def scenario() -> Broker:
        c = consumer()

        async def during(offset: int) -> None:
            if offset == 105 and "seek" not in broker.delivered:
                # the recovery's seek, in another task, completes after this record was read
                loop = asyncio.get_running_loop()
                loop.call_later(0.01, lambda: asyncio.ensure_future(c.perform_seek()))

        broker = Broker([list(range(100, 110)), list(range(100, 112))], during, pause_before=106)
        await drain(c, broker, drain_messages)
        return broker

    broker = asyncio.run(scenario())
    if drain_messages is FaustConsumer._drain_messages:
        assert broker.gaps == [(101, 106)]  # committed without processing after the seek
    else:
        assert broker.gaps == []
        # the delivery of 106 waited across the seek: read again with the rest
        assert after_seek(broker.delivered) == list(range(100, 112))


def test_records_dropped_by_a_queue_clear_are_fetched_again() -> None:
    async def scenario() -> list[int | str]:
        c = consumer()

        async def during(offset: int) -> None:
            if offset == 103 and "seek" not in broker.delivered:
                c.app.flow_control.on_cleared()  # a rebalance cleared the agents' queues

        broker = Broker([list(range(100, 110)), list(range(100, 112))], during)
        return await drain(c, broker, SafeConsumer._drain_messages)

    delivered = asyncio.run(scenario())
    assert delivered[:5] == [100, 101, 102, 103, "seek"]
    assert after_seek(delivered) == list(range(100, 112))


def test_a_seek_forgets_acks_of_skipped_messages() -> None:
    """A message of the previous generation reached an agent after the rebalance: Faust skips
    it and acks it all the same. That ack must not let the commit pass the offsets before it."""

    async def scenario() -> tuple[int | None, int | None]:
        c = consumer()
        c._committed_offset[PART] = 99  # the next offset to process is 99
        c._acked[PART].append(100)  # the skipped message
        c._acked_index[PART].add(100)
        faust_would_commit = FaustConsumer._new_offset(c, PART)
        c._acked[PART].append(100)
        c._acked_index[PART].add(100)

        async def seek_to_committed() -> dict[TP, int]:
            return {PART: 99}

        c.seek_to_committed = seek_to_committed
        c.assignment = lambda: {PART}
        await c.perform_seek()
        c._thread.thread_loop.close()
        return faust_would_commit, c._new_offset(PART)

    faust_would_commit, ours = asyncio.run(scenario())
    assert faust_would_commit == 101  # offset 99 committed without being processed
    assert ours is None


def seeking(committed: dict[TP, int | None], earliest: int, sought: dict[TP, int]) -> Any:
    """A consumer whose broker has `committed` (aiokafka's seek_to_committed leaves a partition
    with None or 0 where it is), every partition starting at `earliest`; seeks go to `sought`."""
    c = consumer()

    async def seek_to_committed() -> dict[TP, int | None]:
        return committed

    async def earliest_offsets(*partitions: TP) -> dict[TP, int]:
        return {tp: earliest for tp in partitions}

    async def seek_wait(offsets: dict[TP, int]) -> None:
        sought.update(offsets)

    c.seek_to_committed = seek_to_committed
    c.earliest_offsets = earliest_offsets
    c.seek_wait = seek_wait
    c.assignment = lambda: set(committed)
    c.app.topics.acks_enabled_for = lambda topic: True
    return c


def test_reading_again_rewinds_partitions_without_a_committed_offset() -> None:
    """Nothing committed yet (a new group): a re-read starts from the first offset."""
    sought: dict[TP, int] = {}

    async def scenario() -> None:
        c = seeking({PART: None, TP(TOPIC, 1): 0, TP(TOPIC, 2): 40}, 7, sought)
        await c._read_again()
        c._thread.thread_loop.close()

    asyncio.run(scenario())
    # partition 2 was sought to its committed offset by aiokafka's seek_to_committed
    assert sought == {PART: 7, TP(TOPIC, 1): 7}


def test_the_seek_after_a_rebalance_rewinds_partitions_without_a_committed_offset() -> None:
    """Early in a group's life nothing is committed. A partition this worker keeps through a
    rebalance must not go on from its fetch position: the records fetched before the rebalance
    were dropped with the agents' queues, unprocessed. The recovery's own seek (not only a
    re-read) takes it back to its first offset."""
    sought: dict[TP, int] = {}

    async def scenario() -> Any:
        c = seeking({PART: None}, 0, sought)
        await c.perform_seek()
        c._thread.thread_loop.close()
        return c

    c = asyncio.run(scenario())
    assert sought == {PART: 0}
    assert c._base == {PART: 0}


def test_nothing_committed_yet_is_no_licence_to_commit_past_unprocessed_offsets() -> None:
    """Faust's commit guard compares the first acknowledged offset with the committed one, and
    is skipped when nothing is committed: acknowledgements of 500-509 alone (0-499 fetched and
    dropped, never processed) would commit 510. Ours holds the partition to where reading
    started after the seek."""

    def acked(c: Any, offsets: range) -> None:
        for offset in offsets:
            c._acked[PART].append(offset)
            c._acked_index[PART].add(offset)

    c = consumer()
    c._thread.thread_loop.close()
    assert c._committed_offset[PART] is None
    acked(c, range(500, 510))
    assert FaustConsumer._new_offset(c, PART) == 510  # 0-499 passed over
    acked(c, range(500, 510))
    c._base[PART] = 0  # where the seek put the partition
    assert c._new_offset(PART) is None
    acked(c, range(0, 500))
    assert c._new_offset(PART) == 510  # once 0-499 are processed too
    # and a partition whose start is not known is not committed at all
    c._base.clear()
    acked(c, range(510, 520))
    assert c._new_offset(PART) is None


def test_a_failed_seek_is_tried_again_before_fetching_on() -> None:
    """A rebalance can take the partitions during the seek: the loop must neither crash nor
    fetch on without it."""

    async def scenario() -> list[int | str]:
        c = consumer()

        async def during(offset: int) -> None:
            if offset == 103 and "seek" not in broker.delivered:
                c.app.flow_control.on_cleared()

        broker = Broker([list(range(100, 105)), list(range(100, 106))], during)
        failures = [AssertionError("No partitions are currently assigned")]
        real_read_again = c._read_again

        async def read_again() -> None:
            if failures:
                raise failures.pop()
            await real_read_again()

        c._read_again = read_again
        return await drain(c, broker, SafeConsumer._drain_messages)

    delivered = asyncio.run(scenario())
    assert after_seek(delivered) == list(range(100, 106))


def test_a_delivery_that_need_not_wait_runs_at_once_and_one_that_waits_runs_as_a_task() -> None:
    """`start`: the fetch loop's deliveries (the conductor's on_message) usually end without
    waiting; only those that wait (the agent's queue full) become a task that races a rebalance."""

    async def scenario() -> list[str]:
        steps: list[str] = []
        room = asyncio.get_running_loop().create_future()

        async def deliver(name: str, wait: bool) -> str:
            steps.append(f"{name} begins")
            if wait:
                await room
            steps.append(f"{name} delivered")
            return name

        assert start(deliver("a", wait=False)) is None
        steps.append("a returned")
        waiting = start(deliver("b", wait=True))
        assert waiting is not None
        steps.append("b returned")
        await asyncio.sleep(0.01)
        room.set_result(None)
        assert await waiting == "b"
        return steps

    assert asyncio.run(scenario()) == [
        "a begins",
        "a delivered",
        "a returned",
        "b begins",
        "b returned",
        "b delivered",
    ]


def test_a_waiting_delivery_cancelled_by_a_rebalance_stops_where_it_waits() -> None:
    """Cancelling the task (wait_first does when the flow is suspended first) cancels what the
    delivery waits for and throws CancelledError into it, as for any asyncio task: the record
    never reaches the agent's queue."""

    async def scenario() -> tuple[list[str], bool, bool]:
        steps: list[str] = []
        room = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            try:
                await room
                steps.append("delivered")
            except asyncio.CancelledError:
                steps.append("cancelled while waiting")
                raise

        waiting = start(deliver())
        assert waiting is not None
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return steps, room.cancelled(), waiting.cancelled()

    assert asyncio.run(scenario()) == (["cancelled while waiting"], True, True)


def test_an_error_in_a_delivery_reaches_the_fetch_loop_before_or_after_a_wait() -> None:
    async def fails(wait: bool) -> None:
        if wait:
            await asyncio.sleep(0)
        raise ValueError("cannot decode")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="cannot decode"):
            start(fails(wait=False))
        waiting = start(fails(wait=True))
        assert waiting is not None
        with pytest.raises(ValueError, match="cannot decode"):
            await waiting

    asyncio.run(scenario())


def test_the_configs_fetch_settings_reach_the_worker_consumer() -> None:
    """`pipeline.fetch_min_bytes` and `pipeline.fetch_max_wait` are what the worker's aiokafka
    consumer is built with (its fetcher takes them at start: tests/integration/test_fetch.py)."""
    from datetime import timedelta

    from prometheus_client import CollectorRegistry

    from pipeline.config import Runtime, load_config
    from pipeline.runtime.app import build_app
    from pipeline.runtime.metrics import Metrics

    config = load_config()
    pipeline = config.pipeline.model_copy(
        update={"fetch_min_bytes": 1, "fetch_max_wait": timedelta(milliseconds=250)}
    )
    app = build_app(
        config.model_copy(update={"pipeline": pipeline}),
        Runtime(bootstrap_servers="localhost:1"),
        Metrics.create(CollectorRegistry()),
    )

    async def built() -> tuple[int, int]:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await consumer.stop()  # never started: nothing to reach
        return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms

    try:
        assert asyncio.run(built()) == (1, 250)
    finally:
        app.consumer._thread.thread_loop.close()  # the consumer's thread never ran


def batching(
    c: Any, handled: list[list[int]], during: Callable[[list[int]], Awaitable[None]]
) -> None:
    """`c`'s app hands TOPIC's records to a batch handler (as build_app sets it up)."""

    async def on_batch(records: list[Record]) -> None:
        offsets = [r.offset for r in records]
        handled.append(offsets)
        await during(offsets)

    c.app.batch_topics = frozenset({TOPIC})
    c.app.on_batch = on_batch


def test_a_partitions_fetched_records_are_one_batch_acknowledged_together() -> None:
    """No message per record: the handler gets the fetch's records of a partition as one list;
    once it returns they are acknowledged, and a commit may move past them."""

    async def scenario() -> tuple[list[list[int]], int | None, list[int | str]]:
        c = consumer()
        handled: list[list[int]] = []

        async def nothing(offsets: list[int]) -> None:
            pass

        batching(c, handled, nothing)
        broker = Broker([list(range(100, 110)), list(range(110, 115))], lambda o: nothing([o]))
        delivered = await drain(c, broker, SafeConsumer._drain_messages)
        c._committed_offset[PART] = COMMITTED
        return handled, c._new_offset(PART), delivered

    handled, committable, delivered = asyncio.run(scenario())
    assert handled == [list(range(100, 110)), list(range(110, 115))]
    assert delivered == []  # nothing went through Faust's per-message delivery
    assert committable == 115


def test_a_batch_cut_by_a_seek_is_not_acknowledged_and_is_read_again() -> None:
    """A rebalance's seek while the handler works: its records may belong to another worker
    now, or be read again from the committed offset; acknowledging them could let a commit
    pass records fetched before the seek and never processed."""

    async def scenario() -> tuple[list[list[int]], int | None, list[int | str]]:
        c = consumer()
        handled: list[list[int]] = []

        async def during(offsets: list[int]) -> None:
            if len(handled) == 1:
                await c.perform_seek()

        batching(c, handled, during)

        async def nothing(offset: int) -> None:
            pass

        # the second fetch after the seek brings fewer records than the first
        broker = Broker([list(range(100, 110)), list(range(100, 105))], nothing)
        delivered = await drain(c, broker, SafeConsumer._drain_messages)
        c._committed_offset[PART] = COMMITTED
        return handled, c._new_offset(PART), delivered

    handled, committable, delivered = asyncio.run(scenario())
    assert handled == [list(range(100, 110)), list(range(100, 105))]
    assert delivered.count("seek") >= 1
    assert committable == 105  # 105-109 are read again before a commit passes them


def test_a_rebalance_waits_for_the_batch_in_flight() -> None:
    """Faust's `wait_empty` (every revocation) waits for messages its agents hold; a batch is
    not one of them, so it also waits for the batch handler to return and its acks."""

    async def scenario() -> list[str]:
        c = consumer()
        steps: list[str] = []
        c._unacked_messages.clear()

        async def commit(*args: Any, **kwargs: Any) -> bool:
            return True

        c.commit = commit
        c.commit_and_end_transactions = commit
        c._batch_idle.clear()  # a batch is with the handler

        async def batch_ends() -> None:
            await asyncio.sleep(0.05)
            steps.append("batch acknowledged")
            c._batch_idle.set()

        task = asyncio.ensure_future(batch_ends())
        await c.wait_empty()
        steps.append("revocation goes on")
        await task
        c._thread.thread_loop.close()
        return steps

    assert asyncio.run(scenario()) == ["batch acknowledged", "revocation goes on"]
