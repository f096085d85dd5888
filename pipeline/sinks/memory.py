"""An in-memory sink for tests and for offline replay."""

from __future__ import annotations

from dataclasses import dataclass, field


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
