"""Kafka topic sinks: a record counts as written only once the brokers acknowledge it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pipeline.core.errors import RetryableSinkError
from pipeline.core.models import DeadLetter
from pipeline.sinks.base import Out

log = logging.getLogger(__name__)


class TopicSink:
    """Writes to one Faust topic and waits for the acknowledgement.

    A failed write is retried with backoff until it succeeds: the caller's input offset must
    not move on past a record that was never written.
    """

    def __init__(self, topic: Any, max_backoff: float = 5.0) -> None:
        self.topic = topic
        self.name = topic.get_topic_name()
        self.max_backoff = max_backoff

    async def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Write one record; return once acknowledged. Retries transient failures forever."""
        delay = 0.1
        while True:
            try:
                pending = await self.topic.send(key=key, value=value, headers=headers or [])
                await pending
                return
            except Exception as exc:  # any broker error: the record must still be written
                error = RetryableSinkError(f"writing to {self.name} failed: {exc!r}")
                log.warning("sink retry: topic=%s delay=%.1fs error=%s", self.name, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    async def send_all(self, records: Sequence[Out]) -> None:
        """Write records in order; return once all are acknowledged. They go to the producer
        together (one produce request where they fit) and are acknowledged together. From the
        first one that fails, the rest are sent again one by one, each acknowledged before the
        next: a retried record must not land after a later one (a record after it may then be
        written twice; every record Casewatch sends can be told apart from a repeat)."""
        pending: list[Any] = []
        for key, value, headers in records:
            try:
                pending.append(await self.topic.send(key=key, value=value, headers=headers or []))
            except Exception as exc:
                log.warning("sink retry: topic=%s error=%r", self.name, exc)
                break
        failed = len(pending)
        for i, sent in enumerate(pending):
            try:
                await sent
            except Exception as exc:
                log.warning("sink retry: topic=%s error=%r", self.name, exc)
                failed = i
                break
        for key, value, headers in records[failed:]:
            await self.send(key, value, headers)


class DeadLetterSink:
    """The dead-letter topic: the original key and value unchanged, the contract's headers."""

    def __init__(self, sink: TopicSink) -> None:
        self.sink = sink

    async def send(self, key: bytes | None, value: bytes | None, letter: DeadLetter) -> None:
        """Write one dead letter; return once acknowledged."""
        await self.sink.send(key, value, letter.headers())

    async def send_all(
        self, letters: Sequence[tuple[bytes | None, bytes | None, DeadLetter]]
    ) -> None:
        """Write dead letters in order; return once all are acknowledged."""
        await self.sink.send_all([(key, value, letter.headers()) for key, value, letter in letters])
