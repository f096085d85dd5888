"""Per-customer state kept in the `customers` table: versioned, small, never mutated in place.

It holds the event ids seen recently (64-bit digests with their event time, so a repeated
`event_id` is recognised without storing ids of up to 128 characters; stored packed, 16 bytes
each, as one base64 string: 22 characters instead of the 38 of a JSON `["<hex>",<time>]`),
each rule's detector state tagged with the rule's version, the customer's latest profile, and
the partition that owns the customer (so the deadline index can be rebuilt after a rebalance).

Bound (documented in the README): at most `dedupe_max_ids` digests (about 22 bytes each), one
profile, and per rule what its detector keeps (see each detector's module docstring).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import orjson

VERSION = 3  # 3: `seen` packed (see _pack_seen); 2 and 1 are read too
_SEEN = struct.Struct("<8sd")  # digest, event time (the float itself: no rounding)


def digest(event_id: str) -> bytes:
    """A 64-bit digest of an event id: collisions within one customer's window are negligible."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def kept_json(value: Any) -> bytes:
    """`orjson.dumps` for a value a table keeps in memory. orjson returns its output in the
    buffer it wrote into, at least 4 KiB and up to about 8 times the JSON's length, and never
    shrinks it (measured with orjson 3.13: 1,008 bytes of JSON hold 4,056, 3,008 hold 16,224;
    ijl/orjson#483): 100,000 states of 1 KB took 779 MiB. A copy of the right size costs a
    memcpy."""
    return bytes(memoryview(orjson.dumps(value)))


def _pack_seen(seen: tuple[tuple[bytes, float], ...]) -> str:
    return base64.b64encode(b"".join(_SEEN.pack(d, t) for d, t in seen)).decode()


def _unpack_seen(raw: Any) -> tuple[tuple[bytes, float], ...]:
    if isinstance(raw, str):
        return tuple(_SEEN.iter_unpack(base64.b64decode(raw)))
    return tuple((bytes.fromhex(d), t) for d, t in raw)  # versions 1 and 2: [[hex, time], ...]


@dataclass(frozen=True, slots=True)
class CustomerState:
    """Everything Casewatch remembers about one customer."""

    seen: tuple[tuple[bytes, float], ...] = ()
    # rule name -> [rule_version, detector state]; a changed rule starts from a fresh state
    rules: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, Any] | None = None
    partition: int | None = None
    # context: recent events [time, type, detail], newest last; open orders by id; this
    # customer's open exceptions by id {rule, status, subject}
    recent: tuple[tuple[float, str, str], ...] = ()
    orders: Mapping[str, Any] = field(default_factory=dict)
    open: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise for the table (JSON, with a version to migrate from); empty parts are
        left out (`from_bytes` reads them as empty)."""
        parts = {
            "seen": _pack_seen(self.seen) if self.seen else None,
            "rules": self.rules,
            "profile": self.profile,
            "p": self.partition,
            "recent": self.recent,
            "orders": self.orders,
            "open": self.open,
        }
        return kept_json({"v": VERSION, **{k: v for k, v in parts.items() if v or v == 0}})

    @classmethod
    def from_bytes(cls, data: bytes | None) -> CustomerState:
        """Read a table value; `None` (a new customer) is the empty state. Reads versions 1-3."""
        if not data:
            return cls()
        raw = orjson.loads(data)
        return cls(
            seen=_unpack_seen(raw.get("seen") or ()),
            rules=raw.get("rules") or {},
            profile=raw.get("profile"),
            partition=raw.get("p"),
            recent=tuple((t, k, d) for t, k, d in raw.get("recent") or ()),
            orders=raw.get("orders") or {},
            open=raw.get("open") or {},
        )

    def remember(
        self, event_id: str, at: float, window: timedelta, max_ids: int
    ) -> CustomerState | None:
        """The state with `event_id` remembered, or `None` when it was seen already.

        Ids older than `window` before the newest one, and beyond `max_ids`, are forgotten.
        """
        key = digest(event_id)
        if any(d == key for d, _ in self.seen):
            return None
        newest = max(at, max((t for _, t in self.seen), default=at))
        horizon = newest - window.total_seconds()
        kept = [(d, t) for d, t in self.seen if t >= horizon]
        kept.append((key, at))
        kept.sort(key=lambda item: item[1])
        return replace(self, seen=tuple(kept[-max_ids:]))
