"""Detectors against the real broker: a live worker and `casewatch replay` agree on the same
events; a deadline fires with no further input; a crash mid-scenario changes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.core.models import ExceptionRecord
from tests.integration import scenario
from tests.integration.workers import run_worker, wait_for

pytestmark = pytest.mark.integration

Key = tuple[str, str, str, str, str]  # exception_id, rule, status, customer, subject


def key(record: dict[str, Any]) -> Key:
    return (
        record["exception_id"],
        record["rule"],
        record["status"],
        record["customer_id"],
        json.dumps(record["subject"], sort_keys=True),
    )


def casewatch(*args: str, bootstrap: str = "") -> subprocess.CompletedProcess[str]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap} if bootstrap else {}
    import os

    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def replayed(events: Path, config: Path, until: datetime) -> list[dict[str, Any]]:
    out = casewatch("replay", str(events), "--config", str(config), "--until", until.isoformat())
    return [json.loads(line) for line in out.stdout.splitlines()]


async def collect(
    bootstrap: str, topic: str, expected: set[Key], seconds: float = 60, settle: float = 3
) -> list[dict[str, Any]]:
    """Every record on `topic` until `expected` has been seen, and `settle` seconds more (so a
    spurious extra record has time to show up)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + seconds
        settled_at: float | None = None
        while time.monotonic() < (settled_at or deadline):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(orjson.loads(m.value) for m in batch)
            if settled_at is None and expected <= {key(r) for r in records}:
                settled_at = time.monotonic() + settle
    finally:
        await consumer.stop()
    return records


def test_live_worker_and_replay_agree(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    now = scenario.now()
    events = scenario.write(tmp_path / "scenario.jsonl", scenario.build(now))
    with run_worker(config_file, bootstrap, tmp_path / "worker") as worker:
        casewatch("produce", str(events), "--config", str(config_file), bootstrap=bootstrap)
        expected = replayed(events, config_file, now)
        assert {r["rule"] for r in expected} == {
            "missing_delivery",
            "delivery_failed",
            "repeat_maintenance",
            "complaint_cluster",
            "repeated_contact",
        }
        live = asyncio.run(collect(bootstrap, f"{unique}.exceptions", {key(r) for r in expected}))
        assert worker.metric("casewatch_duplicate_events_total") == 1
    assert {key(r) for r in live} == {key(r) for r in expected}
    for record in live:
        parsed = ExceptionRecord.model_validate(record)  # the contract's shape
        assert parsed.source is not None or parsed.kind == "absence"


def test_missing_delivery_fires_after_its_deadline_with_no_further_input(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    with run_worker(config_file, bootstrap, tmp_path / "worker") as worker:
        # The deadline is set from when the worker is up, far enough ahead that the shipment is
        # read well before it: otherwise the worker's start-up counts as lateness.
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=6)
        shipped = {
            "event_id": "ship-1",
            "type": "order.shipped",
            "occurred_at": now.isoformat(),
            "customer_id": "c-quiet",
            "order_id": "o-quiet",
            "promised_by": (deadline - timedelta(hours=4)).isoformat(),  # grace is 4 h
        }
        events = scenario.write(tmp_path / "one.jsonl", [shipped])
        casewatch("produce", str(events), "--config", str(config_file), bootstrap=bootstrap)
        wait_for("the shipment", lambda: worker.metric("casewatch_events_total") == 1, 60)
        read_before = deadline - datetime.now(UTC)
        assert read_before > timedelta(seconds=1), f"the shipment was read too late: {read_before}"
        assert worker.metric("casewatch_exceptions_total") == 0  # not before its deadline
        wait_for(
            "the missing delivery",
            lambda: worker.metric("casewatch_exceptions_total", rule="missing_delivery") == 1,
            30,
        )
        (record,) = asyncio.run(collect(bootstrap, f"{unique}.exceptions", set(), settle=1))
    detected = datetime.fromisoformat(record["detected_at"])
    assert datetime.fromisoformat(record["event_time"]) == deadline
    late_by = detected - deadline
    print(f"missing delivery published {late_by.total_seconds():.2f}s after its deadline")
    # idle_after (1 s) of quiet input before the clock follows the wall clock, then a tick
    # (0.25 s) and the hop through the dispatch topic.
    assert timedelta(0) <= late_by <= timedelta(seconds=2), late_by


@pytest.mark.parametrize(
    ("store", "second_dir", "wipe"),
    [
        ("memory://", "two", False),  # empty local state: the changelog alone carries it
        ("rocksdb://", "one", False),  # local RocksDB (opt-in), caught up from the changelog
        ("rocksdb://", "one", True),  # the state directory deleted: rebuilt from the changelog
    ],
)
def test_a_worker_killed_mid_scenario_yields_the_same_exceptions(
    config_file: Path,
    bootstrap: str,
    unique: str,
    tmp_path: Path,
    store: str,
    second_dir: str,
    wipe: bool,
) -> None:
    now = scenario.now()
    events = scenario.build(now)
    half = len(events) // 2
    first = scenario.write(tmp_path / "first.jsonl", events[:half])
    second = scenario.write(tmp_path / "second.jsonl", events[half:])
    whole = scenario.write(tmp_path / "whole.jsonl", events)
    with run_worker(config_file, bootstrap, tmp_path / "one", store) as worker:
        casewatch("produce", str(first), "--config", str(config_file), bootstrap=bootstrap)
        wait_for(
            "the first half",
            lambda: (
                worker.metric("casewatch_events_total")
                + worker.metric("casewatch_duplicate_events_total")
                == half
            ),
        )
        worker.kill()
    if wipe:
        shutil.rmtree(tmp_path / "one" / "state")
    with run_worker(config_file, bootstrap, tmp_path / second_dir, store):
        casewatch("produce", str(second), "--config", str(config_file), bootstrap=bootstrap)
        expected = {key(r) for r in replayed(whole, config_file, now)}
        live = asyncio.run(collect(bootstrap, f"{unique}.exceptions", expected))
    assert {key(r) for r in live} == expected
