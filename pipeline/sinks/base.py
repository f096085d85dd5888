"""The one interface every output goes through.

A sink's `send` returns only when the record is durably written (for Kafka: acknowledged by the
brokers), so the caller can commit its input afterwards. Failures raise `SinkError`
subclasses: `RetryableSinkError` when the same write may succeed later, `FatalSinkError` when
it cannot.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """Somewhere records go: a Kafka topic, the dead-letter topic, a list in a test."""

    name: str

    async def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Write one record; return once it is durable. Runs on the worker's event loop."""
        ...
