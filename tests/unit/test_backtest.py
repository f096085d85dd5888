"""`casewatch replay EVENTS --config NEW --against OLD`: a rule author sees what a change does
to the exceptions of the same events before it ships (pipeline/tools/backtest/backtest.py).

The configs are the default rules (pipeline/defaults/casewatch.yaml) edited as a rule author
would edit the file; the events are bench/workload.py's realistic traffic, or the sample."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from bench import workload
from pipeline.cli import main
from pipeline.config import DEFAULT_CONFIG, load_config
from pipeline.tools.backtest.backtest import EXIT_CHANGED
from pipeline.tools.backtest.cases import (
    APPEAR,
    DISAPPEAR,
    HANDLER,
    KINDS,
    TIME,
    Case,
    Diff,
    Run,
    compare,
    replay,
    rule_changes,
)
from pipeline.tools.backtest.output import Names, print_diff
from pipeline.tools.replay import Summary

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "examples" / "sample.jsonl")
DEFAULT = DEFAULT_CONFIG.read_text()
START = 1_790_000_000.0  # fixed: the same events, ids and records in every run
DAYS = 3
# A new handler, and a route that sends it every failed delivery (gold and platinum customers
# still go to vip: its route comes first).
CARRIERS = DEFAULT.replace(
    "  triage:\n",
    "  carriers:\n    capacity: 40\n    resolve_within: 8h\n    escalate_to: supervisors\n"
    "  triage:\n",
).replace(
    "    - name: logistics\n",
    "    - name: carriers\n      match: ['rule = delivery_failed']\n      handler: carriers\n"
    "    - name: logistics\n",
)


def edited(old: str, new: str) -> str:
    """The default config with one edit; the edit must apply."""
    assert DEFAULT.count(old) == 1, old
    return DEFAULT.replace(old, new)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three days of 300 customers' traffic, as `casewatch produce` would publish it."""
    msgs = workload.build(300, 300 * 3 * DAYS, START, DAYS * 86400.0, "bt", seed=5, span_hours=72)
    path = tmp_path_factory.mktemp("backtest") / "events.jsonl"
    path.write_bytes(b"".join(m.value + b"\n" for m in msgs))
    return str(path)


@pytest.fixture(scope="module")
def default_run(events: str) -> Run:
    return replay(load_config(), events, None, io.StringIO())


def against_default(text: str, events: str, default_run: Run, tmp_path: Path) -> Diff:
    """The diff of `casewatch replay EVENTS --config NEW --against` the default config."""
    (tmp_path / "new.yaml").write_text(text)
    new = load_config(tmp_path / "new.yaml")
    diff = compare(default_run, replay(new, events, None, io.StringIO()))
    diff.rules = rule_changes(load_config(), new)
    return diff


def shown(diff: Diff) -> str:
    """The tables as printed to a pipe."""
    out = io.StringIO()
    print_diff(diff, Names("events.jsonl", "new.yaml", "old.yaml"), Console(file=out, width=200))
    return out.getvalue()


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        ("complaint_cluster", "count: 3\n    window: 14d", "count: 2\n    window: 14d"),
        ("repeated_contact", "count: 4\n    window: 24h", "count: 4\n    window: 72h"),
    ],
    ids=["complaint_cluster count 3 -> 2", "repeated_contact window 24h -> 72h"],
)
def test_a_tightened_threshold_makes_exceptions_appear_under_its_rule(
    rule: str, old: str, new: str, events: str, default_run: Run, tmp_path: Path
) -> None:
    diff = against_default(edited(old, new), events, default_run, tmp_path)
    appeared = [c for c in diff.changes if c.kind == APPEAR]
    assert appeared, "a lower count or a longer window finds more"
    assert {c.case.rule for c in appeared} == {rule}
    assert diff.count(DISAPPEAR) == 0
    assert diff.rules == {"changed": [rule], "added": [], "removed": []}
    assert diff.by_rule()[rule][APPEAR] == len(appeared)
    assert len(diff.new.cases) - len(diff.old.cases) == len(appeared)
    text = shown(diff)
    counts = diff.by_rule()[rule]
    row = next(line.split() for line in text.splitlines() if line.split()[:1] == [rule])
    assert row[1:4] == [str(counts["old"]), str(counts["new"]), str(len(appeared))]
    example = appeared[0].case
    assert any(
        example.exception_id in line and "appear" in line and "- -> " in line
        for line in text.splitlines()
    )


def test_a_new_route_moves_exceptions_to_another_handler_listed_old_to_new(
    events: str, default_run: Run, tmp_path: Path
) -> None:
    diff = against_default(CARRIERS, events, default_run, tmp_path)
    at_logistics = [
        c for c in default_run.cases if c.rule == "delivery_failed" and c.handlers == ["logistics"]
    ]
    assert at_logistics, "the workload has failed deliveries of customers below gold"
    moved = [c for c in diff.changes if c.kind == HANDLER]
    assert {c.case.exception_id for c in moved} == {c.exception_id for c in at_logistics}
    assert {c.before_after() for c in moved} == {("logistics", "carriers")}
    assert diff.count(APPEAR) == diff.count(DISAPPEAR) == 0  # routing finds nothing new
    handlers = diff.by_handler()
    assert handlers["carriers"]["moved_in"] == handlers["logistics"]["moved_out"] == len(moved)
    text = shown(diff)
    first = moved[0].case
    assert any(
        first.exception_id in line and first.customer_id in line and "logistics -> carriers" in line
        for line in text.splitlines()
    )


def test_identical_configs_change_nothing(events: str, default_run: Run) -> None:
    diff = compare(default_run, replay(load_config(), events, None, io.StringIO()))
    assert default_run.cases, "a backtest that finds nothing compares nothing"
    assert not diff.changed
    assert diff.changes == []
    assert "no change: every exception is the same under both configs" in shown(diff)


def test_a_moved_trigger_is_the_same_exception_later_not_one_gone_and_one_new() -> None:
    """An absence's id holds its deadline: a longer grace gives the same missing delivery a new
    id. It is paired by rule, customer and subject, in event-time order."""
    t = datetime(2026, 3, 1, tzinfo=UTC)

    def case(id_: str, order: str, hours: float) -> Case:
        return Case(
            id_,
            "missing_delivery",
            "c-1",
            {"order_id": order},
            t + timedelta(hours=hours),
            "high",
            ["logistics"],
        )

    old = [case("a1", "o-1", 0), case("a2", "o-1", 48), case("b", "o-2", 0)]
    new = [case("a1-later", "o-1", 4), case("a2-later", "o-1", 52), case("c", "o-3", 0)]
    diff = compare(Run(old, Summary()), Run(new, Summary()))
    pairs = {
        (c.old.exception_id if c.old else None, c.new.exception_id if c.new else None, c.kind)
        for c in diff.changes
    }
    assert pairs == {
        ("a1", "a1-later", TIME),
        ("a2", "a2-later", TIME),
        ("b", None, DISAPPEAR),
        (None, "c", APPEAR),
    }


def run_cli(*argv: str, reader_gone: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline replay ...`, with none of this host's Casewatch or Kafka settings;
    `reader_gone`: stdout is a pipe its reader has closed, as `| head -0` leaves it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASEWATCH_", "KAFKA_"))}
    command = [sys.executable, "-m", "pipeline", "replay", *argv]
    if not reader_gone:
        return subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
        )
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        return subprocess.CompletedProcess(command, proc.wait(timeout=120), "", stderr)


def test_identical_configs_exit_0_even_with_fail_on_change(tmp_path: Path) -> None:
    (tmp_path / "same.yaml").write_text(DEFAULT)
    done = run_cli(SAMPLE, "--against", str(tmp_path / "same.yaml"), "--fail-on-change")
    assert done.returncode == 0, done.stderr
    assert "no change" in done.stdout


def test_fail_on_change_exits_3_on_a_change_and_the_json_says_what(tmp_path: Path) -> None:
    (tmp_path / "new.yaml").write_text(CARRIERS)
    argv = [SAMPLE, "--config", str(tmp_path / "new.yaml"), "--against", str(DEFAULT_CONFIG)]
    assert run_cli(*argv).returncode == 0  # a change alone is not a failure
    done = run_cli(*argv, "--fail-on-change", "--json")
    assert done.returncode == EXIT_CHANGED == 3, done.stderr
    data = orjson.loads(done.stdout)
    assert data["changed"] is True
    assert set(data["counts"]) == set(KINDS)
    moved = [c for c in data["changes"] if c["change"] == HANDLER]
    # The sample's one failed delivery, of a customer with no profile (so not vip)
    assert [(c["customer_id"], c["before"], c["after"]) for c in moved] == [
        ("cust-dan", "logistics", "carriers")
    ]
    assert moved[0]["new"]["paths"] == ["root/carriers"]
    assert data["rules"] == {"changed": [], "added": [], "removed": []}  # a route changed


def test_a_closed_stdout_ends_quietly_with_141_as_every_command(tmp_path: Path) -> None:
    (tmp_path / "new.yaml").write_text(CARRIERS)
    argv = [SAMPLE, "--config", str(tmp_path / "new.yaml"), "--against", str(DEFAULT_CONFIG)]
    done = run_cli(*argv, reader_gone=True)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_bad_against_config_stops_with_the_config_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "old.yaml"
    bad.write_text(
        edited("kind: threshold\n    severity: high", "kind: treshold\n    severity: high")
    )
    code = main(["replay", SAMPLE, "--against", str(bad), "--fail-on-change"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""  # nothing ran
    assert err.startswith(f"casewatch: invalid config {bad}: rules.complaint_cluster.kind: ")
    assert "did you mean 'threshold'?" in err


def test_json_and_fail_on_change_need_against(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", SAMPLE, "--fail-on-change"]) == 2
    assert "add --against OLD.yaml" in capsys.readouterr().err
