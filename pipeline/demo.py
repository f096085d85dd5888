"""`casewatch demo`: the whole thing, locally, in one command.

It starts the local broker (unless `KAFKA_BOOTSTRAP_SERVERS` names one), creates the demo's
topics, runs two workers in one consumer group, and publishes realistic traffic: background
noise at `--rate` events per second, with the seed stories woven in every minute (the lost
modem and five calls, the leaking faucet, the noisy neighbours, a burst of failed deliveries,
a couple of broken messages). Simulated handler teams resolve their exceptions at a limited
pace, so queues fill, overflow and escalate. A live terminal view shows the newest exceptions,
each handler's queue against its capacity, and the dead letters, with the workers' `/metrics`
addresses. Ctrl-C (or `--duration`) stops everything it started.

The demo's config is the shipped one with small capacities and short deadlines (seconds, not
hours) so that everything happens within a minute; each run has its own topics and group,
prefixed `demo<time>.`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.config import DEFAULT_CONFIG, Config, Runtime, load_config
from pipeline.demo_traffic import Traffic
from pipeline.demo_view import show, summary

REPO = Path(__file__).resolve().parents[1]
LOCAL_KAFKA = REPO / "deploy" / "kafka" / "local-kafka"

# Seconds instead of hours: (capacity, resolve_within) per handler.
DEMO_HANDLERS = {
    "logistics": (3, "20s"),
    "maintenance": (2, "30s"),
    "retention": (2, "30s"),
    "service": (3, "20s"),
    "vip": (2, "15s"),
    "supervisors": (6, "60s"),
    "triage": (5, "60s"),
}
# How often each simulated team resolves its oldest open exception.
RESOLVE_EVERY = {"supervisors": 5.0, "vip": 6.0}
RESOLVE_DEFAULT = 12.0


def demo_config(folder: Path, prefix: str) -> Path:
    """The shipped config with demo-sized capacities, deadlines and topic names."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["pipeline"] |= {"app_id": f"{prefix}casewatch", "partitions": 3}
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{prefix}{data['topics'][name]}"
    data["topics"]["handler_prefix"] = f"{prefix}casewatch.handler."
    data["rules"]["missing_delivery"] |= {"grace": "10s", "delay": "30s"}
    for name, (capacity, within) in DEMO_HANDLERS.items():
        data["handlers"][name] |= {"capacity": capacity, "resolve_within": within}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "casewatch-demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Demo:
    """Runs and watches everything; `stop()` undoes what `start()` did."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.folder = Path(args.state_dir)
        # Every run has its own topics and group: a clean slate, whatever ran before.
        self.prefix = f"demo{int(time.time())}."
        self.started_broker = False
        self.workers: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=12)
        self.by_status: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()
        self.sent = 0
        self.began = time.monotonic()
        self.bootstrap = ""
        self.config: Config | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not self.bootstrap:
            self.bootstrap = subprocess.run(
                [str(LOCAL_KAFKA), "start"], check=True, capture_output=True, text=True
            ).stdout.strip()
            self.started_broker = True
        path = demo_config(self.folder, self.prefix)
        self.config = load_config(path)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        subprocess.run(
            [sys.executable, "-m", "pipeline", "topics", "--config", str(path)],
            check=True,
            capture_output=True,
            env=env,
        )
        for i in range(2):
            port = self.args.metrics_port + i
            self.ports.append(port)
            log = (self.folder / f"worker-{i + 1}.log").open("wb")
            self.workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "worker", "--config", str(path)],
                    env={
                        **env,
                        "CASEWATCH_METRICS_PORT": str(port),
                        "CASEWATCH_STATE_DIR": str(self.folder / f"worker-{i + 1}"),
                    },
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                )
            )

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.started_broker:
            subprocess.run([str(LOCAL_KAFKA), "stop"], capture_output=True)

    # -- the three activities -------------------------------------------------------------

    async def publish(self, producer: AIOKafkaProducer) -> None:
        assert self.config is not None
        t = self.config.topics
        traffic = Traffic(self.rng)
        pending: list[tuple[float, dict[str, Any] | bytes]] = []
        next_round = time.monotonic() + 8  # let the workers join the group first
        while True:
            now_mono = time.monotonic()
            if now_mono >= next_round:
                base = datetime.now(UTC)
                pending += [(now_mono + s, e) for s, e in traffic.stories(base)]
                next_round = now_mono + 60
            due = [p for p in pending if p[0] <= now_mono]
            pending = [p for p in pending if p[0] > now_mono]
            batch: list[dict[str, Any] | bytes] = [e for _, e in due]
            if now_mono >= self.began + 8:
                batch += [
                    traffic.noise(datetime.now(UTC)) for _ in range(max(1, self.args.rate // 10))
                ]
            for event in batch:
                if isinstance(event, bytes):
                    await producer.send(t.interactions, event, key=b"broken")
                else:
                    topic = t.orders if event["type"].startswith("order.") else t.interactions
                    await producer.send(
                        topic, orjson.dumps(event), key=event["customer_id"].encode()
                    )
                self.sent += 1
            await asyncio.sleep(0.1)

    async def watch(self) -> None:
        """Follow the exception log (every routed record) for the view."""
        assert self.config is not None
        consumer = AIOKafkaConsumer(
            self.config.topics.exceptions,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            **Runtime.from_env().security.aiokafka_kwargs(),
        )
        await consumer.start()
        try:
            async for message in consumer:
                record = orjson.loads(message.value)
                self.recent.appendleft(record)
                self.by_status[record["status"]] += 1
                reason = record["route"]["reason"].split(":")[0].split(" ")[0]
                self.routed[reason] += 1
        finally:
            await consumer.stop()

    async def handle(self, producer: AIOKafkaProducer) -> None:
        """Simulated handler teams: each resolves its oldest open exception at its own pace."""
        assert self.config is not None
        config = self.config
        topics = {config.handler_topic(h): h for h in config.handlers}
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            **Runtime.from_env().security.aiokafka_kwargs(),
        )
        await consumer.start()
        queues: dict[str, dict[str, dict[str, Any]]] = {h: {} for h in config.handlers}
        last: dict[str, float] = {h: time.monotonic() for h in config.handlers}
        try:
            while True:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    handler = topics[tp.topic]
                    for m in messages:
                        record = orjson.loads(m.value)
                        if record["status"] == "resolved":
                            queues[handler].pop(record["exception_id"], None)
                        else:
                            queues[handler][record["exception_id"]] = record
                now = time.monotonic()
                for handler, queue in queues.items():
                    if queue and now - last[handler] >= RESOLVE_EVERY.get(handler, RESOLVE_DEFAULT):
                        last[handler] = now
                        exception_id, record = next(iter(queue.items()))
                        del queue[exception_id]
                        resolution = {
                            "exception_id": exception_id,
                            "handler": handler,
                            "status": "resolved",
                            "at": datetime.now(UTC).isoformat(),
                            "note": "handled in the demo",
                        }
                        await producer.send(
                            config.topics.resolutions,
                            orjson.dumps(resolution),
                            key=record["customer_id"].encode(),
                        )
        finally:
            await consumer.stop()


async def _run(demo: Demo) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=demo.bootstrap,
        linger_ms=20,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await producer.start()
    tasks = [
        asyncio.create_task(demo.publish(producer)),
        asyncio.create_task(demo.watch()),
        asyncio.create_task(demo.handle(producer)),
    ]
    try:
        deadline = time.monotonic() + demo.args.duration if demo.args.duration else None
        await show(demo, deadline, lambda: _raise_failed(tasks))
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()


def _raise_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]


def run(args: argparse.Namespace) -> int:
    # aiokafka's warnings while fresh topics elect leaders would scroll over the view.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    demo = Demo(args)
    print("starting: broker, topics, two workers (Ctrl-C stops everything)", file=sys.stderr)
    try:
        demo.start()
        asyncio.run(_run(demo))
    except KeyboardInterrupt:
        pass
    finally:
        print(
            "stopping the workers" + (" and the broker" if demo.started_broker else ""),
            file=sys.stderr,
        )
        demo.stop()
    print(summary(demo))
    print(f"worker logs: {demo.folder}/worker-1.log, worker-2.log")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `casewatch demo`."""
    p = sub.add_parser("demo", help="run everything locally with realistic traffic and a live view")
    p.add_argument("--rate", type=int, default=20, help="background events per second (default 20)")
    p.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (default: Ctrl-C)"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="first worker's /metrics port (the second: +1)",
    )
    p.add_argument(
        "--state-dir",
        default=str(Path.home() / ".cache" / "casewatch" / "demo"),
        help="config, worker state and logs",
    )
    p.set_defaults(func=run)
