"""`casewatch report` on a real broker, run as a user runs it: it reads the exception log from
the topic's beginning to its end, with no consumer group, and says what recurs."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.core.models import ExceptionRecord

pytestmark = pytest.mark.integration

# `casewatch report` through the parser add_parser registers, as cli.py does.
ENTRY = (
    "import argparse, sys; from pipeline.tools.report import report; "
    "p = argparse.ArgumentParser(prog='casewatch'); report.add_parser(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)
T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)


def record(exception_id: str, status: str, hours: float, **fields: Any) -> bytes:
    at = T0 + timedelta(hours=hours)
    data = {
        "exception_id": exception_id,
        "rule": "repeat_maintenance",
        "kind": "threshold",
        "status": status,
        "severity": "medium",
        "customer_id": "c-faucet",
        "subject": {"asset_id": "unit-12/kitchen-faucet"},
        "event_time": at,
        "detected_at": at,
        "evidence": ["e-1", "e-2"],
        "route": {"handler": "maintenance", "path": "root/maintenance", "reason": "normal"},
        "rule_version": "v1",
    } | fields
    return orjson.dumps(ExceptionRecord.model_validate(data).model_dump(mode="json"))


# The faucet leaks, is fixed in 5 h, leaks again (a reopen); one record delivered twice; a
# delivery failure for another customer; and a message that is not an exception record.
LOG = [
    record("x1", "open", 0),
    record("x1", "resolved", 5),
    record("x1", "resolved", 5),
    record("x2", "open", 48),
    b"not a record",
]
OTHER = [
    record(
        "y1",
        "open",
        1,
        rule="delivery_failed",
        kind="match",
        customer_id="c-2",
        subject={"order_id": "o-9", "event_id": "e-9"},
        route={"handler": "logistics", "path": "root/logistics", "reason": "normal"},
    )
]


async def publish(bootstrap: str, topics: dict[str, list[bytes]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, values in topics.items():
            for value in values:
                key = b"c-2" if b'"c-2"' in value else b"c-faucet"
                await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def report(bootstrap: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "report", *argv],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=90,
    )


def cells(out: str, first: str) -> list[str]:
    rows = [line.strip() for line in out.splitlines() if line.strip().startswith(first + " ")]
    assert rows, out
    return re.split(r"\s{2,}", rows[0])


def test_report_reads_the_config_exceptions_topic_by_default(
    bootstrap: str, unique: str, config_file: Path, tmp_path: Path
) -> None:
    asyncio.run(publish(bootstrap, {f"{unique}.exceptions": LOG}))
    page = tmp_path / "report.html"
    done = report(bootstrap, "--config", str(config_file), "--html", str(page))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"input: Kafka {unique}.exceptions at {bootstrap} (5 messages)" in out
    assert "exceptions: 2, records: 3, duplicates dropped: 1, invalid skipped: 1" in out
    assert "reopen rate (1 / 1 keys resolved): 100%" in out
    assert cells(out, "unit-12/kitchen-faucet")[:2] == ["unit-12/kitchen-faucet", "2"]
    assert cells(out, "maintenance")[:5] == ["maintenance", "1", "5h00m", "5h00m", "5h00m"]
    assert re.search(rf"{unique}\.exceptions:\d:4: skipped: not JSON", done.stderr)
    assert "unit-12/kitchen-faucet" in page.read_text()


def test_report_reads_every_topic_given(bootstrap: str, unique: str) -> None:
    topics = {f"{unique}.a": LOG, f"{unique}.b": OTHER}
    asyncio.run(publish(bootstrap, topics))
    done = report(bootstrap, "--topic", f"{unique}.a", "--topic", f"{unique}.b")
    assert done.returncode == 0, done.stderr
    assert "exceptions: 3, records: 4" in done.stdout
    assert cells(done.stdout, "delivery_failed")[:3] == ["delivery_failed", "1", "1"]


def test_a_missing_or_empty_topic_is_one_line_and_exit_1(bootstrap: str, unique: str) -> None:
    done = report(bootstrap, "--topic", f"{unique}.nope")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"casewatch: report: topic {unique}.nope does not exist on Kafka at {bootstrap}\n"
    )
    asyncio.run(publish(bootstrap, {f"{unique}.empty": []}))
    done = report(bootstrap, "--topic", f"{unique}.empty")
    assert done.returncode == 1
    assert done.stderr == (
        f"casewatch: report: no exception records in Kafka {unique}.empty at {bootstrap} "
        "(0 messages)\n"
    )
