"""Per-customer state kept in the `customers` table: versioned, small, never mutated in place.

It holds the event ids seen recently (64-bit digests with their event time, so a repeated
`event_id` is recognised without storing ids of up to 128 characters), each rule's detector
state tagged with the rule's version, the customer's latest profile, recent events, open orders
and open exceptions for context, and the partition that owns the customer (so the deadline
index can be rebuilt after a rebalance).

Stored (version 6) as MessagePack (the fields in order, no keys: `_write`) compressed with
Zstandard and a dictionary trained on customer states (`pipeline.compress_state`, default
true): msgspec reads and writes it in C straight into the state's tuples and bytes, so an event
pays no Python-level packing; the dictionary holds what every state repeats (keys, rule names
and versions, the layout) and entropy tables fitted to states, which a state of a kilobyte is
too short to carry in its own frame. Remembered ids are 8-byte digests packed together and
their times in whole seconds (rounded up), each after the first as the gap from the one before.
Versions 1-5 are read too (`pipeline.core.earlier_states`), so a worker upgraded in place keeps
its changelog.

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
from itertools import accumulate
from math import ceil
from operator import sub
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import orjson
import zstandard

from pipeline.core import earlier_states

VERSION = 6  # 6: MessagePack, zstd with a dictionary; 5, 4, 3, 2, 1 are read (earlier_states)
# A version 6 value's first byte: the version, with the high bit set when the rest is a
# Zstandard frame (without its magic number) made with `DICTIONARY`; a value that would not
# shrink is kept as it is. No earlier version starts with either byte.
_V6, _V6Z = 0x06, 0x86
_HEAD, _HEAD_Z = bytes((_V6,)), bytes((_V6Z,))
# The dictionary every version 6 state is compressed with (`bench/state_dict.py` made it):
# a stored state cannot be read without the very bytes it was written with, so this file never
# changes; another dictionary would be another version.
DICTIONARY = Path(__file__).with_name("state6.zdict")
_AGE_MAX = 2**32 - 1
# One compressor and one decompressor per process: the worker and the replay use them from one
# thread (the event loop). Zstandard's fastest strategy with small tables: a 4 KiB window and
# 4 KiB of hash table instead of level 1's 64 KiB, which the rest of the worker's work evicts
# from the CPU caches between two states. The dictionary's content is matched as if it came
# before the state, and its entropy tables serve a state's frame, too short to pay for its own.
_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=12,
    hash_log=10,
    chain_log=10,
    search_log=1,
    min_match=5,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
    write_checksum=False,
    write_content_size=True,
    write_dict_id=False,
    format=zstandard.FORMAT_ZSTD1_MAGICLESS,
)
_DICT = zstandard.ZstdCompressionDict(
    DICTIONARY.read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT
)
_compress = zstandard.ZstdCompressor(dict_data=_DICT, compression_params=_PARAMS).compress
_decompress = zstandard.ZstdDecompressor(
    dict_data=_DICT, format=zstandard.FORMAT_ZSTD1_MAGICLESS
).decompress
# Event types in recent events, stored as their index here. Append only: a stored state names
# types by position (versions 4-6). Types not listed (a later contract's) are stored by name.
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
    """Version 4's packing, for `plain`: the newest time, and the digests then each id's age
    before it, digests and ages apart."""
    newest = times[-1]
    ages = list(map(newest.__sub__, times))
    if newest - times[0] > _AGE_MAX:  # an id 136 years older than the newest
        ages = [min(_AGE_MAX, a) for a in ages]
    return newest, base64.b64encode(ids + struct.pack(f"<{len(ages)}I", *ages)).decode()


def _find(ids: bytes, key: bytes) -> bool:
    """Whether the 8-byte `key` is one of the digests packed in `ids`."""
    i = ids.find(key)
    while i >= 0:
        if i % 8 == 0:
            return True
        i = ids.find(key, i + 1)
    return False


def plain(data: bytes) -> dict[str, Any]:
    """A stored state as a JSON object (any version), for measuring and inspecting:
    `{"v": 6, "seen": ..., "rules": ..., ...}`; a version 5 or 6 state is shown with version
    4's keys and packing (recent events as columns: times, type codes, details), an earlier
    one as it was stored."""
    if data[0] in (_V6, _V6Z):
        version, state = VERSION, CustomerState.from_bytes(data)
    else:
        version, fields = earlier_states.read(data)
        if version < 5:
            return earlier_states.as_json(earlier_states.body(data))
        state = _state(fields)
    newest, seen = (
        _pack_seen(state.seen_ids, state.seen_times) if state.seen_times else (None, None)
    )
    times, kinds, details = zip(*state.recent, strict=True) if state.recent else ((), (), ())
    parts = {
        "sn": newest,
        "seen": seen,
        "rules": state.rules,
        "profile": state.profile,
        "p": state.partition,
        "r": [times, [_TYPE_CODE.get(k, k) for k in kinds], details] if times else None,
        "orders": state.orders,
        "open": state.open,
    }
    return {"v": version, **{k: v for k, v in parts.items() if v or v == 0}}


# Version 6 as MessagePack: an array of the state's fields in this order, no keys: seen_ids
# (bytes), seen times [int: the first, then each one's gap from the one before], rules {name:
# [version, state]}, profile ({...} or None), partition (int or None), then the recent events
# as three columns: times [float], kinds [int or str: `_TYPES` codes, names for types not
# listed], details [str]; then orders {...}, open {...}. msgspec reads and writes it in C,
# untyped (a typed decoder checks every field and costs half as much again).


def _unsupported(value: Any) -> Any:
    if isinstance(value, MappingProxyType):  # a new state's shared empty mapping (`_NONE`)
        return dict(value)
    raise TypeError(f"a customer state cannot hold a {type(value).__name__}")


_encode = msgspec.msgpack.Encoder(enc_hook=_unsupported).encode
_decode = msgspec.msgpack.Decoder().decode


def _write(state: CustomerState) -> bytes:
    times, kinds, details = zip(*state.recent, strict=True) if state.recent else ((), (), ())
    codes: list[Any] = list(map(_TYPE_CODE.get, kinds))
    if None in codes:  # a type not listed: kept by name
        codes = [_TYPE_CODE.get(k, k) for k in kinds]
    seen = state.seen_times
    rules, orders, open_ = state.rules, state.orders, state.open
    return _encode(
        (
            state.seen_ids,
            (seen[0], *map(sub, seen[1:], seen)) if seen else seen,
            # a new state's shared empty mapping as an empty dict: msgspec would call
            # `_unsupported` for it, which costs more than the rest of a small state's write
            _EMPTY if rules is _NONE else rules,
            state.profile,
            state.partition,
            times,
            codes,
            details,
            _EMPTY if orders is _NONE else orders,
            _EMPTY if open_ is _NONE else open_,
        )
    )


# Reading lazily (`CustomerState.from_bytes(data, lazy=True)`, the processor's reads): the
# profile, open orders, open exceptions and each rule's detector state stay MessagePack
# (`msgspec.Raw`, no copy) until something reads them (`load`), and a section nobody changed
# is written back as the very bytes it was read from. An event touches the rules of its type
# and the sections its type changes; the rest of a customer's state is not turned into Python
# objects and back.
_decode_lazy = msgspec.msgpack.Decoder(
    tuple[
        bytes,
        Any,
        dict[str, tuple[Any, msgspec.Raw]],
        msgspec.Raw,
        Any,
        Any,
        Any,
        Any,
        msgspec.Raw,
        msgspec.Raw,
    ]
).decode
_Raw = msgspec.Raw
# A part of a state that may still be MessagePack (read lazily): `load` it to read it.
Section = Mapping[str, Any] | msgspec.Raw


def load(section: Any) -> Any:
    """A section of a state read lazily, decoded; any other value as it is."""
    return _decode(section) if section.__class__ is _Raw else section


def _read(body: bytes | memoryview, lazy: bool = False) -> CustomerState:
    try:
        fields = _decode_lazy(body) if lazy else _decode(body)
    except msgspec.ValidationError:  # read lazily, a rule's entry of another shape: read it all
        fields = _decode(body)
    ids, gaps, rules, profile, partition, times, codes, details, orders, open_ = fields
    return new_state(
        CustomerState,
        (
            ids,
            tuple(accumulate(gaps)),
            rules,
            None if profile == _NIL else profile,  # nil read lazily
            partition,
            _recent(times, codes, details),
            orders,
            open_,
        ),
    )


def _recent(
    times: list[float], codes: list[Any], details: list[str]
) -> tuple[tuple[float, str, str], ...]:
    """Recent events from their three stored columns; types from their codes."""
    try:
        kinds = list(map(_TYPES.__getitem__, codes))
    except TypeError:  # a type not listed, by name
        kinds = [_TYPES[k] if k.__class__ is int else k for k in codes]
    return tuple(zip(times, kinds, details, strict=True))


def _state(fields: earlier_states.Fields) -> CustomerState:
    """A state from the fields an earlier version stored."""
    ids, times, rules, profile, partition, recent, orders, open_ = fields
    return CustomerState(ids, times, rules, profile, partition, _recent(*recent), orders, open_)


# A state made from its fields in order, every one given: the named tuple's own constructor
# (a Python function, for its keywords and defaults) costs twice as much, on every event.
new_state = tuple.__new__  # new_state(CustomerState, (seen_ids, ..., open))
_NONE: Mapping[str, Any] = MappingProxyType({})  # the empty mapping every new state shares
_EMPTY: dict[str, Any] = {}  # written for it (never changed)
_NIL = msgspec.Raw(b"\xc0")  # MessagePack's nil: a state with no profile


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
    # profile, orders and open (and each rule's detector state) are `msgspec.Raw` in a state
    # read lazily until `load`ed
    profile: Section | None = None
    partition: int | None = None
    # context: recent events [time, type, detail], newest last; open orders by id; this
    # customer's open exceptions by id {rule, status, subject}
    recent: tuple[tuple[float, str, str], ...] = ()
    orders: Section = _NONE
    open: Section = _NONE

    def to_bytes(self, compress: bool = True) -> bytes:
        """Serialise for the table (version 6, `_write`), compressed unless `compress` is
        false (`pipeline.compress_state`; `from_bytes` reads both) or compressing would not
        make it smaller. Remembered ids' times are kept to the second (rounded to keep them
        longer), everything else exactly."""
        body = _write(self)
        if compress:
            packed = _compress(body)
            if len(packed) < len(body):
                # a new bytes of the right size: python-zstandard's output keeps the larger
                # buffer it wrote into (as orjson's does, kept_json)
                return _HEAD_Z + packed
        return _HEAD + body

    @classmethod
    def from_bytes(cls, data: bytes | None, lazy: bool = False) -> CustomerState:
        """Read a table value; `None` (a new customer) is the empty state. Reads versions 1-6.
        `lazy`: a version 6 state's profile, orders, open exceptions and rule states are left
        as MessagePack until `load`ed."""
        if not data:
            return cls()
        head = data[0]
        if head == _V6Z:
            return _read(_decompress(memoryview(data)[1:]), lazy)
        if head == _V6:
            return _read(memoryview(data)[1:], lazy)
        return _state(earlier_states.read(data)[1])

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
        return new_state(
            CustomerState,
            (
                kept_ids,
                kept_times,
                self.rules,
                self.profile,
                self.partition,
                self.recent,
                self.orders,
                self.open,
            ),
        )
