"""A committed offset never passes an event nobody processed; the source topics' records go to
the worker in batches, a partition's fetched records at a time.

`SafeConsumer` replaces Faust's fetch loop (`_drain_messages`). Records of the topics in
`App.batch_topics` (the sources and the re-key topic) are handed, one partition's fetch at a
time, to `App.on_batch` and acknowledged together in Faust's own bookkeeping once it returns
(outputs and states written); a rebalance's `wait_empty` waits for the batch in flight, and a
batch cut by a seek, a queue clear or a new generation is not acknowledged but read again.
Records of the other topics go through Faust's conductor to their agents, one at a time, as
before. docs/architecture.md says why.

Faust marks offsets as done without processing them when it believes the broker skipped them:
`Consumer._drain_messages` compares each fetched offset with the last one it read
(`_read_offset`), and a jump of more than one is registered as a *gap* (compacted records,
transaction markers) that later commits pass over. In faust-streaming 0.15.x two things make
such jumps that are not gaps (found by the chaos harness, docs/reliability.md):

- `perform_seek` (after every rebalance) resets `_read_offset` to the committed offset while
  the fetch loop is still handing out records of a batch fetched before the seek; the next
  record of that batch is then "ahead" of the committed offset and every offset in between is
  registered as a gap (faust-streaming #216, robinhood/faust #559). The records of that batch
  reach the agents' queues, which `FlowControlEvent.resume()` clears straight after the seek;
  the broker's re-sent copies are dropped as already read. Bands of hundreds of events were
  committed without being processed.
- the fetch loop records a message as read even when a rebalance cancelled its delivery, and
  messages delivered to an agent's queue are dropped when the queue is cleared.
- a message of the previous generation that reaches an agent after a rebalance is skipped and
  acknowledged all the same; that ack can let a later commit pass offsets nobody processed.

`SafeConsumer` replaces the fetch loop: a record counts as read only if no seek and no queue
clear happened while it was delivered; after either, the rest of the batch is dropped and the
consumer seeks back to the committed offsets before fetching on, so every record not yet
processed is fetched again (at-least-once: the copies are deduplicated by event id). A seek
forgets the acks from before it. What is still registered as a gap is counted
(`casewatch_offset_gaps_total`) and logged.

A partition with nothing committed yet (early in a group's life: every partition, and the
dispatch partition until its first commit) had two more holes: aiokafka's seek_to_committed
leaves it at its fetch position, and Faust's commit guard is skipped for it. Every seek now
takes it back to its first offset, and its commits must start from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode import Service, ServiceT
from mode.utils.futures import notify
from mode.utils.queues import FlowControlEvent

log = logging.getLogger(__name__)

# The worker's fetches (aiokafka's fetch_min_bytes and fetch_max_wait_ms), set by the config's
# `pipeline.fetch_min_bytes` and `pipeline.fetch_max_wait` (the defaults: 64 KiB, 50 ms): the
# broker answers a fetch once it has that many bytes for it, or after that long.
#
# The wait: Faust sets 1,500 ms. aiokafka has one fetch in flight per broker, for the
# partitions with no fetched records left, so a long wait on idle partitions (ticks, re-key,
# resolutions) holds up the busy ones' next fetch, and a draining worker stands still.
# The size: aiokafka asks for 1 byte. Live, each fetch then brings one or two records and the
# consumer thread spends much of the worker's time on socket writes. The trade between latency
# at low input and CPU per event is docs/operations.md's (each of the two hops, source and
# dispatch, waits up to `fetch_max_wait` when little arrives).


def wait_ms(wait: timedelta) -> int:
    """A fetch wait in whole milliseconds, as aiokafka takes it."""
    return max(1, round(wait.total_seconds() * 1000))


class FetchThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, its consumer's fetches answered at the app's `fetch_min_bytes`
    or after its `fetch_max_wait_ms` (our App, pipeline/runtime/durable.py)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app: Any = self.app  # our App: SafeConsumer is built by it alone
        # Read once by `AIOKafkaConsumer.start` (aiokafka 0.14), which builds its fetcher.
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
        consumer._fetch_min_bytes = app.fetch_min_bytes
        return consumer


class SafeConsumer(Consumer):
    """Faust's aiokafka consumer with a fetch loop that cannot skip records (module doc)."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return FetchThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bumped by every seek to the committed offsets and every clear of the agents'
        # queues: a record delivered across a bump may not have reached an agent.
        self.epoch = 0
        # A clear dropped delivered records: seek back before fetching on.
        self.reread = False
        # Where reading started after the last seek, for partitions with nothing committed:
        # what a commit must start from (Faust has no such bound for them).
        self._base: dict[TP, int] = {}
        # The next offset to read of each partition read since the last seek (`unread`).
        self._next: dict[TP, int] = {}
        # Set while no batch is with `App.on_batch` (`wait_empty`).
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()

    def queues_cleared(self) -> None:
        self.epoch += 1
        self.reread = True

    async def perform_seek(self) -> None:
        self.epoch += 1
        # Everything from the committed offsets on is read and acknowledged again. An ack left
        # from before (e.g. of a message of the previous generation that an agent skipped
        # without processing it) could otherwise let a commit pass an unprocessed offset.
        self._acked.clear()
        self._acked_index.clear()
        self._gap.clear()
        self._base.clear()
        self._next.clear()
        try:
            await super().perform_seek()
            await self._rewind_uncommitted()
        finally:
            self.epoch += 1  # whatever was delivered during the seek is stale too

    async def _rewind_uncommitted(self) -> None:
        # aiokafka's seek_to_committed leaves a partition with nothing (or 0) committed where
        # it is: a partition kept through a rebalance would go on from its fetch position,
        # past records that were fetched but never processed (dropped from a cleared queue).
        # Seek it to its first offset (a position, not a reset: Faust's livelock check
        # asserts every assigned partition has one), and bound its commits by it.
        fresh = [
            tp
            for tp in self.assignment()
            if not self._read_offset.get(tp)
            and not self._is_changelog_tp(tp)
            and self.app.topics.acks_enabled_for(tp.topic)
        ]
        if fresh:
            earliest = {
                tp: offset or 0 for tp, offset in (await self.earliest_offsets(*fresh)).items()
            }
            await self.seek_wait(earliest)
            self._base.update(earliest)

    async def _read_again(self) -> None:
        """Back to the committed offsets (to the start where none is committed yet), so
        every record not processed is fetched again."""
        log.info("records fetched may not have reached the agents: reading from committed offsets")
        await self.perform_seek()

    def _new_offset(self, tp: TP) -> int | None:
        # Faust's guard (the first acknowledged offset must be at most one past the committed
        # offset) is skipped when nothing is committed (None, or 0): any run of acknowledged
        # offsets is then committed, whatever came before it was never processed. Hold such a
        # partition to the offset reading started from after the seek, with the same tolerance.
        acked = self._acked[tp]
        if acked and not self._committed_offset[tp]:
            base = self._base.get(tp)
            if base is None:
                return None  # where reading started is not known: nothing is safe to commit
            first = min(acked)
            gaps = self._gap[tp]
            if gaps:
                first = min(first, min(interval.begin for interval in gaps))
            if first - base > 1:
                return None
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Table writes held back (pipeline/runtime/durable.py, `StateTable`) go out before any
        # commit. Without transactions the commit's flush sends them too; under exactly-once nothing
        # flushes before the transaction commits, and they must be in it.
        await cast(Any, self.app).send_held_writes()  # our App (pipeline/runtime/durable.py)
        committed: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        return committed

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        log.warning(
            "offsets %d-%d of %s[%d] were not sent by the broker (compacted, or transaction "
            "markers): committed without processing",
            offset_from,
            offset_to - 1,
            tp.topic,
            tp.partition,
        )
        hook: Callable[[TP, int, int], None] | None = getattr(self.app, "on_offset_gap", None)
        if hook is not None:
            hook(tp, offset_from, offset_to - 1)
        await super()._add_gap(tp, offset_from, offset_to)

    def next_offset(self, tp: TP) -> int | None:
        """The next offset of `tp` to be read and processed, None when not known yet."""
        known = self._next.get(tp)
        if known is None:
            known = self._committed_offset.get(tp) or self._base.get(tp)
        return known

    def unread(self, tp: TP) -> bool:
        """Whether `tp` has records the worker has not read: its high water (as of the last
        fetch) is past the next offset to read, or either is not known yet."""
        try:
            highwater = self.highwater(tp)
        except (AssertionError, KeyError):  # aiokafka: not assigned (any more)
            return False
        nxt = self.next_offset(tp)
        return highwater is None or nxt is None or highwater > nxt

    async def wait_empty(self) -> None:
        # Faust waits for the messages its agents have not acknowledged; a batch handed to
        # `App.on_batch` is not one of them: it ends, and is acknowledged, first.
        await self._batch_idle.wait()
        await super().wait_empty()

    def _ack_batch(self, tp: TP, records: list[Any]) -> None:
        """`Consumer.ack` (0.15.3) for every record of a batch at once."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            acked = self._acked[tp]
            n = 0
            for record in records:
                offset = record.offset
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    n += 1
            self._n_acked += n
            notify(self._waiting_for_ack)

    async def _deliver(self, tp: TP, records: list[Any], epoch: int) -> bool:
        """Hand a partition's records to the app's batch handler, or one by one to Faust's
        conductor (the low-volume topics' agents); acknowledge what was processed. False when
        a rebalance, seek or queue clear cut the delivery: the rest is read again."""
        app = cast(Any, self.app)
        if tp.topic in app.batch_topics:
            generation = app.consumer_generation_id
            self._batch_idle.clear()
            try:
                await app.on_batch(records)
            finally:
                self._batch_idle.set()
            if (
                self.epoch != epoch
                or self.suspend_flow.is_set()
                or app.consumer_generation_id != generation
            ):
                # Processed, but the partition may have moved meanwhile: not acknowledged,
                # read again from the committed offset (the copies are recognised by id).
                return False
            self._ack_batch(tp, records)
            last = records[-1].offset
            self._read_offset[tp] = last
            self._next[tp] = last + 1
            return True
        to_message, callback = self._to_message, self.callback
        for record in records:
            # Faust races every delivery against the flow's suspension (a rebalance) with
            # four tasks; a delivery that can run to its end at once (the agent's queue has
            # room) needs no race, so only one that has to wait becomes a task and races
            # (`start`)
            if self.suspend_flow.is_set():
                return False
            message = to_message(tp, record)
            # the conductor's on_message, an async def
            delivery = start(cast(Coroutine[Any, Any, None], callback(message)))
            if delivery is not None:
                waited = await self.wait_first(delivery, self.suspend_flow.wait())
            # a delivery cut by a rebalance, or made across a seek or a clear, may not have
            # reached its agent: not read
            if self.epoch != epoch or (delivery is not None and delivery not in waited.done):
                return False
            self._read_offset[tp] = record.offset
            self._next[tp] = record.offset + 1
        return True

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # faust.transport.consumer.Consumer._drain_messages (0.15.3), with the loop of its
        # `getmany` inlined: a fetch's records are taken partition by partition (`_deliver`),
        # not one message at a time, and a record counts as read only when it was processed.
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                # records dropped by a queue clear are fetched again
                if self.reread and self.flow_active:
                    self.reread = False  # (a clear during the seek sets it again)
                    try:
                        await self._read_again()
                    except Exception as exc:  # e.g. a rebalance took the partitions meanwhile
                        log.warning("seek to committed offsets failed (%r): trying again", exc)
                        self.reread = True
                        await self.sleep(1.0)
                        continue  # nothing is fetched before it succeeds
                self.diag.set_flag(CONSUMER_FETCHING)
                epoch = self.epoch
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # as `getmany`: fetched while stopped, read again
                    self.reread = True
                    continue
                generation = self.app.consumer_generation_id
                for tp, fetched in records.items():
                    if (
                        active is not None
                        and tp not in active
                        and tp not in self._buffered_partitions
                    ):
                        continue
                    if (
                        self.epoch != epoch
                        or not self.flow_active
                        or self.app.consumer_generation_id != generation
                    ):
                        self.reread = True  # fetched before a seek, a clear or a rebalance
                        break
                    r_offset = read_offset.get(tp)
                    batch = (
                        fetched
                        if r_offset is None or fetched[0].offset >= r_offset
                        else [r for r in fetched if r.offset >= r_offset]
                    )
                    if not batch:
                        continue
                    if acks_enabled_for(tp.topic):
                        for record in batch:
                            if r_offset and record.offset - r_offset > 1:
                                await self._add_gap(tp, r_offset + 1, record.offset)
                            r_offset = record.offset
                    commit_every = self._commit_every
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if not await self._deliver(tp, batch, epoch):
                        self.reread = True
                        break
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
    """Run `coro` at once up to its first wait: None when it ended without waiting (an
    exception it raised is raised here), otherwise a task that runs the rest of it, as
    `asyncio.ensure_future(coro)` would have run all of it. Saves the task, and the loop
    iteration before it starts, for a coroutine that usually does not wait."""
    try:
        step = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_rest(coro, step))


async def _rest(coro: Coroutine[Any, Any, Any], step: Any) -> Any:
    # What asyncio's Task does with each step of a coroutine: `step` is the future it waits
    # for (None: it only yields once, as `asyncio.sleep(0)` does). Cancelling this task
    # cancels that future and throws CancelledError into the coroutine, as for a Task.
    while True:
        try:
            if step is None:
                await asyncio.sleep(0)
            else:
                step._asyncio_future_blocking = False
                await asyncio.wait((step,))
        except asyncio.CancelledError as exc:
            if step is not None:
                step.cancel()
            try:
                step = coro.throw(exc)
            except StopIteration as end:
                return end.value
            continue
        try:
            step = coro.send(None)
        except StopIteration as end:
            return end.value


class WatchedFlowControl(FlowControlEvent):
    """The app's flow control: tells the consumer when agent queues lose records."""

    on_cleared: Callable[[], None] = staticmethod(lambda: None)

    def clear(self) -> None:
        if any(queue.qsize() for queue in self._queues):
            self.on_cleared()
        super().clear()
