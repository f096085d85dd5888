"""The case status API against the real broker, with two workers in one group: a customer's
cases are found through either worker, their timelines follow what happens (open, overflow,
escalation, acknowledgement, resolution), the same timeline is served after the owner is killed
with SIGKILL, and scopes and errors are enforced; closed cases leave the view and the table
after the retention."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from tests.integration import scenario
from tests.integration.test_detect import casewatch
from tests.integration.test_route import configure, failed_delivery
from tests.integration.workers import free_port, start_worker, wait_for

pytestmark = pytest.mark.integration

STAFF, CUSTOMER = "staff-token-1", "customer-token-1"
TOKENS = {"CASEWATCH_STAFF_TOKENS": STAFF, "CASEWATCH_CUSTOMER_TOKENS": CUSTOMER}


def call(port: int, path: str, token: str | None = STAFF) -> tuple[int, Any, dict[str, str]]:
    """GET a worker's API: status, JSON body (or text), headers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, body, got = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, orjson.loads(body), got
    except orjson.JSONDecodeError:
        return status, body.decode(), got


def steps(case: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(s["step"], s["handler"]) for s in case["timeline"]]


def cases_of(port: int, customer: str) -> list[dict[str, Any]]:
    status, body, _ = call(port, f"/v1/customers/{customer}/cases")
    return list(body["cases"]) if status == 200 else []


def run_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def timelines(port: int, customer: str) -> list[dict[str, Any]]:
    """The customer's cases without their age (which grows as the test runs)."""
    return [{k: v for k, v in c.items() if k != "age_s"} for c in cases_of(port, customer)]


def test_cases_through_either_worker_as_they_happen_and_after_a_kill(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    config = configure(config_file, {"logistics": {"capacity": 1, "resolve_within": "4s"}})
    env = {
        **os.environ,
        **TOKENS,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CASEWATCH_STORE": "memory://",
    }
    ports = [free_port(), free_port()]
    casewatch("topics", "--config", str(config), bootstrap=bootstrap)
    with (
        start_worker(config, {**env, "CASEWATCH_API_PORT": str(ports[0])}, tmp_path / "w1") as w1,
        start_worker(config, {**env, "CASEWATCH_API_PORT": str(ports[1])}, tmp_path / "w2") as w2,
    ):
        now = scenario.now()

        def produce(n: int) -> None:
            file = scenario.write(tmp_path / f"fail-{n}.jsonl", [failed_delivery(n, now)])
            casewatch("produce", str(file), "--config", str(config), bootstrap=bootstrap)

        # c-1 goes to logistics, as it happens; then c-2 overflows to supervisors (capacity
        # 1); then c-1 escalates to supervisors, 4 s open.
        produce(1)

        def routed() -> bool:
            return [[s for s, _ in steps(c)] for c in cases_of(ports[1], "c-1")] in (
                [["detected", "routed"]],
                [["detected", "routed", "escalated"]],
            )

        wait_for("c-1's case, through the second worker", routed, 60)
        produce(2)

        def escalated() -> bool:
            found = cases_of(ports[0], "c-1")
            return bool(found) and steps(found[0])[-1] == ("escalated", "supervisors")

        wait_for("c-1's escalation, through the first worker", escalated, 60)
        wait_for("c-2's case", lambda: bool(cases_of(ports[0], "c-2")), 60)
        for port in ports:  # the same answer through either worker
            (first,) = cases_of(port, "c-1")
            assert first["status"] == "escalated"
            assert first["handler"] == "supervisors"
            assert steps(first)[:2] == [("detected", None), ("routed", "logistics")]
            assert steps(first)[-1] == ("escalated", "supervisors")
            assert first["evidence"] == ["fail-1"]
            (second,) = cases_of(port, "c-2")
            assert [s for s, _ in steps(second)] == ["detected", "overflow"]
            assert second["handler"] == "supervisors"

        # The supervisors acknowledge, then resolve c-1 with the reference handler app.
        exception_id = first["exception_id"]
        for flag, note in (("--ack", "calling the carrier"), ("--resolve", "found at the depot")):
            casewatch(
                "handle",
                "supervisors",
                "--config",
                str(config),
                flag,
                exception_id,
                "--note",
                note,
                bootstrap=bootstrap,
            )

        def resolved() -> bool:
            status, case, _ = call(ports[1], f"/v1/cases/{exception_id}")
            return status == 200 and case["status"] == "resolved"

        wait_for("c-1's resolution, by case id through the second worker", resolved, 60)
        _, case, _ = call(ports[1], f"/v1/cases/{exception_id}")
        assert [s for s, _ in steps(case)][-2:] == ["acknowledged", "resolved"]
        assert case["timeline"][-2]["note"] == "calling the carrier"
        assert case["resolved_by"] == "supervisors"

        # The same through `casewatch status`, as text and as JSON, by customer and by case.
        status_env = {**os.environ, "CASEWATCH_TOKEN": STAFF}
        url = f"http://127.0.0.1:{ports[0]}"
        shown = run_status(status_env, "c-1", "--url", url)
        assert shown.returncode == 0, shown.stderr
        assert exception_id in shown.stdout
        assert "acknowledged" in shown.stdout
        assert '"calling the carrier"' in shown.stdout
        as_json = run_status(status_env, "--case", exception_id, "--url", url, "--json")
        assert orjson.loads(as_json.stdout)["status"] == "resolved"
        unknown = run_status(status_env, "--case", "0" * 32, "--url", url)
        assert unknown.returncode == 1
        assert "no case" in unknown.stderr

        # The customer's view: words, never evidence, context, notes or handler names.
        status, mine, _ = call(ports[0], "/v1/customers/c-1/cases", CUSTOMER)
        assert status == 200
        (view,) = mine["cases"]
        assert view["state"] == "resolved"
        text = orjson.dumps(view).decode()
        for secret in ("fail-1", "calling the carrier", "supervisors", "logistics", "context"):
            assert secret not in text

        errors = {
            "malformed id": call(ports[0], "/v1/cases/not-an-id")[0],
            "no token": call(ports[0], "/v1/customers/c-1/cases", None)[0],
            "bad token": call(ports[0], "/v1/customers/c-1/cases", "nope")[0],
            "customer on the CSR page": call(ports[0], "/cases/customer/c-1", CUSTOMER)[0],
            "unknown case": call(ports[0], "/v1/cases/" + "0" * 32)[0],
            "bad status filter": call(ports[0], "/v1/customers/c-1/cases?status=lost")[0],
        }
        assert errors == {
            "malformed id": 400,
            "no token": 401,
            "bad token": 401,
            "customer on the CSR page": 403,
            "unknown case": 404,
            "bad status filter": 400,
        }
        assert call(ports[1], "/v1/customers/c-nobody/cases")[:2] == (
            200,
            {"customer_id": "c-nobody", "cases": []},
        )
        status, html, _ = call(ports[1], "/cases/customer/c-1")
        assert status == 200
        assert exception_id in html
        assert "supervisors" in html

        before = {c: timelines(ports[0], c) for c in ("c-1", "c-2")}
        # Kill the worker that owns c-1 with SIGKILL; the survivor takes its partitions over
        # and serves the same timelines, rebuilt from the changelog.
        served_by = call(ports[0], "/v1/customers/c-1/cases")[2]["Casewatch-Worker"]
        owner, survivor = (w1, ports[1]) if served_by.endswith(f":{ports[0]}") else (w2, ports[0])
        owner.kill()
        # Until the group notices (its session timeout), the survivor cannot reach the owner:
        # it says so, and when to retry, rather than answering from a copy.
        status, error, headers = call(survivor, "/v1/customers/c-1/cases")
        assert (status, error["error"], headers["Retry-After"]) == (503, "unavailable", "2")

        def served_again() -> bool:
            return all(timelines(survivor, c) == before[c] for c in before)

        wait_for("the same timelines from the survivor", served_again, 90)


def test_closed_cases_leave_the_view_and_the_table_after_the_retention(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """A customer no record comes for after its case closed: the case leaves the API at the
    retention, and the worker's sweep deletes the customer's book (a tombstone on the
    changelog), so the table does not keep every customer who ever had a case."""
    config = configure(config_file, {})
    data = yaml.safe_load(config.read_text())
    data["cases"] = {"retention": "6s", "sweep_every": "1s"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    port = free_port()
    env = {
        **os.environ,
        **TOKENS,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CASEWATCH_STORE": "memory://",
        "CASEWATCH_API_PORT": str(port),
    }
    casewatch("topics", "--config", str(config), bootstrap=bootstrap)
    with start_worker(config, env, tmp_path / "w") as worker:
        now = scenario.now()
        file = scenario.write(
            tmp_path / "fails.jsonl", [failed_delivery(1, now), failed_delivery(2, now)]
        )
        casewatch("produce", str(file), "--config", str(config), bootstrap=bootstrap)
        wait_for("both cases", lambda: all(cases_of(port, c) for c in ("c-1", "c-2")), 60)
        (case,) = cases_of(port, "c-1")
        casewatch(
            "handle",
            case["handler"],
            "--config",
            str(config),
            "--resolve",
            case["exception_id"],
            bootstrap=bootstrap,
        )
        wait_for(
            "c-1's case resolved",
            lambda: [c["status"] for c in cases_of(port, "c-1")] in ([], ["resolved"]),
            60,
        )
        # Closed: gone within the retention (6 s) and a sweep (1 s); open: kept.
        wait_for("c-1's closed case to leave the view", lambda: not cases_of(port, "c-1"), 30)
        assert call(port, f"/v1/cases/{case['exception_id']}")[0] == 404
        wait_for(
            "the sweep to count it",
            lambda: worker.metric("casewatch_cases_expired_total") == 1,
            30,
        )
        assert [c["status"] for c in cases_of(port, "c-2")] == ["open"]
        changelog = asyncio.run(keyed(bootstrap, f"{unique}-cases-changelog"))
        assert changelog[b"c-1"][-1] is None  # the book deleted, not rewritten empty
        assert changelog[b"c-2"][-1] is not None


async def keyed(bootstrap: str, topic: str) -> dict[bytes, list[bytes | None]]:
    """Every record of `topic`, values by key in order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict[bytes, list[bytes | None]] = {}
    try:
        while batches := await consumer.getmany(timeout_ms=2000):
            for batch in batches.values():
                for m in batch:
                    found.setdefault(m.key or b"", []).append(m.value)
    finally:
        await consumer.stop()
    return found
