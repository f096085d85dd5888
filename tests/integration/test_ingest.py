"""A live worker on a real broker: bad input of every kind lands on the dead-letter topic with
its original bytes and the contract's headers; every valid event is processed; nothing stalls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.core.models import DeadLetter
from tests.integration.workers import lag, run_worker, wait_for

pytestmark = pytest.mark.integration

T = "2026-03-01T10:00:00Z"


def event(n: int, **fields: Any) -> dict[str, Any]:
    base = {
        "event_id": f"e-{n}",
        "type": "interaction.contact",
        "occurred_at": T,
        "customer_id": f"c-{n % 7}",
        "channel": "call",
        "category": "billing",
    }
    return {k: v for k, v in {**base, **fields}.items() if v is not ...}


def order(n: int, **fields: Any) -> dict[str, Any]:
    base = {
        "type": "order.placed",
        "channel": ...,
        "category": ...,
        "order_id": f"o-{n}",
        "value": {"amount": "10.00", "currency": "EUR"},
    }
    return event(n, **{**base, **fields})


def dump(obj: Any) -> bytes:
    return orjson.dumps(obj)


# (name, expected error class, value); the key is the value's customer id where it has one.
BAD: list[tuple[str, str, bytes | None]] = [
    ("empty value", "empty_value", b""),
    ("null value", "empty_value", None),
    ("truncated JSON", "json_truncated", dump(event(1))[:-9]),
    ("not JSON", "json_invalid", b"customer called about modem"),
    ("invalid UTF-8", "not_utf8", b'{"event_id": "\xff\xfe"}'),
    ("JSON array", "not_object", dump([event(2)])),
    ("JSON string", "not_object", b'"interaction.contact"'),
    ("JSON number", "not_object", b"42"),
    ("JSON null", "not_object", b"null"),
    ("unknown type", "type_unknown", dump(event(3, type="interaction.telepathy"))),
    ("missing type", "type_missing", dump(event(4, type=...))),
    ("missing event_id", "field_missing", dump(event(5, event_id=...))),
    ("missing customer_id", "field_missing", dump(event(6, customer_id=...))),
    ("missing occurred_at", "field_missing", dump(event(7, occurred_at=...))),
    ("missing order_id", "field_missing", dump(order(8, order_id=...))),
    ("missing value", "field_missing", dump(order(9, value=...))),
    ("customer_id not a string", "wrong_type", dump(event(10, customer_id=12))),
    ("value not an object", "wrong_type", dump(order(11, value="10 EUR"))),
    (
        "timestamp without offset",
        "timestamp_no_offset",
        dump(event(12, occurred_at="2026-03-01T10:00:00")),
    ),
    ("impossible date", "timestamp_invalid", dump(event(13, occurred_at="2026-02-30T10:00:00Z"))),
    ("unix time", "timestamp_invalid", dump(event(14, occurred_at=1772359200))),
    ("bad promised_by", "timestamp_invalid", dump(order(15, promised_by="next week"))),
    ("negative amount", "field_invalid", dump(order(16, value={"amount": -1, "currency": "EUR"}))),
    ("NaN amount", "field_invalid", dump(order(17, value={"amount": "NaN", "currency": "EUR"}))),
    ("boolean amount", "field_invalid", dump(order(18, value={"amount": True, "currency": "EUR"}))),
    ("bad currency", "field_invalid", dump(order(19, value={"amount": 1, "currency": "euros"}))),
    (
        "unknown money field",
        "field_unknown",
        dump(order(20, value={"amount": 1, "currency": "EUR", "fx": 2})),
    ),
    ("empty customer_id", "field_invalid", dump(event(21, customer_id=""))),
    ("event_id too long", "field_invalid", dump(event(22, event_id="e" * 200))),
    ("unknown channel", "field_invalid", dump(event(23, channel="pigeon"))),
    ("bad sentiment", "field_invalid", dump(event(24, sentiment="furious"))),
    ("transferred not a boolean", "wrong_type", dump(event(25, transferred="maybe"))),
    ("attributes not an object", "wrong_type", dump(event(26, attributes=["vip"]))),
    ("deeply nested JSON", "json_too_deep", b'{"attributes":' * 400 + b"{}" + b"}" * 400),
    ("1 MB value", "too_large", dump(event(27, summary=..., attributes={"blob": "x" * 1_000_000}))),
]


def key_of(value: bytes | None) -> bytes | None:
    try:
        customer = orjson.loads(value or b"").get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return b"unkeyed"
    return customer.encode() if isinstance(customer, str) else b"unkeyed"


async def publish(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, count: int, seconds: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(seconds):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records.extend(batch)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


def test_bad_input_is_dead_lettered_and_valid_input_processed(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    interactions, orders, dlq = f"{unique}.interactions", f"{unique}.orders", f"{unique}.dlq"
    records: list[tuple[str, bytes | None, bytes | None]] = []
    valid = 0
    for i, (_, _, value) in enumerate(BAD):
        records.append((interactions, key_of(value), value))
        good = order(100 + i) if i % 2 else event(100 + i)
        records.append(
            (orders if i % 2 else interactions, good["customer_id"].encode(), dump(good))
        )
        valid += 1
    # Not bad: a repeated event_id is ignored and counted; unkeyed or mis-keyed events are re-keyed.
    records.append((interactions, event(102)["customer_id"].encode(), dump(event(102))))
    records.append((interactions, None, dump(event(300))))
    records.append((interactions, b"someone-else", dump(event(301))))
    records.append((interactions, None, b"{not json"))  # a null key is kept as it was
    valid += 2

    with run_worker(config_file, bootstrap, tmp_path) as worker:
        asyncio.run(publish(bootstrap, records))
        wait_for("every valid event", lambda: worker.metric("casewatch_events_total") >= valid)
        wait_for(
            "every dead letter",
            lambda: worker.metric("casewatch_dead_letters_total") >= len(BAD) + 1,
        )
        letters = asyncio.run(read_all(bootstrap, dlq, len(BAD) + 1))
        wait_for(
            "committed offsets to cover every message",
            lambda: asyncio.run(lag(bootstrap, unique, [interactions, orders])) == 0,
            60,
        )

        assert worker.proc.poll() is None, "the worker died"
        assert worker.metric("casewatch_events_total") == valid
        assert worker.metric("casewatch_duplicate_events_total") == 1
        assert worker.metric("casewatch_rekeyed_events_total") == 2

    assert len(letters) == len(BAD) + 1
    by_value = {(r.value, r.key): r for r in letters}
    for name, error_class, value in BAD:
        record = by_value.get((value, key_of(value)))
        assert record is not None, f"{name}: not on the dead-letter topic with its original bytes"
        letter = DeadLetter.from_headers(record.headers)
        assert letter.error_class == error_class, f"{name}: {letter.reason}"
        assert letter.topic == interactions
        assert len(letter.reason) > 20
    assert (b"{not json", None) in by_value
