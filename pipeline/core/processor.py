"""One partition's records in, what must happen out: the one hot path of the live worker and of
`casewatch replay`.

`Processor.process` takes a batch of raw records of one partition (bytes, key, topic, offset)
and the wall time (None in replay: event time only) and returns an `Output`: the dead letters,
the records to re-key, the exception records for dispatch, each changed customer's new stored
state, and counts for the metrics. It reads the customers' stored states through the `store`
it was given and never writes them: the caller applies `Output.states` once the outputs are
acknowledged (outputs -> state -> offsets, the at-least-once order; pipeline/runtime/worker.py). The
deadline index and the partitions' clocks live here, in memory, rebuilt by `recovered`.

For each record, in order:
1. validate the raw bytes (`decode_event`); an invalid one is a dead letter;
2. re-key a record whose key is not its customer (live only: a replay keys by customer);
3. move the partition's clock with the event's time, on the input of its event type (the
   interactions or orders topic, whichever physical topic brought it);
4. fire every deadline of the partition's customers that the clock has passed;
5. forget the event if its id was seen (a duplicate), otherwise run every rule over the
   customer's state and keep the new state and what was found.

Synchronous and without I/O: the worker and the replay are thin adapters around it, so they
cannot drift apart (tests/unit/test_processor.py runs both over the same records).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from pipeline.config import Config
from pipeline.core.clock import NEVER, PartitionClock
from pipeline.core.engine import DeadlineIndex, Engine, occurred, without_open
from pipeline.core.errors import InvalidEvent
from pipeline.core.ingest import decode_event
from pipeline.core.models import ExceptionRecord, SourcePosition
from pipeline.core.state import CustomerState, kept_json
from pipeline.detectors.base import Finding

log = logging.getLogger(__name__)

REPORT = 1.0  # a partition's clock is recorded and sent to dispatch when it moved this much


class Consumed(Protocol):
    """The parts of a consumed Kafka record the processor reads (aiokafka's `ConsumerRecord`
    has them, so the worker hands the fetched records over as they are)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One record, built by hand (the replay, tests)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Letter:
    """A record that goes to the dead-letter topic unchanged, with the reason a person reads."""

    record: Consumed
    reason: str
    error_class: str


@dataclass(frozen=True, slots=True)
class Found:
    """An exception record for dispatch: `clock` is the partition's clock when it was found."""

    finding: Finding
    record: ExceptionRecord
    clock: float


class Output:
    """What one call asks the caller to do, in this order: send `letters`, `rekeys` and
    `found` (acknowledged), then write `states` and `clock_record`, then move the offsets.

    A plain class with slots: the replay makes one per line."""

    __slots__ = (
        "clock",
        "clock_record",
        "counts",
        "found",
        "letters",
        "newest",
        "rekeys",
        "states",
    )

    def __init__(self) -> None:
        self.letters: list[Letter] = []
        self.rekeys: list[tuple[bytes, Consumed]] = []  # (customer, record)
        self.found: list[Found] = []
        self.states: dict[bytes, bytes] = {}  # customer -> stored state
        # the partition's clock to record (clocks table) and report to dispatch, when it moved
        # `REPORT` since the last one (ticks only)
        self.clock_record: bytes | None = None
        self.clock = NEVER  # the partition's clock after this call
        self.newest = NEVER  # the newest event time among the valid records (replay's end)
        # ("events", topic, type), ("duplicates" | "late" | "rekeyed", topic, "") -> count
        self.counts: defaultdict[tuple[str, str, str], int] = defaultdict(int)


class Processor:
    """The detectors' side of the pipeline for every partition a worker (or a replay) holds."""

    def __init__(
        self,
        config: Config,
        store: Callable[[bytes], bytes | None],
        rekey_topic: str | None = None,
    ) -> None:
        self.config = config
        self.engine = Engine(config)
        self.store = store  # customer -> stored state (the caller keeps it up to date)
        self.rekey_topic = rekey_topic  # None: never re-key (replay)
        self.index = DeadlineIndex()
        self.clocks: dict[int, PartitionClock] = {}
        self.reported: dict[int, float] = {}  # clock last recorded per partition
        p = config.pipeline
        self._window, self._max_ids = p.dedupe_window, p.dedupe_max_ids
        self._compress = p.compress_state
        self._max_bytes = p.max_event_bytes
        self._inputs = (config.topics.interactions, config.topics.orders)

    def process(
        self,
        partition: int,
        records: Iterable[Consumed],
        wall: float | None,
        unread: Collection[str] = (),
    ) -> Output:
        """One partition's records, in order. `wall`: the wall time (None: replay, event time
        only); `unread`: the inputs (interactions or orders topic) with records not read yet,
        which hold the clock however long they deliver nothing."""
        out = Output()
        states: dict[bytes, CustomerState] = {}  # changed in this call, not stored yet
        clock = self.clock(partition, wall)
        for record in records:
            try:
                self._one(record, partition, clock, wall, unread, states, out)
            except Exception as exc:  # a bug of ours: this record is not processed
                log.exception(
                    "internal error: topic=%s partition=%d offset=%d",
                    record.topic,
                    partition,
                    record.offset,
                )
                out.letters.append(
                    Letter(
                        record,
                        f"Casewatch failed on this event ({type(exc).__name__}: {exc}); it was "
                        "not processed: report it with this record, then replay it from the "
                        "dead-letter topic",
                        "internal_error",
                    )
                )
        out.clock = clock.now(wall, unread)
        self._encode(states, out)
        return out

    def tick(self, partition: int, wall: float, unread: Collection[str] = ()) -> Output:
        """Fire every deadline of `partition` its clock has passed with no new input; record
        the clock when it moved `REPORT` since the last record."""
        out = Output()
        states: dict[bytes, CustomerState] = {}
        clock = self.clock(partition, wall)
        now = out.clock = clock.now(wall, unread)
        self._fire_due(partition, now, wall, states, out)
        self._encode(states, out)
        if now != NEVER and now >= self.reported.get(partition, NEVER) + REPORT:
            out.clock_record = kept_json({"mark": now, "wall": wall, "seen": clock.seen()})
            self.reported[partition] = now
        return out

    def resolved(self, customer: bytes, exception_id: str) -> bytes | None:
        """A handler resolved one of the customer's exceptions: its new stored state, or None
        when nothing changes."""
        state = CustomerState.from_bytes(self.store(customer), lazy=True)
        updated = without_open(state, exception_id)
        return None if updated is state else updated.to_bytes(self._compress)

    def advance(self, partition: int, until: float) -> Output:
        """Replay's end of input: the clock moves to `until` and what is due fires."""
        out = Output()
        states: dict[bytes, CustomerState] = {}
        now = out.clock = self.clock(partition, None).advance(until)
        self._fire_due(partition, now, None, states, out)
        self._encode(states, out)
        return out

    def recovered(
        self,
        states: Iterable[tuple[bytes, bytes]],
        clocks: Iterable[tuple[int, bytes]],
        wall: float,
    ) -> int:
        """After a rebalance or restart: the deadline index and the clocks from the tables'
        local contents. Returns the number of customers held."""
        self.index.clear()
        customers = 0
        for customer, value in states:
            customers += 1
            state = CustomerState.from_bytes(value, lazy=True)
            if state.partition is not None:
                self.index.set(state.partition, customer, self.engine.next_deadline(state))
        for partition, value in clocks:
            saved = orjson.loads(value)
            self.clock(partition, wall).restore(
                saved["mark"], saved["wall"], saved.get("seen"), wall
            )
        return customers

    def clock(self, partition: int, wall: float | None) -> PartitionClock:
        """The partition's clock; live, it expects both inputs from the start."""
        clock = self.clocks.get(partition)
        if clock is None:
            p = self.config.pipeline
            clock = self.clocks[partition] = PartitionClock(
                p.allowed_lateness.total_seconds(), p.idle_after.total_seconds()
            )
            if wall is not None:
                clock.expect(self._inputs, wall)
        return clock

    def _one(
        self,
        record: Consumed,
        partition: int,
        clock: PartitionClock,
        wall: float | None,
        unread: Collection[str],
        states: dict[bytes, CustomerState],
        out: Output,
    ) -> None:
        try:
            data = decode_event(record.value, self._max_bytes)
        except InvalidEvent as exc:
            out.letters.append(Letter(record, exc.reason, exc.error_class))
            return
        customer = data["customer_id"].encode()
        if (
            self.rekey_topic is not None
            and record.key != customer
            and record.topic != self.rekey_topic
        ):
            # Keyed by something else: this partition may not own the customer's state.
            out.rekeys.append((customer, record))
            out.counts["rekeyed", record.topic, ""] += 1
            return
        t = occurred(data)
        if t > out.newest:
            out.newest = t
        kind = data["type"]
        source = self._inputs[1] if kind.startswith("order.") else self._inputs[0]
        if clock.observe(source, t, wall, unread):
            out.counts["late", record.topic, ""] += 1
        now = clock.now(wall, unread)
        self._fire_due(partition, now, wall, states, out)
        state = states.get(customer)
        if state is None:
            state = CustomerState.from_bytes(self.store(customer), lazy=True)
        updated = state.remember(data["event_id"], t, self._window, self._max_ids)
        if updated is None:
            out.counts["duplicates", record.topic, ""] += 1
            return
        out.counts["events", record.topic, kind] += 1
        if updated.partition != partition:
            due: float | None = NEVER  # not indexed here (new, or another partition's): look
            updated = updated._replace(partition=partition)
        else:
            # Written by this partition's processor or read back by `recovered`: the index
            # holds its next deadline (none: nothing pending), and `_fire_due` has just fired
            # whatever was due by `now`.
            due = self.index.next(customer)
        new, findings = self.engine.observe(updated, data, now, due)
        if findings:
            position = (
                SourcePosition(topic=record.topic, partition=partition, offset=record.offset)
                if wall is not None
                else None
            )
            at = max(t, now) if wall is None else wall
            self._found(findings, new, at, wall, position, now, out)
        self._keep(partition, customer, new, states)

    def _fire_due(
        self,
        partition: int,
        now: float,
        wall: float | None,
        states: dict[bytes, CustomerState],
        out: Output,
    ) -> None:
        if not self.index.has_due(partition, now):  # most calls
            return
        for customer in list(self.index.due(partition, now)):
            state = states.get(customer)
            if state is None:
                state = CustomerState.from_bytes(self.store(customer), lazy=True)
            new, findings = self.engine.fire(state, now)
            self._found(findings, new, now if wall is None else wall, wall, None, now, out)
            self._keep(partition, customer, new, states)

    def _found(
        self,
        findings: list[Finding],
        state: CustomerState,
        at: float,
        wall: float | None,
        source: SourcePosition | None,
        clock: float,
        out: Output,
    ) -> None:
        """Live, a record is detected at the wall time; in replay at event time, never before
        the finding's own time, so a replay's output is the same byte for byte."""
        for f in findings:
            detected = datetime.fromtimestamp(
                at if wall is not None else max(at, f.event_time), UTC
            )
            record = self.engine.record(f, detected, source, self.engine.context(state, f))
            out.found.append(Found(f, record, clock))

    def _keep(
        self, partition: int, customer: bytes, state: CustomerState, states: dict[bytes, Any]
    ) -> None:
        states[customer] = state
        self.index.set(partition, customer, self.engine.next_deadline(state))

    def _encode(self, states: dict[bytes, CustomerState], out: Output) -> None:
        for customer, state in states.items():
            out.states[customer] = state.to_bytes(self._compress)
