"""What a worker does with each consumed message. Never raises: a message that cannot be
processed goes to the dead-letter topic, and the next one is taken.

The order of steps is what makes at-least-once safe: outputs (dead letters now; exception
records later) are acknowledged before the customer's state is written, and the source offset
only moves on after both. A crash between the two repeats outputs (same deterministic ids), it
never loses them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.config import Config
from pipeline.errors import InvalidEvent
from pipeline.ingest import parse_event
from pipeline.metrics import Metrics
from pipeline.models import DeadLetter
from pipeline.sinks.kafka import DeadLetterSink
from pipeline.state import CustomerState

log = logging.getLogger(__name__)


class Message(Protocol):
    """The parts of a consumed Kafka message Casewatch reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Rekey(Protocol):
    """Forwards an event to the rekey topic under its customer id."""

    async def send(self, key: bytes | None, value: bytes | None, headers: Any = None) -> None: ...


@dataclass
class Ingest:
    """Validates, dead-letters, re-keys and de-duplicates; then hands on to the detectors."""

    config: Config
    metrics: Metrics
    dlq: DeadLetterSink
    rekey: Rekey
    rekey_topic: str
    table: Any  # a Faust table (or a dict in tests): customer id bytes -> state bytes

    async def handle(self, msg: Message) -> None:
        """Process one message; every failure ends on the dead-letter topic."""
        started = time.perf_counter()
        try:
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
        state = CustomerState.from_bytes(self.table.get(customer))
        p = self.config.pipeline
        updated = state.remember(
            event.event_id, event.occurred_at.timestamp(), p.dedupe_window, p.dedupe_max_ids
        )
        if updated is None:
            self.metrics.duplicates.labels(msg.topic).inc()
            return
        self.metrics.events.labels(msg.topic, event.type).inc()
        # Detectors plug in here (issue 3): their outputs are acknowledged before the write below.
        self.table[customer] = updated.to_bytes()

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
