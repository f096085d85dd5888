"""`casewatch demo`: the whole thing, locally, in one command.

It starts the local broker (unless `KAFKA_BOOTSTRAP_SERVERS` names one), creates the demo's
topics, runs two workers in one consumer group, and publishes realistic traffic: background
noise at `--rate` events per second, with the seed stories woven in every minute (the lost
modem and five calls, the leaking faucet, the noisy neighbours, a burst of failed deliveries,
a couple of broken messages). Simulated handler teams resolve their exceptions at a limited
pace, so queues fill, overflow and escalate. A live terminal view shows the newest exceptions,
each handler's queue against its capacity, and the dead letters, with the workers' `/metrics`
addresses, and the commands that follow a handler's queue and report on the run. Ctrl-C,
SIGTERM, SIGHUP (its terminal closed) or `--duration` stop everything it started, and nothing
else (a broker that was already running keeps running); a worker that exits stops the demo,
with the reason on screen (exit 1). pipeline/tools/demo/procs.py holds what starts and stops.

The demo's config is the shipped one with small capacities and short deadlines (seconds, not
hours) so that everything happens within a minute; each run has its own topics and group,
prefixed `demo<time>.`, and its own folder `$CASEWATCH_CACHE/demo/demo<time>/` (config
`casewatch.yaml`, worker logs and state, `pids.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
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
from pipeline.tools.demo.procs import (
    DemoError,
    Processes,
    cache_dir,
    follow_commands,
    last_words,
    metrics_ports,
    run_folder,
    say,
    stopping_on,
)
from pipeline.tools.demo.traffic import Traffic
from pipeline.tools.demo.view import show, show_line, summary

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
API_PORT = 6066  # the first worker's case API when free (Faust's usual web port)


def demo_config(path: Path, prefix: str) -> Path:
    """The shipped config with demo-sized capacities, deadlines and topic names."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    # Its events are published live, at their own times: lateness of seconds, not minutes, so
    # that a deadline fires seconds after it passes even while the noise keeps every input busy.
    data["pipeline"] |= {
        "app_id": f"{prefix}casewatch",
        "partitions": 3,
        "allowed_lateness": "5s",
    }
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{prefix}{data['topics'][name]}"
    data["topics"]["handler_prefix"] = f"{prefix}casewatch.handler."
    data["rules"]["missing_delivery"] |= {"grace": "10s", "delay": "30s"}
    for name, (capacity, within) in DEMO_HANDLERS.items():
        data["handlers"][name] |= {"capacity": capacity, "resolve_within": within}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Demo:
    """Runs and watches everything; `stop()` undoes what `start()` did."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        # Every run has its own topics, group and folder: a clean slate, whatever ran before.
        self.id, self.folder = run_folder(Path(args.state_dir or cache_dir() / "demo"))
        self.prefix = f"{self.id}."
        self.procs = Processes(self.folder)
        self.ports: list[int] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=12)
        self.found: set[str] = set()
        self.by_status: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()
        self.sent = 0
        self.began = time.monotonic()
        self.bootstrap = ""
        self.config: Config | None = None
        self.config_path = self.folder / "casewatch.yaml"
        self.commands: list[str] = []
        self.page = ""  # the CSR page of a story's customer, and how to sign in

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.bootstrap = self.procs.broker()
        demo_config(self.config_path, self.prefix)
        self.config = load_config(self.config_path)
        self.commands = follow_commands(self.config_path, self.bootstrap, "logistics")
        # The case API's staff token: the user's own, or one for this run.
        token = os.environ.get("CASEWATCH_STAFF_TOKENS", "").split(",")[0].strip()
        token = token or f"demo-{secrets.token_urlsafe(12)}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CASEWATCH_STAFF_TOKENS": os.environ.get("CASEWATCH_STAFF_TOKENS") or token,
        }
        topics = subprocess.run(
            [sys.executable, "-m", "pipeline", "topics", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            env=env,
        )
        if topics.returncode != 0:
            raise DemoError(f"creating the topics failed: {last_words(topics.stderr)}")
        self.ports = metrics_ports(self.args.metrics_port)
        self.api_ports = metrics_ports(None, preferred=API_PORT)
        for i, port in enumerate(self.ports):
            self.procs.worker(
                [sys.executable, "-m", "pipeline", "worker", "--config", str(self.config_path)],
                {
                    **env,
                    "CASEWATCH_METRICS_PORT": str(port),
                    "CASEWATCH_API_PORT": str(self.api_ports[i]),
                    "CASEWATCH_API_HOST": "127.0.0.1",
                    "CASEWATCH_STATE_DIR": str(self.folder / f"worker-{i + 1}"),
                },
            )

        # The first round's lost modem (pipeline/tools/demo/traffic.py): its customer's cases.
        api = f"http://127.0.0.1:{self.api_ports[0]}"
        self.commands.append(f"CASEWATCH_TOKEN={token} casewatch status ana-1 --url {api}")
        self.page = (
            f"{api}/cases/customer/ana-1 (the customer whose modem never arrives; sign in with "
            f"the staff token {token})"
        )

    def check(self) -> None:
        """Raise DemoError when a worker has exited."""
        self.procs.check()

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
                self.found.add(record["exception_id"])
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
        await show(demo, deadline, lambda: _raise_failed(tasks, demo))
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()


def _raise_failed(tasks: list[asyncio.Task[None]], demo: Demo) -> None:
    demo.check()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]


def run(args: argparse.Namespace) -> int:
    """`casewatch demo`: 0 when stopped by --duration or a signal, 1 when it could not go on."""
    # aiokafka's warnings while fresh topics elect leaders would scroll over the view.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    demo = Demo(args)
    failure: str | None = None
    try:
        with stopping_on() as caught:
            say("starting: broker, topics, two workers (Ctrl-C stops everything)")
            try:
                demo.start()
                for line in demo.commands:
                    say(f"while it runs: {line}")
                say(f"CSR page: {demo.page}")
                asyncio.run(_run(demo))
            except KeyboardInterrupt:
                pass
            except DemoError as exc:
                failure = str(exc)
            finally:
                _stop(demo, caught)
    except KeyboardInterrupt:  # a signal in the instant between the view's end and the stop
        pass
    if failure is not None:
        if failure:
            say(f"casewatch: demo: {failure}")
        return 1
    show_line(summary(demo))
    show_line(f"config and worker logs: {demo.folder}")
    return 0


def _stop(demo: Demo, caught: list[str]) -> None:
    """Stop what the demo started; signals from now on only hurry it up."""
    with stopping_on(interrupt=False) as again:
        demo.procs.hurry = again
        if caught:
            say(f"{caught[0]}: stopping")
        if demo.procs.workers or demo.procs.broker_pid:
            broker = " and the broker it started" if demo.procs.broker_pid else ""
            say(f"stopping the workers{broker}")
        demo.procs.stop()


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
        default=None,
        help="first worker's /metrics port, the second's is the next "
        "(default: 9464 if it and 9465 are free, else two free ports)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="where each run's folder (config, worker state and logs) goes "
        "(default: $CASEWATCH_CACHE/demo, ~/.cache/casewatch/demo without it)",
    )
    p.set_defaults(func=run)
