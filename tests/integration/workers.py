"""Run `casewatch worker` as a real process, the way a user does, and read its metrics and its
group's lag."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

__all__ = ["free_port"]  # re-exported: the tests import it from here


class Worker:
    """A running worker process and its /metrics."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log: Path, api_port: int = 0
    ) -> None:
        self.proc, self.port, self.log, self.api_port = proc, port, log, api_port

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit, as in a crash."""
        self.proc.kill()
        self.proc.wait(30)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a sample over the series that carry `labels`; 0 before the first one."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        except OSError:
            return 0.0
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def run_worker(
    config: Path, bootstrap: str, tmp: Path, store: str = "memory://"
) -> Iterator[Worker]:
    """Create the topics, start a worker, stop it (SIGTERM) afterwards."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CASEWATCH_STORE": store}
    subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "--config", str(config)],
        env=env,
        check=True,
        timeout=120,
    )
    with start_worker(config, env, tmp) as worker:
        yield worker


@contextmanager
def start_worker(
    config: Path, env: dict[str, str], tmp: Path, timeout: float = 90
) -> Iterator[Worker]:
    """`casewatch worker` with `env` (its own /metrics port and state directory under `tmp`),
    once its /metrics says it is up; stopped with SIGTERM afterwards."""
    port = free_port()
    env = {
        "CASEWATCH_API_PORT": str(free_port()),  # unless the test chose one
        "CASEWATCH_API_HOST": "127.0.0.1",
        **env,
        "CASEWATCH_METRICS_PORT": str(port),
        "CASEWATCH_STATE_DIR": str(tmp / "state"),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=out,
        )
    worker = Worker(proc, port, log, int(env["CASEWATCH_API_PORT"]))
    try:
        wait_for(
            "the worker's /metrics", lambda: worker.metric("casewatch_worker_up") == 1, timeout
        )
        yield worker
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


LOCAL_KAFKA = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "local-kafka"


def local_kafka(env: dict[str, str], *args: str) -> str:
    """Run `deploy/kafka/local-kafka ARGS` with `env`; its stdout, or fail with its stderr."""
    result = subprocess.run(
        [str(LOCAL_KAFKA), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"local-kafka {' '.join(args)}:\n{result.stderr}"
    return result.stdout.strip()


async def lagging(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Messages not yet committed by `group`, per partition of `topics` that has any."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        await consumer._client.force_metadata_update()
        parts = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(parts)
        behind = {
            f"{tp.topic}[{tp.partition}]": end - (committed[tp].offset if tp in committed else 0)
            for tp, end in ends.items()
        }
        return {name: n for name, n in behind.items() if n}
    finally:
        await consumer.stop()
        await admin.close()


async def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    return sum((await lagging(bootstrap, group, topics)).values())
