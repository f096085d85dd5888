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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.config import Config
from pipeline.core.clock import NEVER, PipelineClock
from pipeline.core.ingest import topic_for
from pipeline.core.models import ExceptionRecord
from pipeline.core.processor import Output, Processor, Record
from pipeline.routers.dispatch import Dispatcher, Routed
from pipeline.routers.step import decide, in_order
from pipeline.routers.tree import redact
from pipeline.runtime.topics import partition_for


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
    """The live pipeline's logic over an iterable of lines, one process, no broker: the same
    `Processor` as the worker, fed one line at a time, each line a record of the partition
    Kafka would give its customer."""

    def __init__(self, config: Config, errors: IO[str] | None = None) -> None:
        self.config = config
        # Held serialised, exactly as the live table holds them: what does not survive a
        # round trip through the table cannot make replay and live disagree.
        self.states: dict[bytes, bytes] = {}
        self.processor = Processor(config, self.states.get)
        self.dispatcher = Dispatcher(config, {})
        self.dispatch_clock = PipelineClock()
        self.summary = Summary()
        self.newest = float("-inf")
        self.errors = errors if errors is not None else sys.stderr
        self._partitions: dict[str, int] = {}  # customer -> partition (murmur2 is slow)
        # the last clock message sent (clock, partition), until a record is decided
        self._reported: tuple[float, int] | None = None

    def feed(self, lines: Iterable[bytes], name: str = "<input>") -> Iterator[ExceptionRecord]:
        """Process lines in order; yield every exception record as it is found."""
        partitions = self.config.pipeline.partitions
        for number, line in enumerate(lines, start=1):
            self.summary.lines += 1
            if not line.strip():
                continue
            customer, kind = _peek(line)
            partition = self._partitions.get(customer, -1) if customer is not None else 0
            if partition < 0 and customer is not None:
                partition = self._partitions[customer] = partition_for(customer, partitions)
            topic = topic_for(kind, self.config)
            out = self.processor.process(
                partition, (Record(topic, partition, number, customer_key(customer), line),), None
            )
            for letter in out.letters:
                self.summary.invalid += 1
                print(
                    f"{name}:{number}: invalid ({letter.error_class}): {letter.reason}",
                    file=self.errors,
                )
            if out.newest > self.newest:
                self.newest = out.newest
            yield from self._apply(partition, out)

    def finish(self, until: float | None = None) -> Iterator[ExceptionRecord]:
        """End of input: every clock moves to `until` (default: the newest event time)."""
        end = self.newest if until is None else until
        for partition in range(self.config.pipeline.partitions):
            yield from self._apply(partition, self.processor.advance(partition, end), report=False)
        yield from self._routed(self.dispatcher.fire(self.dispatch_clock.advance(end)))

    def _apply(self, partition: int, out: Output, report: bool = True) -> Iterator[ExceptionRecord]:
        for (kind, _, _), n in out.counts.items():
            if kind in ("events", "duplicates", "late"):
                setattr(self.summary, kind, getattr(self.summary, kind) + n)
        # Through the same decisions as the live dispatch agent (capacity, overflow, SLA
        # escalation in event time), as the messages a worker would send it.
        messages: list[dict[str, Any]] = []
        # A partition's clock reported again at the same time, with nothing decided since the
        # last report, changes nothing: not sent.
        if report and out.clock != NEVER and (out.clock, partition) != self._reported:
            messages.append({"clock": {"p": partition, "t": out.clock}})
            self._reported = (out.clock, partition)
        if out.found:
            self._reported = None
        for found in out.found:
            data = found.record.model_dump(mode="json", exclude_none=True)
            messages.append({"exception": data, "clock": {"p": partition, "t": found.clock}})
        for message in messages:
            yield from self._routed(decide(self.dispatcher, self.dispatch_clock, message))
        self.states.update(out.states)

    def _routed(self, routed: list[Routed]) -> Iterator[ExceptionRecord]:
        if not routed:
            return
        at = datetime.fromtimestamp(max(self.dispatch_clock.mark, 0.0), UTC)
        for r in in_order(routed, at):
            if r.notice:  # the decisions, once each: not what a former holder is told
                continue
            self.summary.records[r.record["status"]] += 1
            self.summary.routed[r.handler] += 1
            # As the handler's topic carries it (its redactions applied).
            private = redact(r.record, self.config.handlers[r.handler].redact)
            yield ExceptionRecord.model_validate(private)


def customer_key(customer: str | None) -> bytes | None:
    """A line's Kafka key as `casewatch produce` sends it: its customer id."""
    return customer.encode() if customer is not None else None


def _peek(line: bytes) -> tuple[str | None, str]:
    """Customer and event type of a line, read only to place it (its partition and topic, as
    `casewatch produce` would); the processor validates it."""
    try:
        data = orjson.loads(line)
        customer = data.get("customer_id")
        kind = data.get("type")
    except Exception:
        return None, ""
    return (
        customer if isinstance(customer, str) else None,
        kind if isinstance(kind, str) else "",
    )


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
