"""Casewatch as a user runs it: a config file of its own, `casewatch topics`, worker processes
(`python -m pipeline worker`), and their `/metrics` and resident memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import DEFAULT_CONFIG
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
CONSUMED = ("casewatch_events_total", "casewatch_duplicate_events_total")


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (a worker died, a wait timed out)."""


def write_config(
    folder: Path,
    unique: str,
    partitions: int = 6,
    app_id: str | None = None,
    pipeline: dict[str, Any] | None = None,
) -> Path:
    """The shipped config, every rule, handler and route included, on topics of this run alone;
    `app_id` (group, internal topics, tables) is `unique` unless given; `pipeline`: settings of
    its `pipeline` section to change (`bench/run.py --set`)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["pipeline"] |= {**(pipeline or {}), "app_id": app_id or unique, "partitions": partitions}
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{unique}.{name}"
    data["topics"]["handler_prefix"] = f"{unique}.handler."
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{unique}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def create_topics(config: Path, bootstrap: str) -> None:
    """`python -m pipeline topics --config F`, as the README says."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "--config", str(config)],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if done.returncode:
        raise BenchError(f"casewatch topics failed:\n{done.stdout}{done.stderr}")


Samples = dict[str, list[tuple[dict[str, str], float]]]


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class Worker:
    """One `casewatch worker` process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    api_port: int = 0  # its case API

    @classmethod
    def start(
        cls,
        config: Path,
        bootstrap: str,
        folder: Path,
        name: str,
        store: str,
        program: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Worker:
        """`program` (default `python -m pipeline`) `worker --config F`; another program, e.g.
        `python -m pyinstrument -o prof.html -m pipeline`, profiles the worker."""
        port, api_port = free_port(), free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CASEWATCH_STORE": store,
            "CASEWATCH_METRICS_PORT": str(port),
            "CASEWATCH_API_PORT": str(api_port),
            "CASEWATCH_API_HOST": "127.0.0.1",
            "CASEWATCH_STATE_DIR": str(folder / f"{name}-state"),
            **(extra_env or {}),
        }
        log = folder / f"{name}.log"
        cmd = [*(program or [sys.executable, "-m", "pipeline"]), "worker", "--config", str(config)]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=REPO)
        return cls(proc, port, log, api_port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scrape(self) -> Samples:
        """Every sample of `/metrics`, by name; empty while the server is not up."""
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            body = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return {}
        out: Samples = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(f"worker {self.pid} exited with {self.proc.returncode}:\n{tail}")

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the worker process in MiB, from /proc/<pid>/status."""
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker process so far (all its threads)."""
        return cpu_seconds(self.pid)

    def sched(self) -> tuple[float, float]:
        return sched_seconds(self.pid)

    def stop(self) -> None:
        stop([self])


def stop(workers: list[Worker]) -> None:
    """SIGTERM to all (a clean shutdown each), then wait; SIGKILL after 30 s."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)


def sched_seconds(pid: int) -> tuple[float, float]:
    """(on a CPU, waiting for one) in seconds, summed over the process's threads: time spent
    runnable but not running is what other processes on the machine took from it."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on, queued, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        run, wait = run + int(on), wait + int(queued)
    return run / 1e9, wait / 1e9


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total(samples: Samples, *names: str) -> float:
    return sum(v for n in names for _, v in samples.get(n, []))


def consumed(workers: list[Worker]) -> float:
    """Messages the workers took in: valid events plus ignored repeats."""
    return sum(total(w.scrape(), *CONSUMED) for w in workers)


def wait_for(what: str, check: Callable[[], bool], timeout: float, workers: list[Worker]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for w in workers:
            w.alive()
        time.sleep(0.25)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def up(workers: list[Worker], timeout: float = 90) -> None:
    wait_for(
        "the workers' /metrics (casewatch_worker_up 1)",
        lambda: all(total(w.scrape(), "casewatch_worker_up") == 1 for w in workers),
        timeout,
        workers,
    )


Buckets = list[tuple[float, float]]


def buckets(samples: Samples, name: str) -> Buckets:
    """A histogram's cumulative (upper bound, count) pairs, summed over labels, sorted."""
    acc: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = float(labels["le"])
        acc[le] = acc.get(le, 0.0) + value
    return sorted(acc.items())


def delta(after: Buckets, before: Buckets) -> Buckets:
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def quantile(q: float, cumulative: Buckets) -> float | None:
    """As Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = le, count
    return lower
