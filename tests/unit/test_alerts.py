"""The Prometheus config and alert rules, checked by promtool (Debian's package: `make prometheus`):
valid, loaded by the config, and every alert shown firing and staying quiet in
deploy/prometheus/tests. No broker, no network."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.runtime.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "rules" / "casewatch.rules.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str) -> str:
    """Run promtool; fail with its whole output if it does not succeed."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make prometheus` (Debian's package)")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_metric_names() -> set[str]:
    """Every series name a worker serves on /metrics (with _total, _bucket, ... suffixes)."""
    names = set()
    for family in Metrics.create(CollectorRegistry()).registry.collect():
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def casewatch_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bcasewatch_[a-z_]+", expr))


def test_the_config_is_valid_and_loads_the_rules_file() -> None:
    out = promtool("check", "config", str(CONFIG))
    assert "SUCCESS: 1 rule files found" in out
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_the_rules_are_valid() -> None:
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_every_alert_behaves_as_its_unit_tests_say() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests"
    out = promtool("test", "rules", *map(str, RULE_TESTS))
    assert out.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for file in RULE_TESTS:
        for test in yaml.safe_load(file.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_has_a_severity_and_tells_the_operator_what_to_do() -> None:
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        assert set(alert["annotations"]) >= {"summary", "description"}, name
        # a description says what happened and what to do: more than a restated summary
        assert len(alert["annotations"]["description"].split()) >= 30, name


def test_the_rules_use_only_metrics_the_workers_export() -> None:
    used = set().union(*(casewatch_metrics(a["expr"]) for a in alerts()))
    assert used - exported_metric_names() == set()
    assert len(used) >= 8
