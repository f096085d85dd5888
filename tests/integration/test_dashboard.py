"""The Grafana dashboard and the alert rules against a real Prometheus (Debian's binary, `make
prometheus`) scraping a live worker: every panel's query parses and returns data, and the rules
load, evaluate, and say what an operator should see about this run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from pipeline.config import load_config
from tests.integration import scenario
from tests.integration.workers import free_port, run_worker, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "casewatch.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "casewatch.rules.yml"
# What Grafana puts in place of its variables (a 1 s scrape interval here).
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "5m"}
# Invalid messages published raw, as a broken producer would: two error classes.
INVALID = [b'{"event_id": "bad-1", "type": "interaction.contact"', b"not json at all"]
NO_DATA = ": no series (Grafana shows 'No data')"


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query with Grafana's variables substituted) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
            queries.append((panel["title"], expr))
    return queries


def api(url: str, path: str, **params: str) -> dict[str, Any]:
    """A Prometheus HTTP API answer; a refused query's answer too (status error, and why)."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url}{path}{query}", timeout=10) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:
        return dict(json.load(exc))


def ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"prometheus exited ({proc.returncode}):\n{log.read_text()}")
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextmanager
def run_prometheus(target: str, tmp: Path) -> Iterator[str]:
    """Prometheus with the shipped scrape config and rules, scraping `target` every second, on a
    free port; stopped afterwards. Yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make prometheus` (Debian's package)")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    url, log = f"http://127.0.0.1:{free_port()}", tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=out,
            stderr=out,
        )
    try:
        wait_for("Prometheus to be ready", lambda: ready(url, proc, log), 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def produce(events: Path, config: Path, bootstrap: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pipeline", "produce", str(events), "--config", str(config)],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        check=True,
        capture_output=True,
        timeout=120,
    )


async def publish_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"c-broken")
    finally:
        await producer.stop()


def panel_problems(url: str, queries: list[tuple[str, str]], seconds: float = 30) -> list[str]:
    """What an operator would see as an error or 'No data' on a panel, one line each, once every
    panel has data or `seconds` have passed (a rate needs two scrapes of a series, and a counter
    appears at its first increment); a query that does not parse is reported at once."""
    deadline = time.monotonic() + seconds
    while True:
        problems = []
        for title, expr in queries:
            answer = api(url, "/api/v1/query", query=expr)
            if answer["status"] != "success":
                problems.append(f"{title}: {expr}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                problems.append(f"{title}: {expr}{NO_DATA}")
        no_data_yet = problems and all(p.endswith(NO_DATA) for p in problems)
        if not no_data_yet or time.monotonic() > deadline:
            return problems
        time.sleep(1)


def alerting_rules(url: str) -> dict[str, dict[str, Any]]:
    groups = api(url, "/api/v1/rules", type="alert")["data"]["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def ask_case_api(port: int, customer: str) -> int:
    """A request to the worker's case API (no token: a 401, counted like any answer)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/v1/customers/{customer}/cases", timeout=10
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_dashboard_panel_has_data_and_the_alerts_see_the_live_worker(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    queries = panel_queries()
    events = scenario.write(tmp_path / "scenario.jsonl", scenario.build(scenario.now()))
    with (
        run_worker(config_file, bootstrap, tmp_path / "worker") as worker,
        run_prometheus(f"127.0.0.1:{worker.port}", tmp_path / "prometheus") as prometheus,
    ):
        wait_for(
            "the first scrape",
            lambda: bool(
                api(prometheus, "/api/v1/query", query='up{job="casewatch"} == 1')["data"]["result"]
            ),
            30,
        )
        produce(events, config_file, bootstrap)
        asyncio.run(publish_raw(bootstrap, f"{unique}.interactions", INVALID))
        for customer in ("c-lost", "c-failed", "c-nobody"):  # the case API's panels
            ask_case_api(worker.api_port, customer)
        wait_for(
            "the dead letters",
            lambda: worker.metric("casewatch_dead_letters_total") == len(INVALID),
            60,
        )
        problems = panel_problems(prometheus, queries)
        assert not problems, "\n".join(problems)
        handlers = load_config(config_file).handlers

        def breached() -> set[str]:
            return {h for h in handlers if worker.metric("casewatch_sla_breaches_total", handler=h)}

        def firing() -> set[str]:
            alerts = alerting_rules(prometheus)["CasewatchSLABreaches"]["alerts"]
            return {a["labels"]["handler"] for a in alerts if a["state"] == "firing"}

        # The scenario holds exceptions older than their handlers' SLA: they escalate at once.
        wait_for(
            "CasewatchSLABreaches for each handler that breached",
            lambda: firing() == breached() != set(),
            15,
        )
        rules = alerting_rules(prometheus)
    assert {name: r["health"] for name, r in rules.items()} == dict.fromkeys(rules, "ok")
    # A healthy worker raises no critical alert, not even a pending one.
    critical = {n: r["state"] for n, r in rules.items() if r["labels"]["severity"] == "critical"}
    assert critical == dict.fromkeys(critical, "inactive")
    assert len(critical) >= 4
