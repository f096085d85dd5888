"""A worker upgraded in place reads the states its changelog holds, whatever version wrote them,
and finds what it would have found; a state stored today stays readable (state version 6 and
its dictionary, pipeline/core/state6.zdict, never change)."""

from __future__ import annotations

import hashlib
import io
import random
from datetime import timedelta

import msgspec
import zstandard

from bench import workload
from pipeline.config import load_config
from pipeline.core.state import DICTIONARY, VERSION, CustomerState, plain
from pipeline.tools.replay import Replay

# Version 5's recent event type codes (append only; versions 4-6 share them).
V5_CODES = {
    t: i
    for i, t in enumerate(
        (
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
    )
}


def as_version_5(state: CustomerState, compress: bool = True) -> bytes:
    """A state as version 5 stored it: a byte 5, then MessagePack of the fields in order
    (remembered times as they are, recent events as three columns with types as codes), in a
    plain Zstandard frame unless `compress` is false."""
    times, kinds, details = zip(*state.recent, strict=True) if state.recent else ((), (), ())
    fields = (
        state.seen_ids,
        state.seen_times,
        dict(state.rules),
        state.profile,
        state.partition,
        times,
        [V5_CODES.get(k, k) for k in kinds],
        details,
        dict(state.orders),
        dict(state.open),
    )
    body = b"\x05" + msgspec.msgpack.encode(fields)
    return zstandard.ZstdCompressor().compress(body) if compress else body


def _sample() -> CustomerState:
    return CustomerState(
        seen_ids=b"".join(
            hashlib.blake2b(f"e-{i}".encode(), digest_size=8).digest() for i in range(3)
        ),
        seen_times=(1764745201, 1764748801, 1764752401),
        rules={
            "repeated_contact": [
                "1cafeee38a9b",
                {
                    "billing/refund": {
                        "e": [[1764745200.25, "e-0"], [1764748800.5, "e-1"]],
                        "q": None,
                    }
                },
            ],
            "missing_delivery": ["f89134945b11", {"o-1": {"x": 1764752400.75}}],
        },
        profile={"tier": "gold", "name": "Ana", "occurred_at": "2025-12-03T06:00:00+00:00"},
        partition=4,
        recent=(
            (1764745200.25, "interaction.contact", "billing/refund"),
            (1764748800.5, "interaction.contact", "billing/refund"),
            (1764752400.75, "a.later.type", "o-1"),  # a type without a code: kept by name
        ),
        orders={"o-2": {"status": "placed", "value": {"amount": "1.50", "currency": "EUR"}}},
        open={
            "x1": {
                "rule": "repeated_contact",
                "status": "open",
                "subject": {"category": "billing/refund"},
            }
        },
    )


# `_sample()` as the version 5 code wrote it (compressed, its default).
STORED_BY_V5 = bytes.fromhex(
    "28b52ffd60b5002d0b001414059ac418e7fa09ff450555eb317386494bf10d9f0706c581494c583e93ce692fdf"
    "f1ce692fee01ce692ffc1182b072657065617465645f636f6e7461637492ac31636166656565333861396281ae"
    "62696c6c696e672f726566756e6482a1659292cb41da4bf7fc100000a3652d30fb802031a171c0b06d69737369"
    "6e675f64656c697665727992ac66383931333439343562313181a36f2d3181a178cb41da4bff0430000083a474"
    "696572a4676f6c64a46e616d65a3416e61ab6f636375727265645f6174b9323032352d31322d30335430363a30"
    "303a30302b0493930000ac612e6c617465722e7479706593a36f2d3282a6737461747573a6706c61636564a576"
    "616c756582a6616d6f756e74a4312e3530a863757272656e6379a345555281a2783183a472756c65a46f70656e"
    "a77375626a65637481a863617465676f72790c0007d69b890c74d34ec81821643ab0f97db52880b0021aa6304d"
    "b9039a73439851"
)


def test_a_state_stored_by_version_5_reads_the_same_and_is_written_back_as_version_6() -> None:
    """The bytes the version 5 code stored, compressed or not: every part reads as it was
    written, ids already seen are still recognised, and the next write is version 6."""
    expected = _sample()
    body = zstandard.ZstdDecompressor().decompress(STORED_BY_V5)
    assert body == as_version_5(expected, compress=False)  # the helper writes what version 5 did
    for stored in (STORED_BY_V5, body):
        state = CustomerState.from_bytes(stored)
        assert state == expected
        assert plain(stored)["v"] == 5
        assert state.remember("e-1", 1764752401.0, timedelta(days=7), 256) is None
        again = state.to_bytes()
        assert plain(again)["v"] == VERSION
        assert CustomerState.from_bytes(again) == expected


# `_sample()` as version 6 stores it (compressed with the dictionary).
STORED_BY_V6 = bytes.fromhex(
    "8660b0000d0700740a9ac418e7fa09ff450555eb317386494bf10d9f0706c581494c583e93ce692fdff1cd0e10"
    "cd0e108281924bf7fc100000a3652d3092cb41da4bfb802081a36f2d4bff0430000083a4676f6c64a46e616d65"
    "a3416e61b9323032352d31322d30335430363a0493930000ac612e6c617465722e7479706593a36f2d3282a670"
    "6c61636564a576616c756582a6616d6f756e74a4312e3530a863757272656e6379a345555281a2783114fc8304"
    "00306544edd0e36764413ea84da935bd88faa8f12a1a49a579004cb2a066d36fbdc147734275e64f9cde4fc320"
    "2082bb3a98fe03"
)


def test_a_state_stored_by_version_6_stays_readable() -> None:
    """What a worker stores today reads the same after any later change: the layout and the
    dictionary it is compressed with (whose bytes are pinned here) are version 6's for good."""
    pinned = "8a514cde72923ae68dfdd70326fb5ba5b5e8283e1622ddc865fbdd76c3422296"
    assert hashlib.sha256(DICTIONARY.read_bytes()).hexdigest() == pinned
    assert CustomerState.from_bytes(STORED_BY_V6) == _sample()
    assert plain(STORED_BY_V6)["v"] == 6


def test_a_state_that_does_not_shrink_is_stored_as_it_is_and_reads_back() -> None:
    """Compressing only pays when the result is smaller: a new customer's state (one id) and
    a state of incompressible parts are stored uncompressed, and read back the same."""
    new = CustomerState().remember("e-1", 1764745200.0, timedelta(days=7), 256)
    assert new is not None
    noise = CustomerState(seen_ids=random.Random(7).randbytes(8 * 200))
    for state in (new, noise):
        stored = state.to_bytes()
        assert stored == state.to_bytes(compress=False)
        assert CustomerState.from_bytes(stored) == state
    assert len(new.to_bytes()) < 32


def test_a_worker_upgraded_in_place_finds_the_same_records() -> None:
    """Three model days of the benchmark's workload, the states stored as version 5 halfway
    (as a worker upgraded then would read its changelog): the same exception records, byte
    for byte, as a replay that never saw version 5; every state it then writes is version 6."""
    days, customers = 3, 150
    msgs = workload.build(
        customers, customers * 3 * days, 1_770_000_000.0, days * 86400.0, "up", seed=9
    )
    lines = [m.value for m in msgs]
    half = len(lines) // 2
    straight, upgraded = (Replay(load_config(), errors=io.StringIO()) for _ in range(2))
    ours = [*straight.feed(lines), *straight.finish()]
    theirs = list(upgraded.feed(lines[:half]))
    old = {c: as_version_5(CustomerState.from_bytes(v)) for c, v in upgraded.states.items()}
    assert len(old) > 100
    upgraded.states.update(old)
    theirs += [*upgraded.feed(lines[half:]), *upgraded.finish()]
    assert len(ours) > 10
    assert [r.model_dump_json() for r in theirs] == [r.model_dump_json() for r in ours]
    rewritten = [v for c, v in upgraded.states.items() if v != old.get(c)]
    assert rewritten
    assert all(plain(v)["v"] == VERSION for v in rewritten)
