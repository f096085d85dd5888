"""`casewatch handle` on a real broker, run as a user runs it: the table shows every exception
in its latest state, and an answer lands on the resolutions topic keyed by the customer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.config import Config, load_config
from pipeline.core.models import ExceptionRecord

pytestmark = pytest.mark.integration

# `casewatch handle` through the parser add_parser registers, as cli.py does.
ENTRY = (
    "import argparse, sys; from pipeline.tools.handle import handle; "
    "p = argparse.ArgumentParser(prog='casewatch'); handle.add_parser(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)
A = "a1" + "5" * 30
B = "a2" + "6" * 30
T0 = datetime.now(UTC) - timedelta(hours=1)


def record(exception_id: str, customer: str, status: str, **fields: Any) -> ExceptionRecord:
    return ExceptionRecord.model_validate(
        {
            "exception_id": exception_id,
            "rule": "missing_delivery",
            "kind": "absence",
            "status": status,
            "severity": "high",
            "customer_id": customer,
            "subject": {"order_id": f"o-{customer}"},
            "event_time": T0,
            "detected_at": T0,
            "evidence": ["e-1"],
            "route": {"handler": "logistics", "path": "root", "reason": "normal"},
            "rule_version": "v1",
        }
        | fields
    )


@pytest.fixture
def config(config_file: Path, unique: str) -> Config:
    """The test's config, with handler topics of its own."""
    data = yaml.safe_load(config_file.read_text())
    data["topics"]["handler_prefix"] = f"{unique}.handler."
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(config_file)


def handle(
    config_file: Path, bootstrap: str, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "handle", *argv, "--config", str(config_file)],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
    )


async def create(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    finally:
        await admin.close()


async def publish(bootstrap: str, topic: str, records: list[ExceptionRecord]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in records:
            value = orjson.dumps(r.model_dump(mode="json", exclude_none=True))
            await producer.send_and_wait(topic, value, key=r.customer_id.encode())
    finally:
        await producer.stop()


async def everything_on(bootstrap: str, topic: str) -> list[Any]:
    """Every message on the topic now (up to its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        messages: list[Any] = []
        async with asyncio.timeout(30):
            while len(messages) < sum(ends.values()):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    messages.extend(batch)
        return messages
    finally:
        await consumer.stop()


@pytest.fixture
def handler_topic(config: Config, bootstrap: str) -> tuple[str, str]:
    """A handler whose topic holds A (opened, then escalated) and B (open)."""
    name = next(iter(config.handlers))
    topic = config.handler_topic(name)
    asyncio.run(create(bootstrap, topic, config.topics.resolutions))
    profile = {"profile": {"tier": "gold", "name": "Ada Lovelace"}}
    asyncio.run(
        publish(
            bootstrap,
            topic,
            [
                record(A, "c-1", "open", context=profile),
                record(B, "c-2", "open"),
                record(A, "c-1", "escalated", context=profile),
            ],
        )
    )
    return name, topic


def row(output: str, exception_id: str) -> str:
    rows = [line for line in output.splitlines() if exception_id[:8] in line]
    assert len(rows) == 1, output
    return rows[0]


def test_once_shows_every_exception_in_its_latest_state(
    config_file: Path, bootstrap: str, handler_topic: tuple[str, str]
) -> None:
    name, topic = handler_topic
    result = handle(config_file, bootstrap, name, "--once")
    assert result.returncode == 0, result.stderr
    assert f"{name} · {topic} · 2 open, 0 handed on, 0 resolved" in result.stdout
    a, b = row(result.stdout, A), row(result.stdout, B)
    assert " escalated " in a
    assert " open " not in a
    assert "c-1 (gold, Ada Lovelace)" in a
    assert " open " in b
    assert "order_id=o-c-2" in b


def test_resolve_by_prefix_publishes_a_resolution_keyed_by_the_customer(
    config: Config, config_file: Path, bootstrap: str, handler_topic: tuple[str, str]
) -> None:
    name, topic = handler_topic
    ambiguous = handle(config_file, bootstrap, name, "--ack", "a")
    assert ambiguous.returncode == 1
    assert f"'a' matches 2 exceptions on {topic}" in ambiguous.stderr
    unknown = handle(config_file, bootstrap, name, "--ack", "ff")
    assert unknown.returncode == 1
    assert f"no exception 'ff' on {topic}" in unknown.stderr

    result = handle(config_file, bootstrap, name, "--resolve", A[:5], "--note", "parcel found")
    assert result.returncode == 0, result.stderr
    assert f"published to {config.topics.resolutions} (key c-1)" in result.stdout

    [message] = asyncio.run(everything_on(bootstrap, config.topics.resolutions))
    assert message.key == b"c-1"
    sent = orjson.loads(message.value)
    assert {k: sent[k] for k in ("exception_id", "handler", "status", "note")} == {
        "exception_id": A,
        "handler": name,
        "status": "resolved",
        "note": "parcel found",
    }
    assert datetime.fromisoformat(sent["at"]) > T0


def test_live_view_publishes_what_is_typed_and_quits_on_q(
    config: Config, config_file: Path, bootstrap: str, handler_topic: tuple[str, str]
) -> None:
    name, _ = handler_topic
    result = handle(config_file, bootstrap, name, stdin="x a2 carrier's problem\nq\n")
    assert result.returncode == 0, result.stderr
    assert "reassigned #" in result.stdout

    [message] = asyncio.run(everything_on(bootstrap, config.topics.resolutions))
    assert message.key == b"c-2"
    sent = orjson.loads(message.value)
    assert (sent["exception_id"], sent["status"]) == (B, "reassigned")
    assert sent["note"] == "carrier's problem"


def test_a_handler_topic_that_does_not_exist_is_named(
    config: Config, config_file: Path, bootstrap: str
) -> None:
    name = next(iter(config.handlers))
    result = handle(config_file, bootstrap, name, "--once")
    assert result.returncode == 1
    assert f"topic {config.handler_topic(name)} does not exist" in result.stderr
