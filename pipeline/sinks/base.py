"""The one interface every output goes through.

A sink's `send` and `send_all` return only when the records are durably written (for Kafka:
acknowledged by the brokers), so the caller can commit its input afterwards. The Kafka sinks
retry a failed write until it succeeds (the input waits; nothing is dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# One record for a sink: key, value, headers.
Out = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class Sink(Protocol):
    """Somewhere records go: a Kafka topic, the dead-letter topic, a list in a test."""

    name: str

    async def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Write one record; return once it is durable. Runs on the worker's event loop."""
        ...

    async def send_all(self, records: Sequence[Out]) -> None:
        """Write records in order; return once every one is durable. They may travel
        together, but none is written after a later one."""
        ...
