"""Offsets are committed only after every table write before them reached its changelog.

Faust writes a table change to the changelog through `ProducerBuffer.send_soon` and, before it
commits consumer offsets, calls `producer.flush()`. In faust-streaming 0.15.x that flush does not
wait for the buffer (found by the chaos harness, docs/reliability.md):

- `ProducerBuffer.flush` waits at most 0.1 s for the next message to go out and then returns,
  whatever is still queued (a slow broker, a full accumulator, a broker restart);
- the message being handed to the client is no longer counted (`size` is the queue length), so
  a flush that sees an empty queue returns while that message is still outside aiokafka;
- a change the broker refused is only logged (`Topic._on_published`), never raised.

Each lets an offset commit overtake a changelog write: after a `kill -9`, the event is not read
again and the state change is gone (lost exceptions, wrong counts). `DurableBuffer.flush`
waits for every change put in it to be acknowledged by the broker and raises if one failed,
so the commit does not happen and the worker stops; its restart reads those events again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage
from faust.types.transports import ConsumerT, ProducerT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from pipeline.config import PipelineSettings
from pipeline.runtime.offsets import SafeConsumer, WatchedFlowControl, wait_ms

log = logging.getLogger(__name__)

# A flush that waits longer than this for the broker raises: the commit is skipped and the
# worker stops (its supervisor restarts it) rather than committing past unwritten state.
FLUSH_TIMEOUT = 120.0


class ChangelogNotWritten(RuntimeError):
    """A table change did not reach its changelog: committing offsets now would lose it."""


class DurableBuffer(ProducerBuffer):
    """Faust's producer buffer whose `flush` returns only when all its messages are acked."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.unacked: set[asyncio.Future[Any]] = set()
        self.failed: list[tuple[str, BaseException]] = []
        self.flush_timeout = FLUSH_TIMEOUT

    def put(self, fut: FutureMessage) -> None:
        self.track(fut, fut.message.channel.get_topic_name())
        super().put(fut)

    def track(self, sent: asyncio.Future[Any], topic: str) -> None:
        """A record the next flush waits for; a refusal fails that flush. Records put in the
        buffer are tracked here, and so are those sent around it (`StateTable`)."""
        self.unacked.add(sent)
        sent.add_done_callback(partial(self._sent, topic))

    def _sent(self, topic: str, sent: asyncio.Future[Any]) -> None:
        self.unacked.discard(sent)
        if not sent.cancelled() and sent.exception() is not None:
            self.not_sent(topic, cast(BaseException, sent.exception()))

    def not_sent(self, topic: str, exc: BaseException) -> None:
        """A record refused, or one that never reached the client: the next flush fails."""
        self.failed.append((topic, exc))

    async def _send_pending(self, fut: FutureMessage) -> None:
        try:
            await super()._send_pending(fut)
        except Exception as exc:  # never reached the client: the flush must not pass it
            if not fut.done():
                fut.set_exception(exc)

    async def flush(self) -> None:
        # The table writes held back (`StateTable`) go out first: they are before this flush.
        await cast(App, self.app).send_held_writes()
        # Only what was put before this flush: the offsets being committed were acked after
        # their table writes were put. Waiting for later puts too would starve the commit
        # under steady input.
        waiting = set(self.unacked)
        deadline = time.monotonic() + self.flush_timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChangelogNotWritten(
                    f"{len(waiting)} table changes not acknowledged by the broker after "
                    f"{self.flush_timeout:.0f} s; not committing offsets (the events are read "
                    "again after a restart)"
                )
            _, waiting = await asyncio.wait(waiting, timeout=min(left, 1.0))
        if self.failed:
            topic, exc = self.failed[0]
            count = len(self.failed)
            self.failed = []
            raise ChangelogNotWritten(
                f"{count} table changes were refused by the broker (first: {topic}: {exc!r}); "
                "not committing offsets (the events are read again after a restart)"
            )


class StateTable:
    """A changelog-backed Faust table written without Faust's per-write machinery, its
    changelog records held briefly and sent together.

    `Table.__setitem__` sends each change as a `FutureMessage` through the topic's serializers,
    the producer buffer's queue and its sending task, with Faust's sensors at each step. For the
    customers table, written once per event, that costs more than the write itself (bench/floor.py
    measures it: `faust-table` against `fast-table`). Here the value goes into
    the table's store at once (reads see it) and its changelog record is held: at most
    `HOLD_SECONDS` or `HOLD_RECORDS` records later, and always before offsets are committed
    (`App.send_held_writes`, called by the commit's flush and, under exactly-once, before the
    transaction commits), the held records go to Faust's producer together (the transaction
    manager under exactly-once, as Faust picks it), each to the partition of the event that
    wrote it. Sent one by one, each record would be a produce request of its own (`linger` 0:
    the events' own outputs must not wait); sent together they share one request per partition.
    A customer written twice while held is sent once, with its last value: the changelog is
    compacted, only the last value counts.

    `DurableBuffer` tracks every record sent, so an offset commit waits for it; a send that
    raises fails that commit as a refusal does (the worker stops, and its restart reads the
    events again and rebuilds the table from the changelog). The store's persisted offset is
    kept as Faust keeps it (RocksDB).

    Every write to the table must come through here: records for one key sent by two paths
    could reach the changelog out of order. Reads and recovery are Faust's.
    """

    HOLD_SECONDS = 0.05
    HOLD_RECORDS = 1000

    def __init__(self, app: App, table: Any) -> None:
        self.app = app
        self.table = table
        self.changelog: str = table.changelog_topic.get_topic_name()
        # key -> (value, partition); a value of None deletes the key (a tombstone)
        self.held: dict[bytes, tuple[bytes | None, int]] = {}
        self._sending = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()  # started by the timer (the loop keeps
        # only weak references to tasks)
        app.held_writes.append(self.send_held)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.data.get(key)
        return value

    def items(self) -> Any:
        """Every key and value held locally (Faust's table: recovery, rebuilds)."""
        return self.table.items()

    async def delete(self, key: bytes, partition: int) -> None:
        """Remove `key`; its tombstone goes to the changelog as a write does."""
        await self.put(key, None, partition)

    async def put(self, key: bytes, value: bytes | None, partition: int) -> None:
        self._store(key, value, partition)
        self.held[key] = (value, partition)
        await self._hold()

    async def put_all(self, values: dict[bytes, bytes], partition: int) -> int:
        """`put` for every key of `values`, all of one partition; returns how many of the keys
        the table did not hold before."""
        new = 0
        held, get = self.held, self.table.data.get
        for key, value in values.items():
            if get(key) is None:
                new += 1
            self._store(key, value, partition)
            held[key] = (value, partition)
        if values:
            await self._hold()
        return new

    async def _hold(self) -> None:
        """After writes were held: sent now when there are `HOLD_RECORDS`, else in
        `HOLD_SECONDS` at the latest."""
        if len(self.held) >= self.HOLD_RECORDS:
            await self.send_held()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.HOLD_SECONDS, self._send_due)

    def _store(self, key: bytes, value: bytes | None, partition: int) -> None:
        store = self.table.data
        by_partition = getattr(store, "_db_for_partition", None)
        if by_partition is None:  # the memory store: one dict for every partition
            if value is not None:
                store[key] = value
            else:
                store.pop(key, None)
            return
        # RocksDB (faust.stores.rocksdb.Store, 0.15.3) keeps a database per partition and takes
        # a write's partition from the event being processed; a batch has none, so the write
        # goes to its partition's database here, as `Store._set` would put it.
        db = by_partition(partition)
        if value is not None:
            db.put(key, value)
            store._key_index[key] = partition
        else:
            db.delete(key)
            store._key_index.pop(key, None)

    def _send_due(self) -> None:
        self._timer = None
        if self.held:  # a send still running holds the lock: this one goes after it
            task = asyncio.ensure_future(self.send_held())
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def send_held(self) -> None:
        """Hand every held record to the producer. Never raises: a send that fails is
        recorded on the buffer, whose next flush (before a commit) raises."""
        async with self._sending:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            held, self.held = self.held, {}
            if not held:
                return
            buffer = cast(DurableBuffer, self.app.producer.buffer)  # our App's
            try:
                producer = await self.app.maybe_start_producer()
            except Exception as exc:
                for _ in held:
                    buffer.not_sent(self.changelog, exc)
                return
            client = None if self.app.in_transaction else producer._ensure_producer()
            if client is None:  # one by one: the transaction manager picks each's producer
                for key, (value, partition) in held.items():
                    await self._send_one(producer, buffer, key, value, partition)
                return
            by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for key, (value, partition) in held.items():
                by_partition.setdefault(partition, []).append((key, value))
            for partition, records in by_partition.items():
                await self._send_batches(client, buffer, partition, records)

    async def _send_batches(
        self,
        client: Any,
        buffer: DurableBuffer,
        partition: int,
        records: list[tuple[bytes, bytes | None]],
    ) -> None:
        """One partition's records as aiokafka batches (`create_batch`, `send_batch`): a future
        per batch to track and acknowledge, not one per record with its callbacks."""
        batch, count = client.create_batch(), 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                # full: sent, and the record starts the next one (an empty batch takes its
                # first record whatever its size)
                await self._send_batch(client, buffer, batch, partition, count)
                batch, count = client.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        if count:
            await self._send_batch(client, buffer, batch, partition, count)

    async def _send_batch(
        self, client: Any, buffer: DurableBuffer, batch: Any, partition: int, count: int
    ) -> None:
        try:
            sent = cast(
                "asyncio.Future[Any]",
                await client.send_batch(batch, self.changelog, partition=partition),
            )
        except Exception as exc:
            for _ in range(count):
                buffer.not_sent(self.changelog, exc)
            return
        buffer.track(sent, self.changelog)
        sent.add_done_callback(partial(self._batch_persisted, count))

    async def _send_one(
        self, producer: Any, buffer: DurableBuffer, key: bytes, value: bytes | None, partition: int
    ) -> None:
        try:
            sent = cast(
                "asyncio.Future[Any]",
                await producer.send(self.changelog, key, value, partition, None, None),
            )
        except Exception as exc:
            buffer.not_sent(self.changelog, exc)
            return
        buffer.track(sent, self.changelog)
        sent.add_done_callback(self._persisted)

    def _persisted(self, sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and sent.exception() is None:
            self.table._on_changelog_sent(sent)  # the store's persisted offset (RocksDB)

    def _batch_persisted(self, count: int, sent: asyncio.Future[Any]) -> None:
        """A batch acknowledged: the store's persisted offset is its last record's (RocksDB;
        a batch's metadata gives its first offset)."""
        if not sent.cancelled() and sent.exception() is None:
            first = sent.result()
            self.table.data.set_persisted_offset(first.topic_partition, first.offset + count - 1)


class App(faust.App):
    """faust.App whose producer uses DurableBuffer for table changelogs, and whose consumer
    never commits past an event no agent processed (pipeline/runtime/offsets.py)."""

    # Called with (tp, first, last) for offsets the broker did not send
    # (pipeline/runtime/offsets.py).
    on_offset_gap: Callable[[Any, int, int], None] | None = None
    # Topics whose fetched records go to `on_batch`, a partition's batch at a time, not to
    # agents (pipeline/runtime/offsets.py); set by build_app.
    batch_topics: frozenset[str] = frozenset()
    on_batch: Callable[[list[Any]], Awaitable[None]]
    # The worker consumer's fetches (pipeline/runtime/offsets.py): the config's, set by build_app
    fetch_min_bytes: int = PipelineSettings().fetch_min_bytes
    fetch_max_wait_ms: int = wait_ms(PipelineSettings().fetch_max_wait)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each sends the table writes it holds (`StateTable`); all run before offsets commit.
        self.held_writes: list[Callable[[], Awaitable[None]]] = []

    async def send_held_writes(self) -> None:
        for send in self.held_writes:
            await send()

    def _new_consumer(self) -> ConsumerT:
        return SafeConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.loop,
        )

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        flow = WatchedFlowControl(loop=self.loop)
        flow.on_cleared = self._queues_cleared
        return flow

    def _queues_cleared(self) -> None:
        if self._consumer is not None:
            cast(SafeConsumer, self._consumer).queues_cleared()

    def _new_producer(self) -> ProducerT:
        producer: Any = super()._new_producer()
        old: Any = producer.buffer
        buffer = DurableBuffer(loop=producer.loop, beacon=producer.beacon)
        buffer.app = old.app
        if getattr(old, "threaded_producer", None) is not None:
            buffer.threaded_producer = old.threaded_producer
        producer.buffer = buffer
        return cast(ProducerT, producer)


@contextmanager
def local_state_guard(app: faust.App, store: str) -> Iterator[None]:
    """Around a worker's run: local RocksDB tables survive only a clean stop.

    A `kill -9` can leave RocksDB holding writes whose changelog records never reached the
    broker (their offsets were not committed either, so the events are read again and
    deduplicated against state the changelog lacks). Kafka Streams wipes local state after
    an unclean stop under exactly-once for the same reason. A marker file, removed only on
    a clean stop, tells the next start to delete the tables and rebuild them from the
    changelogs.
    """
    if not store.startswith("rocksdb:"):
        yield
        return
    tables = Path(app.conf.tabledir)
    marker = tables.parent / "casewatch-running"
    if marker.exists():
        log.warning(
            "the previous worker with state in %s did not stop cleanly (pid %s): removing "
            "its local tables; they are rebuilt from the changelogs",
            tables,
            marker.read_text().strip() or "?",
        )
        shutil.rmtree(tables, ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()}\n")
    try:
        yield
    except SystemExit as exit_:
        if not exit_.code:  # a clean stop (SIGTERM, Ctrl-C): local state matches the changelog
            marker.unlink(missing_ok=True)
        raise
    else:
        marker.unlink(missing_ok=True)
