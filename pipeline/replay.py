"""`casewatch replay`: run history through the same engine as the live pipeline, on event time.

The replay reproduces what a live worker does with the same events: it assigns each customer to
the partition Kafka's default partitioner would (murmur2 of the key, as `casewatch produce` and
Java producers do), keeps one clock per partition fed by the same inputs (the orders and
interactions topics), de-duplicates event ids with the same window, and fires deadlines as each
partition's clock passes them. At the end of input every clock moves to `until` (default: the
newest `occurred_at` seen), so deadlines up to then fire.

`detected_at` in replay is event time (the clock when the record was found), so the output is
reproducible byte for byte; `source` is absent.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO

import orjson
from aiokafka.partitioner import murmur2
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.clock import PartitionClock, PipelineClock
from pipeline.config import Config
from pipeline.detectors.base import Finding
from pipeline.engine import DeadlineIndex, Engine, context_of, occurred
from pipeline.errors import InvalidEvent
from pipeline.ingest import decode_event
from pipeline.models import ExceptionRecord
from pipeline.produce import topic_for
from pipeline.routers.dispatch import Dispatcher, Routed, stamp
from pipeline.routers.tree import redact
from pipeline.state import CustomerState


def partition_for(customer_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by `customer_id`."""
    hashed: int = murmur2(customer_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass
class Summary:
    """What a replay saw; printed to stderr at the end."""

    lines: int = 0
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    late: int = 0
    records: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(self.records.items())) or "none"
        by_handler = ", ".join(f"{h} {n}" for h, n in sorted(self.routed.items())) or "none"
        return (
            f"replay: {self.lines} lines, {self.events} events, {self.invalid} invalid, "
            f"{self.duplicates} duplicates, {self.late} late; exception records: {by_status}; "
            f"to handlers: {by_handler}"
        )


class Replay:
    """The live pipeline's logic over an iterable of lines, one process, no broker."""

    def __init__(self, config: Config, errors: IO[str] | None = None) -> None:
        self.config = config
        self.engine = Engine(config)
        # Held serialised, exactly as the live table holds them: what does not survive a
        # round trip through the table cannot make replay and live disagree.
        self.states: dict[str, bytes] = {}
        self.index = DeadlineIndex()
        p = config.pipeline
        self.clocks = [
            PartitionClock(p.allowed_lateness.total_seconds(), p.idle_after.total_seconds())
            for _ in range(p.partitions)
        ]
        self.dispatcher = Dispatcher(config, {})
        self.dispatch_clock = PipelineClock()
        self.summary = Summary()
        self.newest = float("-inf")
        self.errors = errors if errors is not None else sys.stderr

    def feed(self, lines: Iterable[bytes], name: str = "<input>") -> Iterator[ExceptionRecord]:
        """Process lines in order; yield every exception record as it is found."""
        p = self.config.pipeline
        for number, line in enumerate(lines, start=1):
            self.summary.lines += 1
            if not line.strip():
                continue
            try:
                data = decode_event(line, p.max_event_bytes)
            except InvalidEvent as exc:
                self.summary.invalid += 1
                print(
                    f"{name}:{number}: invalid ({exc.error_class}): {exc.reason}", file=self.errors
                )
                continue
            t = occurred(data)
            self.newest = max(self.newest, t)
            customer = data["customer_id"]
            partition = partition_for(customer, p.partitions)
            clock = self.clocks[partition]
            if clock.observe(topic_for(data["type"], self.config), t, None):
                self.summary.late += 1
            now = clock.now(None)
            self.dispatch_clock.report(partition, now)
            yield from self._routed(self.dispatcher.fire(self.dispatch_clock.mark))
            yield from self._due(partition, now)
            state = CustomerState.from_bytes(self.states.get(customer))
            if state.partition is None:
                state = replace(state, partition=partition)
            updated = state.remember(data["event_id"], t, p.dedupe_window, p.dedupe_max_ids)
            if updated is None:
                self.summary.duplicates += 1
                continue
            self.summary.events += 1
            new, findings = self.engine.observe(updated, data, now)
            yield from self._records(findings, new, max(t, now))
            self._store(partition, customer, new)

    def finish(self, until: float | None = None) -> Iterator[ExceptionRecord]:
        """End of input: every clock moves to `until` (default: the newest event time)."""
        end = self.newest if until is None else until
        for partition, clock in enumerate(self.clocks):
            yield from self._due(partition, clock.advance(end))
        yield from self._routed(self.dispatcher.fire(self.dispatch_clock.advance(end)))

    def _due(self, partition: int, now: float) -> Iterator[ExceptionRecord]:
        for key in list(self.index.due(partition, now)):
            customer = key.decode()
            new, findings = self.engine.fire(CustomerState.from_bytes(self.states[customer]), now)
            yield from self._records(findings, new, now)
            self._store(partition, customer, new)

    def _store(self, partition: int, customer: str, state: CustomerState) -> None:
        self.states[customer] = state.to_bytes(self.config.pipeline.compress_state)
        self.index.set(partition, customer.encode(), self.engine.next_deadline(state))

    def _records(
        self, findings: list[Finding], state: CustomerState, at: float
    ) -> Iterator[ExceptionRecord]:
        """Each finding as a record, through the same dispatcher as live (capacity, overflow,
        SLA escalation in event time): one line per handler it goes to."""
        detected = datetime.fromtimestamp(at, UTC)
        for f in findings:
            context = context_of(state, f.exception_id)
            when = max(detected, datetime.fromtimestamp(f.event_time, UTC))
            record = self.engine.record(f, when, None, context)
            data = record.model_dump(mode="json", exclude_none=True)
            yield from self._routed(self.dispatcher.fire(self.dispatch_clock.mark))
            yield from self._routed(self.dispatcher.on_exception(data, f.event_time))

    def _routed(self, routed: list[Routed]) -> Iterator[ExceptionRecord]:
        at = datetime.fromtimestamp(max(self.dispatch_clock.mark, 0.0), UTC)
        updates = stamp(
            [r for r in routed if r.reason in ("escalation", "update", "reassigned")], at
        )
        for r in [r for r in routed if r.reason in ("normal", "overflow")] + updates:
            self.summary.records[r.record["status"]] += 1
            self.summary.routed[r.handler] += 1
            # As the handler's topic carries it (its redactions applied).
            private = redact(r.record, self.config.handlers[r.handler].redact)
            yield ExceptionRecord.model_validate(private)


def run(
    path: str, config: Config, out: IO[bytes], until: datetime | None, progress: bool
) -> Summary:
    """`casewatch replay`: read `path`, write one record per line to `out`."""
    replay = Replay(config)
    with open(path, "rb") as file:
        size = _size(file)
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(),
            transient=True,
            disable=not progress,
        ) as bar:
            task = bar.add_task("replay", total=size)

            def lines() -> Iterator[bytes]:
                for line in file:
                    bar.advance(task, len(line))
                    yield line

            for record in replay.feed(lines(), path):
                out.write(_line(record))
            end = until.timestamp() if until else None
            for record in replay.finish(end):
                out.write(_line(record))
    out.flush()
    return replay.summary


def _line(record: ExceptionRecord) -> bytes:
    return orjson.dumps(record.model_dump(mode="json", exclude_none=True)) + b"\n"


def _size(file: IO[bytes]) -> int:
    file.seek(0, 2)
    size = file.tell()
    file.seek(0)
    return size
