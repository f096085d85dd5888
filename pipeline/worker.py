"""What a worker does with each consumed message and each clock tick. Never raises: a message
that cannot be processed goes to the dead-letter topic, and the next one is taken.

The order of steps is what makes at-least-once safe: outputs (dead letters, exception records)
are acknowledged before the customer's state is written, and the source offset only moves on
after both. A crash between the two repeats outputs (same deterministic ids), it never loses
them.

Deadlines: every write records the customer's next deadline in an in-memory index (rebuilt
from the table after a rebalance). A tick (a message on the internal tick topic, one per
partition every `TICK` seconds, co-partitioned with the sources so it reaches the worker that
owns the partition) fires the customers whose deadline the partition's clock has passed. Faust
tables can only be written while handling a message, hence a topic rather than a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from pipeline.clock import NEVER, PartitionClock
from pipeline.config import Config
from pipeline.detectors.base import Finding
from pipeline.engine import (
    DeadlineIndex,
    Engine,
    context_of,
    event_dict,
    occurred,
    without_open,
)
from pipeline.errors import InvalidEvent
from pipeline.ingest import parse_event
from pipeline.metrics import Metrics
from pipeline.models import DeadLetter, Resolution, SourcePosition
from pipeline.sinks.base import Sink
from pipeline.sinks.kafka import DeadLetterSink
from pipeline.state import CustomerState, kept_json

TICK = 0.25  # seconds between clock ticks per partition
REPORT = 1.0  # a partition's clock goes to dispatch when it moved this much (event time)

log = logging.getLogger(__name__)


class Message(Protocol):
    """The parts of a consumed Kafka message Casewatch reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Ingest:
    """Validates, dead-letters, re-keys and de-duplicates; runs the detectors; publishes."""

    config: Config
    metrics: Metrics
    dlq: DeadLetterSink
    rekey: Sink
    rekey_topic: str
    dispatch: Sink  # the internal dispatch topic (one partition): routing happens there
    # customer id bytes -> state bytes: `durable.StateTable` (get, async put to a partition)
    table: Any
    # partition number (text) -> {"mark": clock, "wall": when recorded, "seen": {input: newest
    # event time}} (PartitionClock.restore)
    clocks_table: Any
    engine: Engine = field(init=False)
    index: DeadlineIndex = field(default_factory=DeadlineIndex)
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    reported: dict[int, float] = field(default_factory=dict)  # clock last sent to dispatch
    customers: int = 0  # keys in the customers table held here
    # The ingest, re-key and tick agents run as separate tasks: one customer at a time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # casewatch_events_total's child per (topic, type): `labels()` looked up once, not per event
    counted: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = Engine(self.config)
        self._entries = self.metrics.table_entries.labels("customers")

    async def handle(self, msg: Message) -> None:
        """Process one message; every failure ends on the dead-letter topic."""
        started = time.perf_counter()
        try:
            async with self.lock:
                await self._handle(msg)
        except Exception as exc:
            log.exception(
                "internal error: topic=%s partition=%d offset=%d",
                msg.topic,
                msg.partition,
                msg.offset,
            )
            reason = (
                f"Casewatch failed on this event ({type(exc).__name__}: {exc}); it was not processed: "
                "report it with this record, then replay it from the dead-letter topic"
            )
            await self._dead_letter(msg, reason, "internal_error")
        self.metrics.processing_latency.observe(time.perf_counter() - started)

    async def _handle(self, msg: Message) -> None:
        try:
            event = parse_event(msg.value, self.config.pipeline.max_event_bytes)
        except InvalidEvent as exc:
            await self._dead_letter(msg, exc.reason, exc.error_class)
            return
        customer = event.customer_id.encode()
        if msg.key != customer and msg.topic != self.rekey_topic:
            # Keyed by something else: this partition may not own the customer's state.
            await self.rekey.send(customer, msg.value)
            self.metrics.rekeyed.labels(msg.topic).inc()
            return
        data = event_dict(event)
        t = occurred(data)
        clock = self._clock(msg.partition)
        wall = time.time()
        if clock.observe(msg.topic, t, wall):
            self.metrics.late_events.labels(msg.topic).inc()
        now = clock.now(wall)
        stored = self.table.get(customer)
        if stored is None:
            self.customers += 1
            self._entries.set(self.customers)
        state = CustomerState.from_bytes(stored)
        p = self.config.pipeline
        updated = state.remember(event.event_id, t, p.dedupe_window, p.dedupe_max_ids)
        if updated is None:
            self.metrics.duplicates.labels(msg.topic).inc()
            return
        counted = self.counted.get((msg.topic, event.type))
        if counted is None:
            counted = self.counted[msg.topic, event.type] = self.metrics.events.labels(
                msg.topic, event.type
            )
        counted.inc()
        if updated.partition != msg.partition:
            updated = replace(updated, partition=msg.partition)
        new, findings = self.engine.observe(updated, data, now)
        if findings:  # acknowledged before the state is written
            source = SourcePosition(topic=msg.topic, partition=msg.partition, offset=msg.offset)
            await self._publish(findings, new, source, msg.partition, now)
        await self.table.put(
            customer, new.to_bytes(self.config.pipeline.compress_state), msg.partition
        )
        self._index(msg.partition, customer, new)
        # Other customers of this partition whose deadline this event's time has passed.
        await self._fire_due(msg.partition, now)

    async def resolution(self, msg: Message) -> None:
        """A handler's update on `casewatch.resolutions` (keyed by customer): the customer's
        open exceptions are updated and the update goes on to dispatch. Never raises."""
        try:
            async with self.lock:
                await self._resolution(msg)
        except Exception as exc:
            log.exception("internal error on a resolution: offset=%d", msg.offset)
            await self._dead_letter(
                msg,
                f"Casewatch failed on this resolution ({type(exc).__name__}: {exc})",
                "internal_error",
            )

    async def _resolution(self, msg: Message) -> None:
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
            return
        if not msg.key:
            await self._dead_letter(
                msg,
                "a resolution without a key: key it by the exception's customer_id",
                "resolution_no_key",
            )
            return
        data = resolution.model_dump(mode="json", exclude_none=True)
        await self.dispatch.send(msg.key, orjson.dumps({"resolution": data}))
        if resolution.status == "resolved":
            state = CustomerState.from_bytes(self.table.get(msg.key))
            updated = without_open(state, resolution.exception_id)
            if updated is not state:
                await self.table.put(
                    msg.key, updated.to_bytes(self.config.pipeline.compress_state), msg.partition
                )

    async def tick(self, partition: int) -> None:
        """A clock tick for `partition`: fire every deadline its clock has passed. Never raises."""
        try:
            async with self.lock:
                wall = time.time()
                clock = self._clock(partition)
                now = clock.now(wall)
                await self._fire_due(partition, now)
                if now != NEVER:
                    self.metrics.watermark_lag.labels(str(partition)).set(wall - now)
                    if now >= self.reported.get(partition, NEVER) + REPORT:
                        # Dispatch runs SLA deadlines on the partitions' clocks.
                        await self.dispatch.send(
                            None, orjson.dumps({"clock": {"p": partition, "t": now}})
                        )
                        self.clocks_table[str(partition)] = kept_json(
                            {"mark": now, "wall": wall, "seen": clock.seen()}
                        )
                        self.reported[partition] = now
        except Exception:
            log.exception("internal error on the clock tick of partition %d", partition)

    def recovered(
        self, states: Iterable[tuple[bytes, bytes]], clocks: Iterable[tuple[Any, bytes]]
    ) -> None:
        """After a rebalance or restart: rebuild the deadline index and the clocks from the
        tables' local contents."""
        self.index.clear()
        self.customers = 0
        for customer, value in states:
            self.customers += 1
            state = CustomerState.from_bytes(value)
            if state.partition is not None:
                self.index.set(state.partition, customer, self.engine.next_deadline(state))
        for partition, value in clocks:
            saved = orjson.loads(value)
            self._clock(int(partition)).restore(
                saved["mark"], saved["wall"], saved.get("seen"), time.time()
            )
        self.metrics.pending_deadlines.set(len(self.index))
        self._entries.set(self.customers)
        log.info("recovered: %d customers with a pending deadline", len(self.index))

    async def _fire_due(self, partition: int, now: float) -> None:
        for customer in list(self.index.due(partition, now)):
            state = CustomerState.from_bytes(self.table.get(customer))
            new, findings = self.engine.fire(state, now)
            await self._publish(findings, new, None, partition, now)
            await self.table.put(
                customer, new.to_bytes(self.config.pipeline.compress_state), partition
            )
            self._index(partition, customer, new)

    async def _publish(
        self,
        findings: list[Finding],
        state: CustomerState,
        source: SourcePosition | None,
        partition: int,
        now: float,
    ) -> None:
        if not findings:
            return
        # One after the other, each acknowledged before the next: they share the dispatch
        # topic's one partition and this customer's key, and dispatch decides in their order
        # (a retried send sent concurrently could land after a later record).
        for f in findings:
            context = context_of(state, f.exception_id)
            detected = datetime.now(UTC)
            record = self.engine.record(f, detected, source, context)
            await self.dispatch.send(
                f.customer_id.encode(),
                orjson.dumps(
                    {
                        "exception": record.model_dump(mode="json", exclude_none=True),
                        # JSON has no -inf: a clock not started yet is left out
                        **({"clock": {"p": partition, "t": now}} if now != NEVER else {}),
                    }
                ),
            )
            self.metrics.exceptions.labels(f.rule, record.severity, f.status).inc()
            self.metrics.detection_latency.labels(f.rule).observe(
                max(0.0, detected.timestamp() - f.event_time)
            )
            log.info(
                "exception: %s %s %s customer=%s subject=%s",
                record.status,
                f.rule,
                record.exception_id,
                f.customer_id,
                dict(f.subject),
            )

    def _index(self, partition: int, customer: bytes, state: CustomerState) -> None:
        self.index.set(partition, customer, self.engine.next_deadline(state))
        self.metrics.pending_deadlines.set(len(self.index))

    def _clock(self, partition: int) -> PartitionClock:
        clock = self.clocks.get(partition)
        if clock is None:
            p = self.config.pipeline
            clock = self.clocks[partition] = PartitionClock(
                p.allowed_lateness.total_seconds(), p.idle_after.total_seconds()
            )
            t = self.config.topics
            clock.expect((t.interactions, t.orders), time.time())
        return clock

    async def _dead_letter(self, msg: Message, reason: str, error_class: str) -> None:
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
