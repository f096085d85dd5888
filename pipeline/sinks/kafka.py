"""Kafka topic sinks: a record counts as written only once the brokers acknowledge it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.errors import RetryableSinkError
from pipeline.models import DeadLetter

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


class DeadLetterSink:
    """The dead-letter topic: the original key and value unchanged, the contract's headers."""

    def __init__(self, sink: TopicSink) -> None:
        self.sink = sink

    async def send(self, key: bytes | None, value: bytes | None, letter: DeadLetter) -> None:
        """Write one dead letter; return once acknowledged."""
        await self.sink.send(key, value, letter.headers())
