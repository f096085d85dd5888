"""Customer states as versions 1-5 stored them, read only: a worker upgraded in place keeps its
changelog, and each state is written as the current version (pipeline/core/state.py) when its
customer's next event comes.

- 1, 2: JSON; remembered ids as `[[hex digest, time], ...]`, recent events as rows.
- 3: JSON; the ids packed as base64 of (8-byte digest, float time) pairs.
- 4: compact JSON compressed with Zstandard (a plain frame): the digests then each id's age
  before the newest time ("sn"), recent events as columns ("r").
- 5: MessagePack (msgspec), a byte 5 then the fields in order, usually in a plain Zstandard
  frame: seen ids, seen times, rules, profile, partition, recent times, recent types (codes or
  names), recent details, orders, open.
"""

from __future__ import annotations

import base64
import struct
from math import ceil
from typing import Any

import msgspec
import orjson
import zstandard

# What `read` gives: the state's fields in `CustomerState` order, recent events as three
# columns (times, types as codes or names, details).
Fields = tuple[Any, ...]

_ZSTD = b"\x28\xb5\x2f\xfd"  # a Zstandard frame's magic number; plain JSON starts with "{"
_V5 = b"\x05"  # the first byte of a version 5 body; a JSON body (versions 1-4) starts with "{"
_SEEN3 = struct.Struct("<8sd")  # version 3: digest, event time (the float itself)
_decompress = zstandard.ZstdDecompressor().decompress
_decode = msgspec.msgpack.Decoder().decode


def body(data: bytes) -> bytes:
    """The value without its zstd frame (versions 4 and 5 are usually compressed)."""
    return _decompress(data) if data[:4] == _ZSTD else data


def read(data: bytes) -> tuple[int, Fields]:
    """The version and the fields of a stored value of versions 1-5."""
    raw = body(data)
    if raw[:1] == _V5:
        ids, times, rules, profile, partition, *recent, orders, open_ = _decode(memoryview(raw)[1:])
        return 5, (ids, tuple(times), rules, profile, partition, recent, orders, open_)
    saved = as_json(raw)
    rows = saved.get("recent")  # versions 1-3: [[time, type, detail], ...]
    recent = (
        [list(column) for column in zip(*rows, strict=True)]
        if rows
        else saved.get("r") or [[], [], []]
    )
    ids, seen_times = _unpack_seen(saved.get("seen"), saved.get("sn"))
    fields = (
        ids,
        seen_times,
        saved.get("rules") or {},
        saved.get("profile"),
        saved.get("p"),
        recent,
        saved.get("orders") or {},
        saved.get("open") or {},
    )
    return int(saved.get("v", 1)), fields


def as_json(raw: bytes) -> dict[str, Any]:
    """A JSON body (versions 1-4) as it was stored."""
    saved = orjson.loads(raw)
    if not isinstance(saved, dict):
        raise ValueError(f"a customer state is a JSON object, not {type(saved).__name__}")
    return saved


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
