"""`casewatch demo` as a new user runs it: within a minute it shows exceptions, overflow and
escalation, and it stops what it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.workers import free_port

pytestmark = pytest.mark.integration


def test_the_demo_shows_exceptions_overflow_and_escalation_within_a_minute(
    bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "demo",
            "--duration",
            "55",
            "--metrics-port",
            str(port),
            "--state-dir",
            str(tmp_path),
        ],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = [line for line in done.stdout.splitlines() if line.startswith("demo summary")][-1]
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", final)}
    assert counts.get("open", 0) >= 5, final
    assert counts.get("overflow", 0) >= 1, final
    assert counts.get("escalation", 0) >= 1, final
    assert counts.get("resolved", 0) >= 1, final  # the simulated teams answered
    # Everything it started has stopped: no worker of this demo is left running.
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
