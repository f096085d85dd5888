"""What `casewatch demo` starts, and how it stops all of it.

The broker (only when the demo started it: a broker already running is used and left running)
and the two workers run in sessions of their own, so that a terminal's signals reach the demo
alone and the demo stops them in order: the workers first (each commits and leaves the group),
then the broker. SIGINT, SIGTERM and SIGHUP all end the demo that way (`stopping_on`); a
worker that exits while the demo runs ends it too, with the last meaningful line of its log.
Each run writes the pids it started to `pids.json` in its folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[3]
LOCAL_KAFKA = REPO / "deploy" / "kafka" / "local-kafka"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
PREFERRED_METRICS_PORT = 9464  # what deploy/prometheus scrapes; any free port when taken
STOP_WITHIN = 15.0  # seconds a worker gets to stop cleanly before it is killed
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A line that says what went wrong: our own message, an exception's last line, an error log line.
_MEANINGFUL = re.compile(
    r"^casewatch: |^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|\b(ERROR|CRITICAL)\b"
)


class DemoError(Exception):
    """Why the demo cannot go on, in one line for the user ("" when that line was shown)."""


def cache_dir() -> Path:
    """Casewatch's cache, found as deploy/kafka/local-kafka finds it."""
    if cache := os.environ.get("CASEWATCH_CACHE"):
        return Path(cache)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "casewatch"


def run_folder(parent: Path) -> tuple[str, Path]:
    """A new run's id (`demo<unix time>`) and its folder under `parent`, created now."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    while True:
        try:
            (parent / f"demo{stamp}").mkdir()
        except FileExistsError:
            stamp += 1  # another demo started within the same second
            continue
        return f"demo{stamp}", parent / f"demo{stamp}"


def last_words(log: str) -> str:
    """The line of a log that says why the process ended: the last error line, else the last."""
    lines = [line for raw in log.splitlines() if (line := _ANSI.sub("", raw).strip())]
    for line in reversed(lines):
        if _MEANINGFUL.search(line):
            return line
    return lines[-1] if lines else "its log is empty"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def metrics_ports(first: int | None, preferred: int = PREFERRED_METRICS_PORT) -> list[int]:
    """The two workers' /metrics ports: `first` and the next when asked for, else `preferred`
    and the next when both are free, else two ports the kernel has free."""
    if first is not None:
        return [first, first + 1]
    if _free(preferred) and _free(preferred + 1):
        return [preferred, preferred + 1]
    ports: list[int] = []
    while len(ports) < 2:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


def follow_commands(config: Path, bootstrap: str, handler: str) -> list[str]:
    """The commands that follow one handler's queue and report on the demo while it runs."""
    env = "" if bootstrap == DEFAULT_BOOTSTRAP else f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} "
    return [
        f"{env}casewatch handle {handler} --config {config}",
        f"{env}casewatch report --config {config}",
    ]


@contextlib.contextmanager
def stopping_on(interrupt: bool = True) -> Iterator[list[str]]:
    """While in it, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does (with
    `interrupt`) or are only noted (without: while stopping, so that nothing cuts a stop
    short); the list names the signals caught. The previous handlers are back afterwards."""
    caught: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum).name)
        if interrupt and len(caught) == 1:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield caught
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


def _die_with_parent() -> None:
    """In a worker before exec: SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """The broker and the workers of one demo run; `stop()` ends exactly what was started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started_broker = False
        self.broker_pid: int | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.metrics_ports: list[int] = []
        self.hurry: list[str] = []  # signals received while stopping

    def broker(self) -> str:
        """The bootstrap address: KAFKA_BOOTSTRAP_SERVERS, the local broker already running,
        or a local broker started now (and stopped by `stop`)."""
        if external := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            return external
        if _local_kafka("status").returncode == 0:
            address = _local_kafka("bootstrap").stdout.strip()
            say(f"using the broker already running on {address} (the demo leaves it running)")
            return address
        self.started_broker = True  # from here on: a broker half started is still stopped
        started = subprocess.run(
            [str(LOCAL_KAFKA), "start"],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops it
        )
        if started.returncode != 0:
            raise DemoError("")  # local-kafka said why, on stderr
        status = _local_kafka("status").stdout
        if found := re.search(r"\(pid (\d+)\)", status):
            self.broker_pid = int(found.group(1))
        self._write_pids()
        return started.stdout.strip()

    def worker(self, command: list[str], env: dict[str, str]) -> None:
        """Start one more worker; its output goes to worker-N.log in the run's folder."""
        log = self.folder / f"worker-{len(self.workers) + 1}.log"
        with log.open("wb") as out:
            self.workers.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # a terminal's signals reach the demo alone
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            )
        self.logs.append(log)
        self.metrics_ports.append(int(env.get("CASEWATCH_METRICS_PORT", "0")))
        self._write_pids()

    def check(self) -> None:
        """Raise DemoError if a worker has exited, with the line of its log that says why."""
        for i, proc in enumerate(self.workers):
            if (code := proc.poll()) is not None:
                log = self.logs[i]
                why = last_words(log.read_text(errors="replace"))
                raise DemoError(f"worker {i + 1} exited (code {code}): {why}  (log: {log})")

    def stop(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after STOP_WITHIN s or a second signal),
        then the broker if this demo started it. Signals meanwhile only hurry it up."""
        for proc in self.workers:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WITHIN
        for proc in self.workers:
            while proc.poll() is None and time.monotonic() < deadline and not self.hurry:
                time.sleep(0.1)
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self.started_broker:
            _local_kafka("stop")

    def _write_pids(self) -> None:
        pids = {
            "demo": os.getpid(),
            "broker": self.broker_pid,
            "workers": [p.pid for p in self.workers],
            "metrics_ports": self.metrics_ports,
        }
        # Written whole, then renamed: a reader never sees a half-written file.
        part = self.folder / "pids.json.part"
        part.write_text(json.dumps(pids) + "\n")
        part.replace(self.folder / "pids.json")


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the worker leads its own session and group


def _local_kafka(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOCAL_KAFKA), command], capture_output=True, text=True, start_new_session=True
    )


def say(line: str) -> None:
    """A line on stderr; nothing when the terminal is gone (SIGHUP): stopping comes first."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)
