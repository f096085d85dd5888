"""Per-customer state kept in the `customers` table: versioned, small, never mutated in place.

It holds the event ids seen recently (64-bit digests with their event time, so a repeated
`event_id` is recognised without storing ids of up to 128 characters), each rule's detector
state tagged with the rule's version, the customer's latest profile, recent events, open orders
and open exceptions for context, and the partition that owns the customer (so the deadline
index can be rebuilt after a rebalance).

Stored (version 5) as MessagePack (the fields in order, no keys: `_write_v5`) compressed with
Zstandard (`pipeline.compress_state`, default true): msgspec reads and writes it in C straight
into the state's tuples and bytes, so an event pays no Python-level packing; zstd shrinks the
repeated type names, categories and keys. Remembered ids are 8-byte digests packed together
and their times in whole seconds (rounded up). Versions 1-4 (JSON, version 4 compressed) are
read too, so a worker upgraded in place keeps its changelog.

Bound (docs/detectors.md, "State"): at most `dedupe_max_ids` digests, one profile, 20 recent
events, 20 open orders, 20 open exceptions, and per rule what its detector keeps (see each
detector's module docstring).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from datetime import timedelta
from math import ceil
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import orjson
import zstandard

VERSION = 5  # 5: MessagePack, zstd-compressed; 4 (compact JSON, compressed), 3, 2, 1 are read
_V5 = b"\x05"  # the first byte of a version 5 body; a JSON body (versions 1-4) starts with "{"
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
    body = _decompress(data) if data[:4] == _ZSTD else data
    if body[:1] == _V5:
        state = _read_v5(body)
        newest, seen = (
            _pack_seen(state.seen_ids, state.seen_times) if state.seen_times else (None, None)
        )
        parts = {
            "sn": newest,
            "seen": seen,
            "rules": state.rules,
            "profile": state.profile,
            "p": state.partition,
            "r": _pack_recent(state.recent) if state.recent else None,
            "orders": state.orders,
            "open": state.open,
        }
        return {"v": 5, **{k: v for k, v in parts.items() if v or v == 0}}
    raw = orjson.loads(body)
    if not isinstance(raw, dict):
        raise ValueError(f"a customer state is a JSON object, not {type(raw).__name__}")
    return raw


# Version 5 as MessagePack: an array of the state's fields in this order, no keys: seen_ids
# (bytes), seen_times [int], rules {name: [version, state]}, profile ({...} or None), partition
# (int or None), then the recent events as three columns: times [float], kinds [int or str:
# `_TYPES` codes, names for types not listed], details [str]; then orders {...}, open {...}.
# msgspec reads and writes it in C, untyped (a typed decoder checks every field and costs half
# as much again).


def _unsupported(value: Any) -> Any:
    if isinstance(value, MappingProxyType):  # a new state's shared empty mapping (`_NONE`)
        return dict(value)
    raise TypeError(f"a customer state cannot hold a {type(value).__name__}")


_encode = msgspec.msgpack.Encoder(enc_hook=_unsupported).encode
_decode = msgspec.msgpack.Decoder().decode


def _write_v5(state: CustomerState) -> bytes:
    times, kinds, details = zip(*state.recent, strict=True) if state.recent else ((), (), ())
    codes: list[Any] = list(map(_TYPE_CODE.get, kinds))
    if None in codes:  # a type not listed: kept by name
        codes = [_TYPE_CODE.get(k, k) for k in kinds]
    return _V5 + _encode(
        (
            state.seen_ids,
            state.seen_times,
            state.rules,
            state.profile,
            state.partition,
            times,
            codes,
            details,
            state.orders,
            state.open,
        )
    )


def _read_v5(body: bytes) -> CustomerState:
    ids, seen_times, rules, profile, partition, times, codes, details, orders, open_ = _decode(
        memoryview(body)[1:]
    )
    try:
        kinds = list(map(_TYPES.__getitem__, codes))
    except TypeError:  # a type not listed, by name
        kinds = [_TYPES[k] if k.__class__ is int else k for k in codes]
    return CustomerState(
        ids,
        tuple(seen_times),
        rules,
        profile,
        partition,
        tuple(zip(times, kinds, details, strict=True)),
        orders,
        open_,
    )


_NONE: Mapping[str, Any] = MappingProxyType({})  # the empty mapping every new state shares


class CustomerState(NamedTuple):
    """Everything Casewatch remembers about one customer. Never changed in place: a new state
    is made (`_replace`) on every event; a named tuple, as a frozen dataclass costs several
    times more to make."""

    # remembered event ids: 8-byte digests packed together, and their times in whole seconds
    # (rounded up: an id is kept at most a second longer, never forgotten early), oldest first
    seen_ids: bytes = b""
    seen_times: tuple[int, ...] = ()
    # rule name -> [rule_version, detector state]; a changed rule starts from a fresh state
    rules: Mapping[str, Any] = _NONE
    profile: Mapping[str, Any] | None = None
    partition: int | None = None
    # context: recent events [time, type, detail], newest last; open orders by id; this
    # customer's open exceptions by id {rule, status, subject}
    recent: tuple[tuple[float, str, str], ...] = ()
    orders: Mapping[str, Any] = _NONE
    open: Mapping[str, Any] = _NONE

    def to_bytes(self, compress: bool = True) -> bytes:
        """Serialise for the table (version 5, `_write_v5`), compressed unless `compress` is
        false (`pipeline.compress_state`; `from_bytes` reads both). Remembered ids' times are
        kept to the second (rounded to keep them longer), everything else exactly."""
        text = _write_v5(self)
        # python-zstandard's output keeps the buffer it wrote into, larger than the frame
        # (as orjson's does, kept_json): the table keeps a copy of the right size.
        return bytes(memoryview(_compress(text))) if compress else text

    @classmethod
    def from_bytes(cls, data: bytes | None) -> CustomerState:
        """Read a table value; `None` (a new customer) is the empty state. Reads versions 1-5."""
        if not data:
            return cls()
        body = _decompress(data) if data[:4] == _ZSTD else data
        if body[:1] == _V5:
            return _read_v5(body)
        raw = orjson.loads(body)
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
        if not times or times[-1] <= at:  # in order, as almost always: appended
            kept_times = (*times[first:], ceil(at))[-max_ids:]
            kept_ids = (ids[8 * first :] + key)[-8 * max_ids :]
        else:
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
