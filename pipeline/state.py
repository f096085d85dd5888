"""Per-customer state kept in the `customers` table: versioned, small, never mutated in place.

It holds the event ids seen recently (64-bit digests with their event time, so a repeated
`event_id` is recognised without storing ids of up to 128 characters), each rule's detector
state tagged with the rule's version, the customer's latest profile, recent events, open orders
and open exceptions for context, and the partition that owns the customer (so the deadline
index can be rebuilt after a rebalance).

Stored (version 5, `_write_v5`) as a binary head, then the rest compressed with Zstandard
(`pipeline.compress_state`, default true). The head holds the partition and the remembered ids,
packed as 12 bytes each (digest, then age in whole seconds before the newest, times rounded up
to the second): random bytes, which compression cannot shrink. The rest is an index in JSON
(recent events as columns, the contract's event types as small numbers; the length of every
other part) and one JSON part per rule, for the profile, the open orders and the open
exceptions. An event reads only the parts it touches (`Packed`): the others go back to the
table as the bytes they came in. Versions 1-4 (JSON, version 4 compressed) are read too, so
a worker upgraded in place keeps its changelog.

Bound (docs/detectors.md, "State"): at most `dedupe_max_ids` digests, one profile, 20 recent
events, 20 open orders, 20 open exceptions, and per rule what its detector keeps (see each
detector's module docstring).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from math import ceil
from typing import Any

import orjson
import zstandard

VERSION = 5  # 5: binary parts; 4: compact JSON, zstd-compressed; 3, 2 and 1 are read too
_V5 = b"\x05"  # the first byte of a version 5 body; a JSON body (versions 1-4) starts with "{"
# whether the rest is compressed, partition (-1: none), remembered ids, the newest one's time
_HEAD = struct.Struct("<?iHq")
_LEN = struct.Struct("<I")
_SEEN3 = struct.Struct("<8sd")  # version 3: digest, event time (the float itself)
_AGE_MAX = 2**32 - 1
_ZSTD = b"\x28\xb5\x2f\xfd"  # a Zstandard frame's magic number; plain JSON starts with "{"
# One compressor and one decompressor per process: the worker and the replay use them from one
# thread (the event loop). Zstandard's fastest strategy with small tables: a 4 KiB window and
# 4 KiB of hash table instead of level 1's 64 KiB, which the rest of the worker's work evicts
# from the CPU caches between two states (measured in a replay of 7 model days: level 1 cost
# 68 us per event, these tables 24 us, for the same 977 bytes per customer).
_compress = zstandard.ZstdCompressor(
    compression_params=zstandard.ZstdCompressionParameters(
        window_log=12,
        hash_log=10,
        chain_log=10,
        search_log=1,
        min_match=5,
        target_length=0,
        strategy=zstandard.STRATEGY_FAST,
        write_checksum=False,
        write_content_size=True,
    )
).compress
_decompress = zstandard.ZstdDecompressor().decompress
# Event types in recent events, stored as their index here. Append only: a stored state names
# types by position. Types not listed (a later contract's) are stored by name.
_TYPES = (
    "interaction.contact",
    "interaction.complaint",
    "interaction.maintenance_requested",
    "interaction.maintenance_completed",
    "customer.profile",
    "order.placed",
    "order.shipped",
    "order.delivered",
    "order.delivery_failed",
    "order.cancelled",
)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}


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


def _pack_seen(ids: bytes, times: tuple[int, ...]) -> tuple[int, str]:
    """The newest time, and the digests then each id's age before it, digests and ages apart
    (that compresses better)."""
    newest = times[-1]
    ages = list(map(newest.__sub__, times))
    if newest - times[0] > _AGE_MAX:  # an id 136 years older than the newest
        ages = [min(_AGE_MAX, a) for a in ages]
    return newest, base64.b64encode(ids + struct.pack(f"<{len(ages)}I", *ages)).decode()


def _unpack_seen(raw: Any, newest: int | None) -> tuple[bytes, tuple[int, ...]]:
    """Digests and times (whole seconds, rounded up) of a stored state, oldest first."""
    if not raw:
        return b"", ()
    if newest is not None:  # version 4
        packed = base64.b64decode(raw)
        n = len(packed) // 12
        return packed[: 8 * n], tuple(
            map(int(newest).__sub__, struct.unpack_from(f"<{n}I", packed, 8 * n))
        )
    if isinstance(raw, str):  # version 3
        pairs = list(_SEEN3.iter_unpack(base64.b64decode(raw)))
    else:  # versions 1 and 2: [[hex, time], ...]
        pairs = [(bytes.fromhex(d), t) for d, t in raw]
    pairs.sort(key=lambda item: item[1])
    return b"".join(d for d, _ in pairs), tuple(ceil(t) for _, t in pairs)


def _find(ids: bytes, key: bytes) -> bool:
    """Whether the 8-byte `key` is one of the digests packed in `ids`."""
    i = ids.find(key)
    while i >= 0:
        if i % 8 == 0:
            return True
        i = ids.find(key, i + 1)
    return False


def _pack_recent(recent: tuple[tuple[float, str, str], ...]) -> list[Any]:
    """Recent events as three columns: times, types (the contract's as small numbers),
    details; a column of like values compresses better than rows."""
    times, kinds, details = zip(*recent, strict=True)
    return [times, [_TYPE_CODE.get(k, k) for k in kinds], details]


def _unpack_recent(columns: list[list[Any]]) -> tuple[tuple[float, str, str], ...]:
    times, kinds, details = columns
    names = [_TYPES[k] if k.__class__ is int else k for k in kinds]
    return tuple(zip(times, names, details, strict=True))


def plain(data: bytes) -> dict[str, Any]:
    """A stored state as a JSON object (any version), for measuring and inspecting:
    `{"v": 5, "seen": ..., "rules": ..., ...}`; a version 5 state is shown with version 4's
    keys and packing."""
    if data[:1] == _V5:
        state = _read_v5(data)
        newest, seen = (
            _pack_seen(state.seen_ids, state.seen_times) if state.seen_times else (None, None)
        )
        parts = {
            "sn": newest,
            "seen": seen,
            "rules": {k: [v, _value(s)] for k, (v, s) in state.rules.items()},
            "profile": _value(state.profile),
            "p": state.partition,
            "r": _pack_recent(state.recent) if state.recent else None,
            "orders": _value(state.orders),
            "open": _value(state.open),
        }
        return {"v": 5, **{k: v for k, v in parts.items() if v or v == 0}}
    raw = orjson.loads(_decompress(data) if data[:4] == _ZSTD else data)
    if not isinstance(raw, dict):
        raise ValueError(f"a customer state is a JSON object, not {type(raw).__name__}")
    return raw


class Packed(Mapping[str, Any]):
    """A JSON object of a stored state, kept as its bytes until something reads it.

    An event reads a few parts of its customer's state (the rules its type concerns, the open
    orders when it is about an order): the other parts go back to the table as the bytes they
    came in, never decoded nor encoded again. `value` is the decoded object (decoded once).
    """

    __slots__ = ("_value", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._value: dict[str, Any] | None = None

    @property
    def value(self) -> dict[str, Any]:
        """The object, decoded on first use."""
        if self._value is None:
            self._value = orjson.loads(self.raw)
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self.value[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __bool__(self) -> bool:  # without decoding: written parts are never "{}" but by hand
        return self.raw != b"{}" if self._value is None else bool(self._value)

    def __eq__(self, other: object) -> bool:
        # The engine compares a rule's state with its initial one ({}) for every rule.
        if self._value is None and other.__class__ is dict and not other:
            return self.raw == b"{}"
        if other.__class__ is Packed:
            other = other.value
        return self.value == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({self.value!r})"


def _value(part: Any) -> Any:
    """A part of a state as plain objects (a `Packed` one decoded)."""
    return part.value if isinstance(part, Packed) else part


def _json(part: Any) -> bytes:
    """A part's JSON: a `Packed` one as it came (decoded or not: states are never changed in
    place, so its bytes still say what it holds)."""
    if part.__class__ is Packed:
        return bytes(part.raw)
    return orjson.dumps(part)


def _write_v5(state: CustomerState, compress: bool) -> bytes:
    """Version 5: a binary head (partition, remembered ids and their ages), then, compressed
    unless `compress` is false, an index in JSON (recent events, the length of each other
    part, rules with their version) and the parts' JSON one after the other, so that a part
    an event did not touch is copied through. The ids are random bytes: not compressed."""
    times = state.seen_times
    n = len(times)
    newest = times[-1] if n else 0
    ages = list(map(newest.__sub__, times))
    if n and newest - times[0] > _AGE_MAX:  # an id 136 years older than the newest
        ages = [min(_AGE_MAX, a) for a in ages]
    parts = [
        _json(state.profile) if state.profile else b"",
        _json(state.orders) if state.orders else b"",
        _json(state.open) if state.open else b"",
    ]
    index: list[Any] = [
        _pack_recent(state.recent) if state.recent else None,
        len(parts[0]),
        len(parts[1]),
        len(parts[2]),
    ]
    for name, (version, rule_state) in state.rules.items():
        part = _json(rule_state)
        index.append([name, version, len(part)])
        parts.append(part)
    head = orjson.dumps(index)
    rest = b"".join((_LEN.pack(len(head)), head, *parts))
    return b"".join(
        (
            _V5,
            _HEAD.pack(compress, -1 if state.partition is None else state.partition, n, newest),
            state.seen_ids,
            struct.pack(f"<{n}I", *ages),
            _compress(rest) if compress else rest,
        )
    )


def _read_v5(data: bytes) -> CustomerState:
    compressed, partition, n, newest = _HEAD.unpack_from(data, 1)
    at = 1 + _HEAD.size + 12 * n
    ages = struct.unpack_from(f"<{n}I", data, at - 4 * n)
    body = _decompress(data[at:]) if compressed else data[at:]
    (size,) = _LEN.unpack_from(body)
    recent, *sizes = orjson.loads(body[4 : 4 + size])
    at = 4 + size
    found: list[Packed | None] = []
    for length in sizes[:3]:
        found.append(Packed(body[at : at + length]) if length else None)
        at += length
    rules: dict[str, Any] = {}
    for name, version, length in sizes[3:]:
        rules[name] = [version, Packed(body[at : at + length])]
        at += length
    profile, orders, opened = found
    return CustomerState(
        seen_ids=data[1 + _HEAD.size : 1 + _HEAD.size + 8 * n],
        seen_times=tuple(map(newest.__sub__, ages)),
        rules=rules,
        profile=profile,
        partition=None if partition < 0 else partition,
        recent=_unpack_recent(recent) if recent else (),
        orders={} if orders is None else orders,
        open={} if opened is None else opened,
    )


@dataclass(frozen=True, slots=True)
class CustomerState:
    """Everything Casewatch remembers about one customer."""

    # remembered event ids: 8-byte digests packed together, and their times in whole seconds
    # (rounded up: an id is kept at most a second longer, never forgotten early), oldest first
    seen_ids: bytes = b""
    seen_times: tuple[int, ...] = ()
    # rule name -> [rule_version, detector state]; a changed rule starts from a fresh state
    rules: Mapping[str, Any] = field(default_factory=dict)
    profile: Mapping[str, Any] | None = None
    partition: int | None = None
    # context: recent events [time, type, detail], newest last; open orders by id; this
    # customer's open exceptions by id {rule, status, subject}
    recent: tuple[tuple[float, str, str], ...] = ()
    orders: Mapping[str, Any] = field(default_factory=dict)
    open: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self, compress: bool = True) -> bytes:
        """Serialise for the table (version 5, `_write_v5`), compressed unless `compress` is
        false (`pipeline.compress_state`; `from_bytes` reads both). Remembered ids' times are
        kept to the second (rounded to keep them longer), everything else exactly; parts read
        from the table and not changed are written back as they came."""
        return _write_v5(self, compress)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> CustomerState:
        """Read a table value; `None` (a new customer) is the empty state. Reads versions 1-4."""
        if not data:
            return cls()
        if data[:1] == _V5:
            return _read_v5(data)
        raw = orjson.loads(_decompress(data) if data[:4] == _ZSTD else data)
        if not isinstance(raw, dict):
            raise ValueError(f"a customer state is a JSON object, not {type(raw).__name__}")
        recent = raw.get("recent")  # versions 1-3: [[time, type, detail], ...]
        ids, times = _unpack_seen(raw.get("seen"), raw.get("sn"))
        return cls(
            seen_ids=ids,
            seen_times=times,
            rules=raw.get("rules") or {},
            profile=raw.get("profile"),
            partition=raw.get("p"),
            recent=(
                tuple((t, k, d) for t, k, d in recent)
                if recent
                else _unpack_recent(raw["r"])
                if "r" in raw
                else ()
            ),
            orders=raw.get("orders") or {},
            open=raw.get("open") or {},
        )

    @property
    def seen(self) -> tuple[tuple[bytes, int], ...]:
        """The remembered ids as (digest, time) pairs, oldest first (for inspection)."""
        ids = self.seen_ids
        return tuple((ids[8 * i : 8 * i + 8], t) for i, t in enumerate(self.seen_times))

    def remember(
        self, event_id: str, at: float, window: timedelta, max_ids: int
    ) -> CustomerState | None:
        """The state with `event_id` remembered, or `None` when it was seen already.

        Ids older than `window` before the newest one, and beyond `max_ids`, are forgotten.
        The new id goes after every id of its time or earlier (it is kept to the second,
        rounded up); the times stay in order, so both bounds cut a prefix.
        """
        key = digest(event_id)
        ids, times = self.seen_ids, self.seen_times
        if _find(ids, key):
            return None
        newest = max(at, times[-1]) if times else at
        first = bisect_left(times, newest - window.total_seconds())
        at_ = max(first, bisect_right(times, at))  # an id older than the window goes first
        kept_times = (*times[first:at_], ceil(at), *times[at_:])[-max_ids:]
        kept_ids = (ids[8 * first : 8 * at_] + key + ids[8 * at_ :])[-8 * max_ids :]
        return CustomerState(
            kept_ids,
            kept_times,
            self.rules,
            self.profile,
            self.partition,
            self.recent,
            self.orders,
            self.open,
        )
