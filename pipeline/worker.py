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

from pipeline.clock import NEVER, PartitionClock
from pipeline.config import Config
from pipeline.detectors.base import Finding
from pipeline.engine import DeadlineIndex, Engine, context_of, event_dict, occurred
from pipeline.errors import InvalidEvent
from pipeline.ingest import parse_event
from pipeline.metrics import Metrics
from pipeline.models import DeadLetter, SourcePosition
from pipeline.sinks.kafka import DeadLetterSink
from pipeline.state import CustomerState

TICK = 0.25  # seconds between clock ticks per partition

log = logging.getLogger(__name__)


class Message(Protocol):
    """The parts of a consumed Kafka message Casewatch reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Output(Protocol):
    """A topic records go to, acknowledged when `send` returns (re-key, exceptions)."""

    async def send(self, key: bytes | None, value: bytes | None, headers: Any = None) -> None: ...


@dataclass
class Ingest:
    """Validates, dead-letters, re-keys and de-duplicates; runs the detectors; publishes."""

    config: Config
    metrics: Metrics
    dlq: DeadLetterSink
    rekey: Output
    rekey_topic: str
    exceptions: Output
    table: Any  # a Faust table (or a dict in tests): customer id bytes -> state bytes
    clocks_table: Any  # partition number (text) -> {"mark": clock, "wall": when recorded}
    engine: Engine = field(init=False)
    index: DeadlineIndex = field(default_factory=DeadlineIndex)
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    # The ingest, re-key and tick agents run as separate tasks: one customer at a time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.engine = Engine(self.config)

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
        state = CustomerState.from_bytes(self.table.get(customer))
        p = self.config.pipeline
        updated = state.remember(event.event_id, t, p.dedupe_window, p.dedupe_max_ids)
        if updated is None:
            self.metrics.duplicates.labels(msg.topic).inc()
            return
        self.metrics.events.labels(msg.topic, event.type).inc()
        if updated.partition != msg.partition:
            updated = replace(updated, partition=msg.partition)
        new, findings = self.engine.observe(updated, data, now)
        source = SourcePosition(topic=msg.topic, partition=msg.partition, offset=msg.offset)
        await self._publish(findings, new, source)  # acknowledged before the state is written
        self.table[customer] = new.to_bytes()
        self._index(msg.partition, customer, new)
        # Other customers of this partition whose deadline this event's time has passed.
        await self._fire_due(msg.partition, now)

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
                    saved = self.clocks_table.get(str(partition))
                    if saved is None or orjson.loads(saved)["mark"] != now:
                        self.clocks_table[str(partition)] = orjson.dumps(
                            {"mark": now, "wall": wall}
                        )
        except Exception:
            log.exception("internal error on the clock tick of partition %d", partition)

    def recovered(
        self, states: Iterable[tuple[bytes, bytes]], clocks: Iterable[tuple[Any, bytes]]
    ) -> None:
        """After a rebalance or restart: rebuild the deadline index and the clocks from the
        tables' local contents."""
        self.index.clear()
        for customer, value in states:
            state = CustomerState.from_bytes(value)
            if state.partition is not None:
                self.index.set(state.partition, customer, self.engine.next_deadline(state))
        for partition, value in clocks:
            saved = orjson.loads(value)
            self._clock(int(partition)).restore(saved["mark"], saved["wall"])
        self.metrics.pending_deadlines.set(len(self.index))
        log.info("recovered: %d customers with a pending deadline", len(self.index))

    async def _fire_due(self, partition: int, now: float) -> None:
        for customer in list(self.index.due(partition, now)):
            state = CustomerState.from_bytes(self.table.get(customer))
            new, findings = self.engine.fire(state, now)
            await self._publish(findings, new, None)
            self.table[customer] = new.to_bytes()
            self._index(partition, customer, new)

    async def _publish(
        self, findings: list[Finding], state: CustomerState, source: SourcePosition | None
    ) -> None:
        if not findings:
            return
        context = context_of(state)
        for f in findings:
            detected = datetime.now(UTC)
            record = self.engine.record(f, detected, source, context)
            await self.exceptions.send(
                f.customer_id.encode(),
                orjson.dumps(record.model_dump(mode="json", exclude_none=True)),
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
