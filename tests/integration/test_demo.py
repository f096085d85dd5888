"""`casewatch demo` as a new user runs it: within a minute it shows exceptions, overflow and
escalation; the commands it prints follow a handler and report on it while it runs; and it
stops what it started."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_demo_lifecycle import _alive
from tests.integration.workers import wait_for
from tests.ports import free_base

pytestmark = pytest.mark.integration


def _as_run(printed: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command as the demo printed it (`[VAR=value ...] casewatch ...`), run here."""
    words = shlex.split(printed)
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env = {**env, name: value}
    assert words[0] == "casewatch", printed
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *words[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _found(out: Path) -> int:
    """Exceptions found so far, by the demo's last summary line."""
    found = re.findall(r"^demo summary: exceptions found=(\d+)", out.read_text(), re.M)
    return int(found[-1]) if found else 0


def test_the_demo_shows_exceptions_overflow_and_escalation_within_a_minute(
    bootstrap: str, tmp_path: Path
) -> None:
    # The demo's two workers serve /metrics on this port and the next: both free, and below the
    # ephemeral range, where a client connection can take the second meanwhile.
    port = free_base(0, 1)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    with out.open("w") as stdout, err.open("w") as stderr:
        demo = subprocess.Popen(
            [
                *(sys.executable, "-m", "pipeline", "demo", "--duration", "55"),
                *("--metrics-port", str(port), "--state-dir", str(tmp_path / "runs")),
            ],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        # While it runs, the commands it printed work against it, with no other setup.
        wait_for("exceptions to report on", lambda: _found(out) >= 3, timeout=90)
        printed = [
            line.split(": ", 1)[1]
            for line in err.read_text().splitlines()
            if line.startswith("while it runs: ")
        ]
        commands = [(w := shlex.split(c))[w.index("casewatch") + 1] for c in printed]
        assert commands == ["handle", "report", "status"], printed
        handle = _as_run(printed[0].replace(" handle ", " handle --once ", 1), env)
        assert handle.returncode == 0, handle.stderr
        assert "logistics · demo" in handle.stdout, handle.stdout
        report = _as_run(printed[1], env)
        assert report.returncode == 0, report.stderr
        status = _as_run(printed[2], env)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("ana-1: "), status.stdout
        # The CSR page it names answers with the token it names.
        (page,) = [line for line in err.read_text().splitlines() if line.startswith("CSR page: ")]
        url, token = page.split()[2], page.split()[-1].rstrip(")")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert b"ana-1" in response.read()
        demo.wait(120)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 0, err.read_text()[-2000:]
    final = [line for line in out.read_text().splitlines() if line.startswith("demo summary")][-1]
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", final)}
    assert counts.get("found", 0) >= 5, final
    assert counts.get("overflow", 0) >= 1, final
    assert counts.get("escalation", 0) >= 1, final
    assert counts.get("resolved", 0) >= 1, final  # the simulated teams answered
    # Everything it started has stopped.
    pids = json.loads(next((tmp_path / "runs").glob("demo*/pids.json")).read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids["workers"]):
        time.sleep(0.2)
    assert not [p for p in pids["workers"] if _alive(p)]
