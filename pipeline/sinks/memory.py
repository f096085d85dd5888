"""An in-memory sink, for tests of what a worker sends and in which order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.sinks.base import Out


@dataclass
class SentRecord:
    """One record as a sink received it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class MemorySink:
    """Keeps every record in `records`, in order."""

    name: str = "memory"
    records: list[SentRecord] = field(default_factory=list)

    async def send(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Append the record; it is 'durable' at once."""
        self.records.append(SentRecord(key, value, list(headers or [])))

    async def send_all(self, records: Sequence[Out]) -> None:
        """Append the records in order."""
        for key, value, headers in records:
            await self.send(key, value, headers)
