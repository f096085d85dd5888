"""After a rebalance, a partition's lag and clock are on the metrics of the worker that owns it
and no other: a value left by the former owner would stay frozen, and the consumer-lag alert
takes the max over the workers (deploy/prometheus/rules)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration import scenario
from tests.integration.test_detect import casewatch
from tests.integration.workers import Worker, run_worker, start_worker, wait_for

PARTITIONS = 3  # conftest's config_file


def partitions(worker: Worker, name: str, labels: dict[str, str]) -> set[str]:
    """The partitions `worker` reports a series of `name` for (with `labels`)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).read()
    except OSError:
        return set()
    return {
        s.labels["partition"]
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    }


def test_a_partitions_lag_and_clock_are_reported_by_its_owner_only(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    events = scenario.write(tmp_path / "scenario.jsonl", scenario.build(scenario.now()))
    lag: tuple[str, dict[str, str]] = (
        "casewatch_consumer_lag_messages",
        {"topic": f"{unique}.interactions"},
    )
    clock: tuple[str, dict[str, str]] = ("casewatch_watermark_lag_seconds", {})
    everything = {str(p) for p in range(PARTITIONS)}
    with run_worker(config_file, bootstrap, tmp_path / "one") as one:
        casewatch("produce", str(events), "--config", str(config_file), bootstrap=bootstrap)
        for name, labels in (lag, clock):

            def alone(n: str = name, k: dict[str, str] = labels) -> bool:
                return partitions(one, n, k) == everything

            wait_for(f"{name} of every partition on the only worker", alone)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CASEWATCH_STORE": "memory://"}
        with start_worker(config_file, env, tmp_path / "two") as two:
            wait_for("the second worker's first partition", lambda: bool(partitions(two, *lag)))
            for name, labels in (lag, clock):

                def split(n: str = name, k: dict[str, str] = labels) -> bool:
                    mine, theirs = partitions(one, n, k), partitions(two, n, k)
                    return mine | theirs == everything and not mine & theirs and bool(theirs)

                wait_for(f"{name}: each partition on one worker only", split, timeout=60)
