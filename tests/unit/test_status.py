"""`casewatch status` without a worker to ask: what a user gets wrong gets one line and the
exit code the docs give (0 answered, 1 not found or no worker, 2 usage or token)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.ports import free_port


def status(*args: str, token: str | None = "t") -> subprocess.CompletedProcess[str]:
    env = {"CASEWATCH_TOKEN": token} if token else {}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "token", "code", "says"),
    [
        ((), "t", 2, "give a CUSTOMER_ID or --case ID"),
        (("c-1", "--case", "0" * 32), "t", 2, "give a CUSTOMER_ID or --case ID"),
        (("c-1",), None, 2, "set CASEWATCH_TOKEN"),
        (("c-1", "--url", "http://127.0.0.1:{closed}"), "t", 1, "cannot reach the case API"),
    ],
)
def test_mistakes_get_one_line_and_their_exit_code(
    args: tuple[str, ...], token: str | None, code: int, says: str
) -> None:
    closed = free_port()
    done = status(*(a.format(closed=closed) for a in args), token=token)
    assert done.returncode == code
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
