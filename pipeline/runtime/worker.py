"""The live worker around the `Processor` (pipeline/core/processor.py): each batch of one
partition's records, each clock tick and each resolution goes through it, and what it returns is
applied in the order that makes at-least-once safe:

1. the outputs (dead letters, re-keyed records, exception records for dispatch) are sent
   together and acknowledged by the brokers;
2. then the changed customer states (and the partition's clock record) are written to their
   tables, whose changelog records go out before any offset commit (pipeline/runtime/durable.py);
3. then the caller acknowledges the records' offsets, which a later commit moves past.

A crash between two steps repeats outputs (same deterministic ids), it never loses them.

Deadlines: the processor keeps each customer's next deadline in an in-memory index (rebuilt
from the table after a rebalance). A tick (a message on the internal tick topic, one per
partition every `TICK` seconds, co-partitioned with the sources so it reaches the worker that
owns the partition) fires the customers whose deadline the partition's clock has passed. Faust
tables are written while handling a message, hence a topic rather than a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from pipeline.config import Config
from pipeline.core.clock import NEVER
from pipeline.core.models import DeadLetter, Resolution
from pipeline.core.processor import Consumed, Found, Output, Processor
from pipeline.runtime.metrics import Metrics
from pipeline.sinks.base import Sink
from pipeline.sinks.kafka import DeadLetterSink

TICK = 0.25  # seconds between clock ticks per partition

log = logging.getLogger(__name__)


class Table(Protocol):
    """A changelog-backed table as the worker writes it (`durable.StateTable`)."""

    def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, value: bytes, partition: int) -> None: ...

    async def put_all(self, values: dict[bytes, bytes], partition: int) -> int: ...


@dataclass
class Worker:
    """Runs the processor on what the worker consumes and applies what it returns."""

    config: Config
    metrics: Metrics
    dlq: DeadLetterSink
    rekey: Sink
    rekey_topic: str
    dispatch: Sink  # the internal dispatch topic (one partition): routing happens there
    table: Table  # customer id -> stored state
    clocks_table: Table  # partition number (text) -> the partition's clock record
    # The inputs (interactions or orders topic) of a partition with records not read yet:
    # they hold its clock (pipeline/core/clock.py). Set by build_app from the consumer's positions.
    unread: Callable[[int], Collection[str]] = lambda partition: ()
    processor: Processor = field(init=False)
    customers: int = 0  # keys in the customers table held here
    # Batches, ticks and resolutions run as separate tasks: one at a time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # casewatch_events_total's children per (topic, type): looked up once, not per event
    counted: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.processor = Processor(self.config, self.table.get, self.rekey_topic)
        self._entries = self.metrics.table_entries.labels("customers")

    async def batch(self, records: Sequence[Consumed]) -> None:
        """One partition's fetched records, in order. Returns once their outputs are
        acknowledged and their states written: the caller acknowledges their offsets then."""
        if not records:
            return
        started = time.perf_counter()
        partition = records[0].partition
        async with self.lock:
            out = self.processor.process(partition, records, time.time(), self.unread(partition))
            await self._apply(partition, out)
        self.metrics.processing_latency.observe(time.perf_counter() - started)

    async def tick(self, partition: int) -> None:
        """A clock tick for `partition`: fire every deadline its clock has passed. Never raises."""
        try:
            async with self.lock:
                wall = time.time()
                out = self.processor.tick(partition, wall, self.unread(partition))
                await self._apply(partition, out)
                if out.clock != NEVER:
                    self.metrics.watermark_lag.labels(str(partition)).set(wall - out.clock)
                if out.clock_record is not None:
                    # Dispatch runs SLA deadlines on the partitions' clocks.
                    await self.dispatch.send(
                        None, orjson.dumps({"clock": {"p": partition, "t": out.clock}})
                    )
                    await self.clocks_table.put(
                        str(partition).encode(), out.clock_record, partition
                    )
        except Exception:
            log.exception("internal error on the clock tick of partition %d", partition)

    async def resolution(self, msg: Consumed) -> dict[str, Any] | None:
        """A handler's update on `casewatch.resolutions` (keyed by customer): the customer's
        open exceptions are updated and the update goes on to dispatch. Returns the valid
        update as sent on (None: dead-lettered). Never raises."""
        try:
            async with self.lock:
                return await self._resolution(msg)
        except Exception as exc:
            log.exception("internal error on a resolution: offset=%d", msg.offset)
            await self._dead_letter(
                msg,
                f"Casewatch failed on this resolution ({type(exc).__name__}: {exc})",
                "internal_error",
            )
            return None

    async def _resolution(self, msg: Consumed) -> dict[str, Any] | None:
        try:
            resolution = Resolution.model_validate_json(msg.value or b"")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(value)"
            await self._dead_letter(
                msg,
                f"not a resolution: {where}: {first['msg']}; expected JSON with exception_id, "
                "handler, status (acknowledged, resolved or reassigned) and at (RFC 3339 with offset)",
                "resolution_invalid",
            )
            return None
        if not msg.key:
            await self._dead_letter(
                msg,
                "a resolution without a key: key it by the exception's customer_id",
                "resolution_no_key",
            )
            return None
        data = resolution.model_dump(mode="json", exclude_none=True)
        await self.dispatch.send(msg.key, orjson.dumps({"resolution": data}))
        if resolution.status == "resolved":
            updated = self.processor.resolved(msg.key, resolution.exception_id)
            if updated is not None:
                await self.table.put(msg.key, updated, msg.partition)
        return data

    def recovered(
        self, states: Iterable[tuple[bytes, bytes]], clocks: Iterable[tuple[int, bytes]]
    ) -> None:
        """After a rebalance or restart: the deadline index and the clocks from the tables'
        local contents."""
        self.customers = self.processor.recovered(states, clocks, time.time())
        self.metrics.pending_deadlines.set(len(self.processor.index))
        self._entries.set(self.customers)
        log.info("recovered: %d customers with a pending deadline", len(self.processor.index))

    async def _apply(self, partition: int, out: Output) -> None:
        """Outputs acknowledged, then states written (module docstring)."""
        sends = []
        if out.letters:
            sends.append(
                self.dlq.send_all(
                    [
                        (
                            letter.record.key,
                            letter.record.value,
                            DeadLetter(
                                reason=letter.reason,
                                error_class=letter.error_class,
                                topic=letter.record.topic,
                                partition=letter.record.partition,
                                offset=letter.record.offset,
                            ),
                        )
                        for letter in out.letters
                    ]
                )
            )
        if out.rekeys:
            sends.append(self.rekey.send_all([(c, r.value, None) for c, r in out.rekeys]))
        if out.found:
            # In order on the dispatch topic's one partition: dispatch decides in their order.
            sends.append(self.dispatch.send_all([_envelope(f, partition) for f in out.found]))
        if sends:
            await asyncio.gather(*sends)
        if out.states:
            self.customers += await self.table.put_all(out.states, partition)
            self._entries.set(self.customers)
            self.metrics.pending_deadlines.set(len(self.processor.index))
        self._count(out)

    def _count(self, out: Output) -> None:
        m = self.metrics
        for key, n in out.counts.items():
            child = self.counted.get(key)
            if child is None:
                kind, topic, label = key
                metric = {
                    "events": m.events,
                    "duplicates": m.duplicates,
                    "late": m.late_events,
                    "rekeyed": m.rekeyed,
                }[kind]
                child = self.counted[key] = (
                    metric.labels(topic, label) if kind == "events" else metric.labels(topic)
                )
            child.inc(n)
        for letter in out.letters:
            r = letter.record
            m.dead_letters.labels(r.topic, letter.error_class).inc()
            log.warning(
                "dead letter: topic=%s partition=%d offset=%d class=%s reason=%s",
                r.topic,
                r.partition,
                r.offset,
                letter.error_class,
                letter.reason,
            )
        for found in out.found:
            f, record = found.finding, found.record
            m.exceptions.labels(f.rule, record.severity, f.status).inc()
            m.detection_latency.labels(f.rule).observe(
                max(0.0, record.detected_at.timestamp() - f.event_time)
            )
            log.info(
                "exception: %s %s %s customer=%s subject=%s",
                record.status,
                f.rule,
                record.exception_id,
                f.customer_id,
                dict(f.subject),
            )

    async def _dead_letter(self, msg: Consumed, reason: str, error_class: str) -> None:
        letter = DeadLetter(
            reason=reason,
            error_class=error_class,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
        )
        await self.dlq.send(msg.key, msg.value, letter)
        self.metrics.dead_letters.labels(msg.topic, error_class).inc()
        log.warning(
            "dead letter: topic=%s partition=%d offset=%d class=%s reason=%s",
            msg.topic,
            msg.partition,
            msg.offset,
            error_class,
            reason,
        )


def _envelope(found: Found, partition: int) -> tuple[bytes, bytes, None]:
    """An exception record on the dispatch topic, with the partition's clock when found."""
    record = found.record
    value = {
        "exception": record.model_dump(mode="json", exclude_none=True),
        # JSON has no -inf: a clock not started yet is left out
        **({"clock": {"p": partition, "t": found.clock}} if found.clock != NEVER else {}),
    }
    return record.customer_id.encode(), orjson.dumps(value), None


__all__ = ["TICK", "Worker"]
