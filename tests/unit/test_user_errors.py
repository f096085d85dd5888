"""A user's mistake, or a missing piece of their environment, ends `casewatch` with one line
naming the problem and the fix, and a documented exit code (docs/operations.md, "Exit codes"):
never a traceback. Each case runs the real command in a subprocess, with no broker.

To add a case, add a row to CASES: the arguments, the environment, the files it needs, the
exit code and the one line expected on stderr. In the strings, {tmp} is the case's folder,
{closed} a local port nothing listens on and {busy} one that something holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE = str(REPO / "examples" / "sample.jsonl")
UNREACHABLE = (
    "casewatch: cannot reach Kafka at 127.0.0.1:{closed} (connection refused): start it "
    "(deploy/kafka/local-kafka start), or set KAFKA_BOOTSTRAP_SERVERS to your brokers"
)
ONE_RULE = "rules:\n  late:\n    kind: match\n    when: ['type = order.cancelled']\n"


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    code: int
    line: str | None  # the one line on stderr; None: stderr is empty
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    reader_gone: bool = False  # stdout is a pipe whose reader has already closed it (| head)


CASES = [
    Case(
        "worker without a broker",
        ["worker"],
        1,
        UNREACHABLE,
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{closed}", "CASEWATCH_METRICS_PORT": "0"},
    ),
    Case(
        "worker with its metrics port taken",
        ["worker"],
        1,
        "casewatch: cannot serve metrics on port {busy} (Address already in use): stop what "
        "holds it, or set CASEWATCH_METRICS_PORT to a free port (0: no metrics server)",
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{closed}", "CASEWATCH_METRICS_PORT": "{busy}"},
    ),
    Case(
        "check on a file that is not UTF-8",
        ["check", "--config", "{tmp}/latin1.yaml"],
        2,
        "casewatch: invalid config {tmp}/latin1.yaml: line 3 (byte offset 23): 0xe9 is not UTF-8: "
        "save the file as UTF-8",
        files={"latin1.yaml": b"version: 1\nrules:\n  caf\xe9:\n    kind: match\n"},
    ),
    Case(
        "check on a YAML nested 2,000 deep",
        ["check", "--config", "{tmp}/deep.yaml"],
        2,
        "casewatch: invalid config {tmp}/deep.yaml: (top level): too deeply nested to load: "
        "a config is a few levels deep; check that this is the file you meant",
        files={"deep.yaml": b"rules: " + b"[" * 2000 + b"]" * 2000 + b"\n"},
    ),
    Case(
        "replay into a folder that is not there",
        ["replay", SAMPLE, "--out", "{tmp}/missing/dir/file"],
        2,
        "casewatch: replay: --out {tmp}/missing/dir/file: there is no folder {tmp}/missing/dir: "
        "create it, or write elsewhere",
    ),
    Case(
        "replay of a file that is not there",
        ["replay", "{tmp}/nope.jsonl"],
        2,
        "casewatch: replay: {tmp}/nope.jsonl: no such file: check the path",
    ),
    Case(
        "a metrics port that is not a number",
        ["check"],
        2,
        "casewatch: invalid environment: CASEWATCH_METRICS_PORT='abc' is not valid: expected "
        "a port number 1-65535, or 0 for no metrics server",
        env={"CASEWATCH_METRICS_PORT": "abc"},
    ),
    Case(
        "a metrics port out of range",
        ["worker"],
        2,
        "casewatch: invalid environment: CASEWATCH_METRICS_PORT='70000' is not valid: expected "
        "a port number 1-65535, or 0 for no metrics server",
        env={"CASEWATCH_METRICS_PORT": "70000"},
    ),
    Case(
        "an unknown store",
        ["check"],
        2,
        "casewatch: invalid environment: CASEWATCH_STORE='disk' is not valid: expected "
        "memory:// or rocksdb://",
        env={"CASEWATCH_STORE": "disk"},
    ),
    Case(
        "an unknown processing guarantee",
        ["check"],
        2,
        "casewatch: invalid environment: CASEWATCH_PROCESSING_GUARANTEE='once' is not valid: "
        "expected at_least_once or exactly_once",
        env={"CASEWATCH_PROCESSING_GUARANTEE": "once"},
    ),
    Case(
        "a broker address with a port that is not a number",
        ["topics"],
        2,
        "casewatch: invalid environment: KAFKA_BOOTSTRAP_SERVERS='k1:9092,k2:nine' is not "
        "valid: expected host:port, or several separated by commas, e.g. k1:9092,k2:9092",
        env={"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:nine"},
    ),
    Case("replay piped into head", ["replay", SAMPLE], 141, None, reader_gone=True),
    Case("schemas piped into head", ["schemas", "--out", "{tmp}"], 141, None, reader_gone=True),
    Case(
        "check on an empty config",
        ["check", "--config", "{tmp}/empty.yaml"],
        2,
        "casewatch: invalid config {tmp}/empty.yaml: rules: no rules: a config without rules "
        "watches nothing: add one under 'rules' (docs/detectors.md, 'Kinds')",
        files={"empty.yaml": b""},
    ),
    Case(
        "worker on a config of only its version",
        ["worker", "--config", "{tmp}/v1.yaml"],
        2,
        "casewatch: invalid config {tmp}/v1.yaml: rules: no rules: a config without rules "
        "watches nothing: add one under 'rules' (docs/detectors.md, 'Kinds')",
        files={"v1.yaml": b"version: 1\n"},
    ),
    Case(
        "check --strict on a rule no route takes",
        ["check", "--strict", "--config", "{tmp}/unrouted.yaml"],
        2,
        "casewatch: warning: rules.late: no route under 'route.routes' can match it: all of its "
        "exceptions go to the root's handler 'triage': add a route for it (e.g. match: "
        "['rule = late']), or check the spelling of the rule in the routes",
        files={"unrouted.yaml": ONE_RULE.encode()},
    ),
    Case(
        "routes test with an unknown rule",
        ["routes", "test", "rule=missing_delivry"],
        2,
        "casewatch: routes test: unknown rule 'missing_delivry': did you mean "
        "'missing_delivery'? known: complaint_cluster, delivery_failed, missing_delivery, "
        "repeat_maintenance, repeated_contact",
    ),
    Case(
        "routes test with an unknown severity and a value that is not a number",
        ["routes", "test", "severity=urgent", "value=lots"],
        2,
        "casewatch: routes test: unknown severity 'urgent': known: low, medium, high, critical; "
        "value 'lots' is not a number: write e.g. value=500",
    ),
    Case(
        "routes test with an unknown field",
        ["routes", "test", "teir=gold"],
        2,
        "casewatch: routes test: 'teir=gold': unknown field 'teir': did you mean 'tier'? use "
        "rule, kind, severity, status, customer_id, tier, segment, region, value, currency or "
        "subject.<field>",
    ),
    Case(
        "a misspelt rule kind",
        ["check", "--config", "{tmp}/kind.yaml"],
        2,
        "casewatch: invalid config {tmp}/kind.yaml: rules.late.kind: unknown rule kind "
        "'absense': did you mean 'absence'? (known: absence, match, threshold)",
        files={"kind.yaml": ONE_RULE.replace("match\n", "absense\n").encode()},
    ),
    Case(
        "a customer message naming a field the rule does not have",
        ["check", "--config", "{tmp}/words.yaml"],
        2,
        "casewatch: invalid config {tmp}/words.yaml: cases.messages.late: unknown field "
        "{{order}}: the fields it may use: {{event_id}}, {{rule}}, {{detected_at}}, "
        "{{routed_at}}, {{due}}, {{resolved_at}}",
        files={
            "words.yaml": (ONE_RULE + "cases:\n  messages:\n    late: 'Order {order}'\n").encode()
        },
    ),
]


@pytest.fixture
def busy() -> Iterator[int]:
    """A port something listens on, as another worker's metrics server would."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_line_and_the_documented_exit_code(case: Case, tmp_path: Path, busy: int) -> None:
    values = {"tmp": str(tmp_path), "closed": str(free_port()), "busy": str(busy)}
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASEWATCH_", "KAFKA_"))}
    env |= {k: v.format(**values) for k, v in case.env.items()}
    argv = [sys.executable, "-m", "pipeline", *(a.format(**values) for a in case.argv)]
    code, stderr = _run(argv, env, case.reader_gone)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ([case.line.format(**values)] if case.line else [])
    assert code == case.code


def _run(argv: list[str], env: dict[str, str], reader_gone: bool) -> tuple[int, str]:
    if not reader_gone:
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
        return done.returncode, done.stderr
    # The reader closes its end before the command has even started Python, as `| head -0`
    # would: the command's first write meets a closed pipe.
    with subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        return proc.wait(timeout=30), stderr
