"""The `casewatch` command as a user runs it (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=60
    )


def test_check_accepts_the_shipped_config() -> None:
    result = run("check")
    assert result.returncode == 0, result.stderr
    assert "ok: 6 partitions" in result.stdout


def test_check_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  partitons: 3\n")
    result = run("check", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr == (
        f"casewatch: invalid config {bad}: pipeline.partitons: unknown field 'partitons': "
        "did you mean 'partitions'?\n"
    )


def test_schemas_writes_every_file(tmp_path: Path) -> None:
    result = run("schemas", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cases-api.openapi.json",
        "dead-letter-headers.schema.json",
        "event.schema.json",
        "exception-record.schema.json",
        "resolution.schema.json",
    ]


def test_worker_refuses_a_bad_rule_before_touching_kafka(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  loud:\n    kind: threshold\n    when: ['type == interaction.contact']\n"
        "    count: 3\n    window: 1h\n"
    )
    result = run("worker", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"casewatch: invalid config {bad}: rules.loud.when: ")
    assert "'==' is not an operator: write 'type = interaction.contact'" in result.stderr


def test_routes_test_prints_the_matched_path_and_handler() -> None:
    result = run("routes", "test", "rule=missing_delivery", "tier=gold")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("root/vip  ->  vip  (topic casewatch.handler.vip, capacity 10")
    result = run("routes", "test", "teir=gold")
    assert result.returncode == 2
    assert "unknown field 'teir'" in result.stderr


def test_an_unreachable_broker_is_a_clear_one_line_error() -> None:
    import os

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
