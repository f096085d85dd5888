"""The producer buffer behind table changelogs: a flush (before every offset commit) must wait
until each change is acknowledged, and fail if one was refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import faust
import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage, PendingMessage

from pipeline.runtime.durable import (
    App,
    ChangelogNotWritten,
    DurableBuffer,
    StateTable,
    local_state_guard,
)


class SlowTopic:
    """A changelog whose broker takes `accept` s to take a message and `ack` s to acknowledge it."""

    def __init__(self, accept: float, ack: float, refuse: bool = False) -> None:
        self.accept, self.ack, self.refuse = accept, ack, refuse
        self.acked: list[Any] = []

    def get_topic_name(self) -> str:
        return "casewatch-customers-changelog"

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> None:
        await asyncio.sleep(self.accept)  # e.g. aiokafka's accumulator full, a broker restart
        asyncio.get_running_loop().call_later(self.ack, self._deliver, fut)

    def _deliver(self, fut: FutureMessage) -> None:
        if self.refuse:
            fut.set_exception(RuntimeError("NotEnoughReplicasError"))
        else:
            self.acked.append(fut.message.key)
            fut.set_result(None)  # type: ignore[arg-type]


def message(topic: SlowTopic, key: bytes) -> FutureMessage:
    pending = PendingMessage(topic, key, b"v", 0, None, None, "raw", "raw", None)  # type: ignore[arg-type]
    return FutureMessage(pending)


async def run(buffer_type: type[ProducerBuffer], topic: SlowTopic, n: int) -> list[Any]:
    app = App("durable-test", autodiscover=False, web_enabled=False)
    buffer = buffer_type()
    buffer.app = app
    await buffer.start()
    try:
        for i in range(n):
            buffer.put(message(topic, b"k%d" % i))
        await buffer.flush()
        return list(topic.acked)  # what the broker holds when the offsets would be committed
    finally:
        if buffer_type is ProducerBuffer:  # it stops with messages still queued
            with pytest.raises(RuntimeError, match="Cannot flush: Producer not Running"):
                await buffer.stop()
        else:
            await buffer.stop()


def test_flush_returns_only_when_every_change_is_acknowledged() -> None:
    topic = SlowTopic(accept=0.15, ack=0.05)
    acked = asyncio.run(run(DurableBuffer, topic, 5))
    assert acked == [b"k0", b"k1", b"k2", b"k3", b"k4"]


@pytest.mark.upstream
def test_fausts_own_flush_lets_a_commit_overtake_unwritten_changes() -> None:
    """Why DurableBuffer exists (the canary): if this starts failing, Faust fixed its flush."""
    topic = SlowTopic(accept=0.15, ack=0.05)
    acked = asyncio.run(run(ProducerBuffer, topic, 5))
    assert len(acked) < 5


def test_a_refused_change_fails_the_flush_so_no_offset_is_committed() -> None:
    topic = SlowTopic(accept=0.0, ack=0.01, refuse=True)
    with pytest.raises(
        ChangelogNotWritten, match=r"3 table changes were refused.*customers-changelog"
    ):
        asyncio.run(run(DurableBuffer, topic, 3))


def test_a_broker_that_never_acknowledges_fails_the_flush_after_the_timeout() -> None:
    async def scenario() -> None:
        app = App("durable-test", autodiscover=False, web_enabled=False)
        buffer = DurableBuffer()
        buffer.app = app
        buffer.flush_timeout = 0.3
        await buffer.start()
        try:
            buffer.put(message(SlowTopic(accept=0.0, ack=3600), b"k"))
            with pytest.raises(ChangelogNotWritten, match="1 table changes not acknowledged"):
                await buffer.flush()
        finally:
            buffer.flush_timeout = 0.01
            with pytest.raises(ChangelogNotWritten):  # stopping flushes too, and says so
                await buffer.stop()

    asyncio.run(scenario())


def _app(tmp_path: Any) -> faust.App:
    return faust.App("guard-test", autodiscover=False, datadir=str(tmp_path))


def _worker_run(app: faust.App, exit_code: int) -> None:
    """A worker's run that writes a table and stops the way Faust's worker stops."""
    with local_state_guard(app, "rocksdb://"):
        (Path(app.conf.tabledir) / "customers-0.db").mkdir(parents=True, exist_ok=True)
        raise SystemExit(exit_code)


def test_rocksdb_tables_left_by_a_killed_worker_are_removed_before_the_next_start(
    tmp_path: Any,
) -> None:
    app = _app(tmp_path)
    tables = Path(app.conf.tabledir)
    (tables / "customers-0.db").mkdir(parents=True)
    (tables.parent / "casewatch-running").write_text("4242\n")  # left by a kill -9
    with local_state_guard(app, "rocksdb://"):
        assert not (tables / "customers-0.db").exists()  # rebuilt from the changelog instead
        assert (tables.parent / "casewatch-running").read_text() != "4242\n"


def test_rocksdb_tables_survive_a_clean_stop_and_not_a_crash(tmp_path: Any) -> None:
    app = _app(tmp_path)
    tables = Path(app.conf.tabledir)
    with pytest.raises(SystemExit):
        _worker_run(app, 0)  # a SIGTERM stop
    with local_state_guard(app, "rocksdb://"):
        assert (tables / "customers-0.db").exists()
    with pytest.raises(SystemExit):
        _worker_run(app, 1)  # a crash: the tables may hold writes the changelog lacks
    with local_state_guard(app, "rocksdb://"):
        assert not (tables / "customers-0.db").exists()


def test_the_memory_store_has_no_marker(tmp_path: Any) -> None:
    app = _app(tmp_path)
    with local_state_guard(app, "memory://"):
        assert not list(Path(tmp_path).rglob("casewatch-running"))


def test_a_flush_waits_for_earlier_changes_only_so_steady_input_cannot_starve_a_commit() -> None:
    async def scenario() -> bool:
        app = App("durable-test", autodiscover=False, web_enabled=False)
        buffer = DurableBuffer()
        buffer.app = app
        await buffer.start()
        topic = SlowTopic(accept=0.0, ack=0.2)
        buffer.put(message(topic, b"before"))

        async def steady_input() -> None:
            for i in range(40):  # a new change every 50 ms, each acked 200 ms later
                buffer.put(message(topic, b"after%d" % i))
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(steady_input())
        await buffer.flush()
        assert b"before" in topic.acked
        input_still_running = not feeder.done()
        await feeder
        await buffer.stop()
        return input_still_running

    assert asyncio.run(scenario())  # the flush returned while the input went on


def test_a_change_sent_around_the_buffer_holds_the_flush_until_it_is_acknowledged() -> None:
    """`StateTable` sends the customers' changelog records to the producer directly: the
    commit's flush must wait for them, and fail on a refusal, as for the buffer's own."""

    async def scenario(refuse: bool) -> list[str]:
        app = App("durable-test", autodiscover=False, web_enabled=False)
        buffer = DurableBuffer()
        buffer.app = app
        await buffer.start()
        events: list[str] = []
        sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        buffer.track(sent, "casewatch-customers-changelog")

        def ack() -> None:
            events.append("acked")
            if refuse:
                sent.set_exception(RuntimeError("NotEnoughReplicasError"))
            else:
                sent.set_result(None)

        asyncio.get_running_loop().call_later(0.2, ack)
        try:
            await buffer.flush()
            events.append("flushed")
        except ChangelogNotWritten as exc:
            events.append(f"refused: {exc}")
        await buffer.stop()
        return events

    assert asyncio.run(scenario(refuse=False)) == ["acked", "flushed"]
    acked, refused = asyncio.run(scenario(refuse=True))
    assert acked == "acked"
    assert "1 table changes were refused" in refused
    assert "casewatch-customers-changelog" in refused


class Changelog:
    """The customers table's changelog as `StateTable` sees it: a producer whose records the
    broker acknowledges after `ack` s (or refuses, or that raises on send). Records go out in
    batches of at most `per_batch` (aiokafka's `create_batch`/`send_batch`), or one by one
    (`send`) under exactly-once."""

    def __init__(
        self,
        ack: float = 0.05,
        refuse: bool = False,
        raises: bool = False,
        accept: float = 0.0,
        per_batch: int = 2,
        largest: int = 1 << 20,
    ) -> None:
        self.ack, self.refuse, self.raises, self.accept = ack, refuse, raises, accept
        self.per_batch, self.largest = per_batch, largest
        self.sent: list[tuple[bytes, bytes, int]] = []
        self.acked: list[bytes] = []
        self.requests: list[int] = []  # records per send: 1 for `send`, a batch's size

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, *_: Any) -> Any:
        return await self._send([(key, value)], partition)

    def _ensure_producer(self) -> Changelog:
        return self  # the aiokafka producer under Faust's: the same fake

    def create_batch(self) -> Batch:
        return Batch(self.per_batch, self.largest)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        return await self._send(batch.records, partition)

    async def _send(self, records: list[tuple[bytes, bytes]], partition: int) -> Any:
        if self.raises:
            raise RuntimeError("KafkaTimeoutError: the accumulator stayed full")
        if self.accept:
            await asyncio.sleep(self.accept)  # e.g. aiokafka's accumulator full
        first = len([p for _, _, p in self.sent if p == partition])  # its offset
        self.sent += [(key, value, partition) for key, value in records]
        self.requests.append(len(records))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(
            self.ack, self._deliver, fut, [k for k, _ in records], partition, first
        )
        return fut

    def _deliver(
        self, fut: asyncio.Future[Any], keys: list[bytes], partition: int, first: int
    ) -> None:
        if self.refuse:
            fut.set_exception(RuntimeError("NotEnoughReplicasError"))
        else:
            self.acked += keys
            fut.set_result(Sent(("casewatch-customers-changelog", partition), first))


class Batch:
    def __init__(self, size: int, largest: int) -> None:
        self.size, self.largest, self.records, self.closed = size, largest, [], False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if self.records and (len(self.records) >= self.size or len(value) > self.largest):
            self.closed = True
        if self.closed:  # as aiokafka's: a full batch takes nothing more, an empty one anything
            return None
        self.records.append((key, value))
        return object()


class Sent(NamedTuple):
    """What the broker's acknowledgement gives (aiokafka's RecordMetadata, in part)."""

    topic_partition: tuple[str, int]
    offset: int


class Data(dict[bytes, bytes]):
    """A store's data: the offset it has persisted per changelog partition (RocksDB's)."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets: dict[tuple[str, int], int] = {}

    def set_persisted_offset(self, tp: tuple[str, int], offset: int) -> None:
        self.offsets[tp] = offset


class Store:
    def __init__(self) -> None:
        self.data = Data()
        self.persisted: list[Any] = []  # acknowledgements of records sent one by one
        self.changelog_topic = self

    def get_topic_name(self) -> str:
        return "casewatch-customers-changelog"

    def _on_changelog_sent(self, fut: Any) -> None:
        self.persisted.append(fut)


async def state_table(
    changelog: Changelog, transactions: bool = False
) -> tuple[StateTable, Store, DurableBuffer]:
    app = App("durable-test", autodiscover=False, web_enabled=False)
    app.__dict__["in_transaction"] = transactions  # exactly-once: records one by one
    buffer = DurableBuffer()
    buffer.app = app
    await buffer.start()
    producer: Any = type("Producer", (), {"buffer": buffer})()
    app._producer = producer

    async def started() -> Any:
        return changelog

    app.maybe_start_producer = started
    store = Store()
    return StateTable(app, store), store, buffer


def test_held_writes_go_out_in_batches_per_partition_and_the_store_persists_their_last_offsets() -> (
    None
):
    """A batch per partition (split when full), in the order written; once acknowledged, the
    store's persisted offset per partition is its last record's."""

    async def scenario() -> tuple[list[tuple[bytes, bytes, int]], list[int], dict[Any, int]]:
        changelog = Changelog(per_batch=2)
        table, store, buffer = await state_table(changelog)
        for n in range(5):
            await table.put(b"c-%d" % n, b"s%d" % n, 0)
        await table.put(b"d-1", b"t", 3)
        await buffer.flush()
        await buffer.stop()
        return changelog.sent, changelog.requests, store.data.offsets

    sent, requests, offsets = asyncio.run(scenario())
    assert [(k, p) for k, _, p in sent] == [
        (b"c-0", 0), (b"c-1", 0), (b"c-2", 0), (b"c-3", 0), (b"c-4", 0), (b"d-1", 3)
    ]  # fmt: skip
    assert requests == [2, 2, 1, 1]  # not one request (and future) per record
    assert offsets == {
        ("casewatch-customers-changelog", 0): 4,
        ("casewatch-customers-changelog", 3): 0,
    }


def test_a_record_larger_than_a_batch_starts_one_of_its_own() -> None:
    """aiokafka's batch takes a record bigger than its size only as its first: the batch
    before it goes out, and the record leads the next one, in the order written."""

    async def scenario() -> tuple[list[bytes], list[int], list[bytes]]:
        changelog = Changelog(per_batch=2, largest=4)
        table, _, buffer = await state_table(changelog)
        for key, value in [(b"a", b"s"), (b"b", b"huge state"), (b"c", b"s"), (b"d", b"s")]:
            await table.put(key, value, 0)
        await buffer.flush()
        await buffer.stop()
        return [k for k, _, _ in changelog.sent], changelog.requests, sorted(changelog.acked)

    sent, requests, acked = asyncio.run(scenario())
    assert sent == [b"a", b"b", b"c", b"d"]  # in the order written
    assert requests == [1, 2, 1]  # the batch before it, then it leads the next
    assert acked == [b"a", b"b", b"c", b"d"]


def test_under_exactly_once_held_writes_go_out_one_by_one() -> None:
    async def scenario() -> tuple[list[int], int]:
        changelog = Changelog()
        table, store, buffer = await state_table(changelog, transactions=True)
        await table.put(b"c-1", b"a", 0)
        await table.put(b"c-2", b"b", 0)
        await buffer.flush()
        await buffer.stop()
        return changelog.requests, len(store.persisted)

    assert asyncio.run(scenario()) == ([1, 1], 2)


def test_a_held_state_write_is_read_at_once_and_reaches_the_changelog_before_the_commit() -> None:
    async def scenario() -> tuple[bytes | None, list[Any], list[bytes], int]:
        changelog = Changelog()
        table, store, buffer = await state_table(changelog)
        await table.put(b"c-1", b"first", 2)
        await table.put(b"c-2", b"other", 4)
        await table.put(b"c-1", b"second", 2)  # the same customer again while held
        read = table.get(b"c-1")
        sent_before_flush = list(changelog.sent)
        await buffer.flush()  # what the commit does before it commits offsets
        await buffer.stop()
        return read, sent_before_flush, changelog.acked, len(store.data.offsets)

    read, sent_before_flush, acked, persisted = asyncio.run(scenario())
    assert read == b"second"  # the next event of the customer sees its state
    assert sent_before_flush == []  # held, not one request per write
    assert sorted(acked) == [b"c-1", b"c-2"]  # acknowledged before the flush returned
    assert persisted == 2  # partitions 2 and 4: their persisted offsets


def test_a_held_write_goes_out_with_its_last_value_when_the_hold_ends_without_a_commit() -> None:
    async def scenario() -> list[tuple[bytes, bytes, int]]:
        changelog = Changelog()
        table, _, buffer = await state_table(changelog)
        await table.put(b"c-1", b"first", 2)
        await table.put(b"c-1", b"second", 2)
        await asyncio.sleep(StateTable.HOLD_SECONDS * 3)
        await buffer.stop()
        return changelog.sent

    assert asyncio.run(scenario()) == [(b"c-1", b"second", 2)]


@pytest.mark.parametrize("failure", ["refused", "send raised"])
def test_a_held_write_that_fails_fails_the_commit(failure: str) -> None:
    async def scenario() -> str:
        changelog = Changelog(refuse=failure == "refused", raises=failure == "send raised")
        table, _, buffer = await state_table(changelog)
        await table.put(b"c-1", b"state", 0)
        try:
            await buffer.flush()
            return "committed"
        except ChangelogNotWritten as exc:
            return str(exc)
        finally:
            await buffer.stop()

    outcome = asyncio.run(scenario())
    assert "1 table changes were refused" in outcome
    assert "casewatch-customers-changelog" in outcome


def test_a_write_held_while_a_slow_send_runs_goes_out_when_its_own_hold_ends() -> None:
    async def scenario() -> list[bytes]:
        changelog = Changelog(accept=StateTable.HOLD_SECONDS * 2)  # a send outlasts a hold
        table, _, buffer = await state_table(changelog)
        await table.put(b"c-1", b"state", 0)
        await asyncio.sleep(StateTable.HOLD_SECONDS * 1.5)  # its send is running now
        await table.put(b"c-2", b"state", 1)
        await asyncio.sleep(StateTable.HOLD_SECONDS * 6)  # no commit, no further input
        sent = [key for key, _, _ in changelog.sent]
        await buffer.stop()  # (its flush would send what is still held)
        return sent

    assert asyncio.run(scenario()) == [b"c-1", b"c-2"]


def test_a_state_written_outside_any_event_lands_in_its_partitions_rocksdb(tmp_path: Path) -> None:
    """The worker writes a batch's states with no Faust event being processed; Faust's RocksDB
    store takes a write's partition from that event (and asserts there is one)."""

    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None]:
        app = App(
            "durable-rocksdb",
            store="rocksdb://",
            datadir=str(tmp_path),
            autodiscover=False,
            web_enabled=False,
        )
        table = app.Table(
            "customers",
            partitions=3,
            key_type=bytes,
            value_type=bytes,
            schema=faust.Schema(
                key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
        )
        states = StateTable(app, table)
        await states.put(b"c1", b"state", 2)
        if states._timer is not None:  # no broker here: nothing is sent
            states._timer.cancel()
        store: Any = table.data
        return (
            store._db_for_partition(2).get(b"c1"),
            store._db_for_partition(0).get(b"c1"),
            states.get(b"c1"),
        )

    assert asyncio.run(scenario()) == (b"state", None, b"state")
