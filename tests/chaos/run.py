"""The chaos harness: nothing lost and nothing spurious under crashes, scaling and a broker bounce.

    .venv/bin/python tests/chaos/run.py            # full: 200,000 events, 10,000 customers, 10+ kills
    .venv/bin/python tests/chaos/run.py --short    # CI: a few minutes

What it does, against a real broker it starts itself (deploy/kafka/local-kafka, its own port):
1. generates a workload (customers with contacts, complaints, maintenance, orders; some orders
   never delivered, with deadlines that pass while the run goes on) and computes the oracle:
   `casewatch replay` of the same events, up to the moment of the final check;
2. runs workers in one consumer group on 6 partitions: 1, then 3, then 1 again, killing a
   random worker with SIGKILL at random moments (some right after a start, i.e. during a
   rebalance or state recovery) and restarting it; the broker is stopped and started once;
3. publishes the events paced over the run, waits until everything is consumed and every
   deadline has passed, then reads every handler topic with a `read_committed` consumer and
   compares (exception_id, status) with the oracle: lost, spurious, duplicates. Every record
   a handler topic received counts, not only the last state of an exception: an open the
   oracle lacks is spurious however soon it was resolved (and its resolution is too).
Exit status 1 when anything was lost or spurious. Figures are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.config import DEFAULT_CONFIG  # noqa: E402
from pipeline.tools.replay import partition_for  # noqa: E402
from tests.integration.workers import lag, lagging  # noqa: E402
from tests.ports import free_base  # noqa: E402

KAFKA = REPO / "deploy" / "kafka" / "local-kafka"
PY = sys.executable


def log(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S.%f')[:-3]}] {message}", flush=True)


def workload(customers: int, events: int, start: datetime, seed: int) -> list[dict[str, Any]]:
    """Events in time order, the newest at `start`; some deadlines fall 30-120 s after it."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    per = max(4, events // customers)
    span = 6 * 3600.0

    def t(seconds_ago: float) -> str:
        return (start - timedelta(seconds=seconds_ago)).isoformat()

    for c in range(customers):
        cid = f"cust-{c:05d}"
        n = 0

        def add(type_: str, ago: float, cid: str = cid, **fields: Any) -> None:
            nonlocal n
            n += 1
            out.append(
                {
                    "event_id": f"{cid}-{n}",
                    "type": type_,
                    "occurred_at": t(ago),
                    "customer_id": cid,
                    **fields,
                }
            )

        add("customer.profile", span, tier=rng.choice(["standard"] * 8 + ["gold", "platinum"]))
        for _ in range(per - 1):
            ago = rng.uniform(0, span - 1)
            roll = rng.random()
            if roll < 0.6:
                add(
                    "interaction.contact",
                    ago,
                    channel="call",
                    category=rng.choice(["billing", "internet", "tv", "moving"]),
                    sentiment=rng.choice(["neutral"] * 5 + ["negative"]),
                )
            elif roll < 0.7:
                add("interaction.complaint", ago, channel="email", category="service")
            elif roll < 0.8:
                add(
                    "interaction.maintenance_requested",
                    ago,
                    asset_id=f"{cid}/asset-{rng.randrange(3)}",
                    category="repair",
                )
            else:
                order = f"{cid}-o{n}"
                fate = rng.random()
                if fate < 0.1:  # never delivered: the deadline passes during the run
                    promise = (
                        start + timedelta(seconds=rng.uniform(30, 120)) - timedelta(hours=4)
                    ).isoformat()
                    add("order.shipped", min(ago, 3000), order_id=order, promised_by=promise)
                else:
                    # promised two days ahead: no deadline near the moment of the check
                    add("order.shipped", ago + 600, order_id=order, promised_by=t(-2 * 86400))
                    if fate < 0.15:
                        add("order.delivery_failed", ago, order_id=order, reason="not home")
                    else:
                        add("order.delivered", ago, order_id=order)
    out.sort(key=lambda e: e["occurred_at"])
    return out


class Cluster:
    """The broker and the workers of one run."""

    def __init__(self, folder: Path, port: int, config: Path) -> None:
        self.folder, self.port, self.config = folder, port, config
        self.env = {**os.environ, "CASEWATCH_KAFKA_PORT": str(port)}
        self.env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        self.bootstrap = ""
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.started = 0
        self.kills = 0
        self.crashed = 0
        self.bounces = 0
        self.store = "memory://"
        self.failover_at: datetime | None = None
        self.nodes = 1
        self.trace = False
        self.loglevel = "warning"

    def broker(self, *action: str) -> None:
        for attempt in range(3):  # a start can fail while the old process lets go of its port
            done = subprocess.run(
                [str(KAFKA), *action], env=self.env, capture_output=True, text=True
            )
            if not done.returncode:
                break
            log(f"local-kafka {' '.join(action)} failed (attempt {attempt + 1}): retrying")
            time.sleep(5)
        else:
            raise RuntimeError(f"local-kafka {action} failed:\n{done.stderr[-3000:]}")
        if action == ("start",):
            self.bootstrap = done.stdout.strip()

    def worker_env(self, slot: int) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CASEWATCH_METRICS_PORT": "0",  # no /metrics: progress is read from the group lag
            "CASEWATCH_API_PORT": "0",  # no case API: several workers share this host
            "CASEWATCH_STATE_DIR": str(self.folder / f"state-{slot}"),
            "CASEWATCH_STORE": self.store,
        }

    def start(self, slot: int) -> None:
        # one log per start: a restarted worker's log is not mixed with its predecessor's
        name = f"worker-{slot}-{self.started + 1:02d}.log"
        log(f"start worker {slot} (log {name})")
        out = (self.folder / name).open("ab")
        # traced: tests/chaos/traced.py, each step of each worker written down in the folder
        program = (
            [str(REPO / "tests" / "chaos" / "traced.py")] if self.trace else ["-m", "pipeline"]
        )
        self.workers[slot] = subprocess.Popen(
            [PY, *program, "worker", "--config", str(self.config), "--loglevel", self.loglevel],
            env=self.worker_env(slot) | {"CASEWATCH_TRACE_DIR": str(self.folder)},
            stdout=out,
            stderr=out,
            cwd=REPO,
        )
        self.started += 1

    def supervise(self) -> int:
        """Restart any worker that exited on its own (as Kubernetes would); return how many."""
        restarted = 0
        for slot, proc in list(self.workers.items()):
            if proc.poll() is not None:
                log(f"worker {slot} exited by itself (code {proc.returncode}): restarting it")
                del self.workers[slot]
                self.start(slot)
                restarted += 1
        return restarted

    def kill(self, slot: int) -> None:
        proc = self.workers.pop(slot)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1

    def stop(self, slot: int) -> None:
        proc = self.workers.pop(slot)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def publish(
    bootstrap: str,
    config: dict[str, Any],
    events: list[dict[str, Any]],
    seconds: float,
    stop: asyncio.Event,
    failed: list[int],
) -> None:
    """Publish the events in order, paced over `seconds`, riding out the broker's restart."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20
    )
    await producer.start()
    t = config["topics"]
    began = time.monotonic()
    # send() only queues a record: its delivery can still fail (a batch expired while the
    # broker was down). Every delivery is checked, or the run would blame the workers.
    deliveries: list[tuple[int, asyncio.Future[Any]]] = []
    try:
        for i, event in enumerate(events):
            topic = t["orders"] if event["type"].startswith("order.") else t["interactions"]
            while True:
                try:
                    deliveries.append(
                        (
                            i,
                            await producer.send(
                                topic, orjson.dumps(event), key=event["customer_id"].encode()
                            ),
                        )
                    )
                    break
                except Exception as exc:  # the broker bounce: wait and retry the same event
                    log(f"publish retry: {exc!r}")
                    await asyncio.sleep(1)
            if i % 500 == 0:
                ahead = began + seconds * i / len(events) - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
        for i, delivery in deliveries:
            try:
                await delivery
            except Exception as exc:
                failed.append(i)
                log(f"publish of event {i} ({events[i]['event_id']}) failed: {exc!r}")
    finally:
        await producer.stop()
        stop.set()


async def partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the topics, once the consumer's metadata has them."""
    for topic in topics:
        await consumer._client._wait_on_metadata(topic)
    return [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]


async def read_handlers(bootstrap: str, topics: list[str]) -> list[dict[str, Any]]:
    """Every committed record of the handler topics: read up to each partition's end offset
    (taken first), not until the topics look quiet, which a slow leader can fake."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        parts = await partitions(consumer, topics)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + 300

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            if time.monotonic() > deadline:
                raise RuntimeError("could not read the handler topics to their end in 300 s")
            batch = await consumer.getmany(timeout_ms=1000)
            records += [orjson.loads(m.value) for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    return records


async def records_in(bootstrap: str, topics: list[str]) -> int:
    """How many records the topics hold (end minus start offsets; no transactions here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = await partitions(consumer, topics)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        return sum(ends[tp] - starts[tp] for tp in parts)
    finally:
        await consumer.stop()


def chaos(
    cluster: Cluster,
    rng: random.Random,
    publishing_done: asyncio.Event,
    kills: int,
    bounce: bool,
    loop_seconds: float,
) -> None:
    """Scale 1 -> 3, kill -9 random workers (restarting them), bounce the broker, scale to 1."""
    # runs in a thread beside the publisher
    cluster.start(0)
    time.sleep(loop_seconds * 0.08)
    log("scale 1 -> 3")
    cluster.start(1)
    cluster.start(2)
    interval = loop_seconds * 0.8 / (kills + 1)
    bounced = False
    for k in range(kills):
        pause = rng.uniform(0.3, 1.7) * interval
        while pause > 0:
            time.sleep(min(pause, 1.0))
            pause -= 1.0
            cluster.crashed += cluster.supervise()
        slot = rng.choice(sorted(cluster.workers))
        log(f"kill -9 worker {slot} ({k + 1}/{kills})")
        cluster.kill(slot)
        # sometimes restart at once (it rejoins during the rebalance the kill caused)
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 3))
        cluster.start(slot)
        if bounce and not bounced and k >= kills // 2:
            if cluster.nodes == 3:  # one of three brokers: the others keep serving
                log("broker 2 of 3 restart")
                cluster.broker("stop-node", "2")
                time.sleep(2)
                cluster.broker("start-node", "2")
            else:
                log("broker restart")
                cluster.broker("stop")
                time.sleep(2)
                cluster.broker("start")
            bounced = True
            cluster.bounces += 1
    log("scale 3 -> 1")
    for slot in sorted(cluster.workers)[1:]:
        cluster.stop(slot)
    # The failover: once the input has stopped, kill the worker that holds every pending
    # deadline; its replacement must fire each exactly once with no further input.
    while not publishing_done.is_set():
        time.sleep(0.5)
        cluster.crashed += cluster.supervise()
    time.sleep(5)
    slot = sorted(cluster.workers)[0]
    log(f"failover: kill -9 worker {slot} with no further input, then a fresh one")
    cluster.failover_at = datetime.now(UTC)
    cluster.kill(slot)
    cluster.start(slot)


def lag_now(bootstrap: str, group: str, topics: list[str]) -> int | None:
    """The group's lag on `topics`, or None while the broker cannot say (a coordinator or a
    leader not elected yet after a restart)."""
    try:
        return asyncio.run(lag(bootstrap, group, topics))
    except KafkaError as exc:
        log(f"the group's lag is not known yet ({type(exc).__name__}): asking again")
        return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--short", action="store_true", help="the CI version: fewer events and kills"
    )
    parser.add_argument("--events", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--seconds", type=float, help="how long to publish over")
    parser.add_argument(
        "--port", type=int, help="the broker's port (default: a free one, tests/ports.py)"
    )
    parser.add_argument("--no-bounce", action="store_true", help="do not restart the broker")
    parser.add_argument(
        "--keep-broker", action="store_true", help="leave the broker(s) running at the end"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three brokers (replication 3, min.insync.replicas 2); the bounce restarts one",
    )
    parser.add_argument("--store", default="memory://", help="the workers' table store")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--trace",
        action="store_true",
        help="workers write down every step (tests/chaos/traced.py) in the run's folder",
    )
    parser.add_argument("--loglevel", default="warning", help="the workers' log level")
    parser.add_argument("--out", default=str(REPO / "tests" / "chaos" / "results" / "latest.json"))
    args = parser.parse_args()
    events_n = args.events or (20_000 if args.short else 200_000)
    customers = args.customers or (2_000 if args.short else 10_000)
    kills = args.kills if args.kills is not None else (4 if args.short else 12)
    seconds = args.seconds or (60.0 if args.short else 240.0)
    rng = random.Random(args.seed)
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"casewatch-chaos-{os.getpid()}"
    folder.mkdir(parents=True)

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    run_id = f"chaos{int(time.time())}"
    data["pipeline"] |= {"app_id": run_id, "partitions": 6}
    if args.cluster:
        data["pipeline"]["replication_factor"] = 3
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{run_id}.{name}"
    data["topics"]["handler_prefix"] = f"{run_id}.handler."
    for handler in data["handlers"].values():  # no capacity or SLA effects: those depend on
        handler |= {"capacity": 1_000_000, "resolve_within": "30d"}  # cross-partition order
    config = folder / "casewatch.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    events = workload(customers, events_n, start - timedelta(seconds=seconds), args.seed)
    # (a little over events_n: orders bring their deliveries; nothing is cut, or the newest
    # events, the shipments whose deadlines pass during the run, would be the ones cut)
    file = folder / "events.jsonl"
    file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    log(
        f"{len(events)} events, {customers} customers, {kills} kills, publishing over {seconds:.0f}s"
    )

    cluster = Cluster(folder, args.port or free_base(0, 1, 10, 11, 20, 21), config)
    cluster.store = args.store
    cluster.trace, cluster.loglevel = args.trace, args.loglevel
    if args.cluster:
        cluster.nodes = 3
        cluster.env["CASEWATCH_KAFKA_NODES"] = "3"
    cluster.broker("start")
    figures: dict[str, Any] = {}
    try:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap}
        subprocess.run(
            [PY, "-m", "pipeline", "topics", "--config", str(config)],
            env=env,
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        began = time.monotonic()
        unpublished: list[int] = []

        async def run() -> None:
            done = asyncio.Event()
            publisher = asyncio.create_task(
                publish(cluster.bootstrap, data, events, seconds, done, unpublished)
            )
            await asyncio.to_thread(chaos, cluster, rng, done, kills, not args.no_bounce, seconds)
            await publisher

        asyncio.run(run())
        log("publishing done; waiting for the last worker to drain and deadlines to pass")
        sources = [data["topics"]["interactions"], data["topics"]["orders"], f"{run_id}-rekey"]
        # a group that has not caught up by then has stalled: fail, naming the partitions
        deadline = time.monotonic() + (300 if args.short else 900)
        recovered_at = None
        while time.monotonic() < deadline:
            cluster.crashed += cluster.supervise()
            behind = lag_now(cluster.bootstrap, run_id, sources)
            if behind is None:  # the broker is coming back from its restart
                time.sleep(2)
                continue
            if behind == 0 and recovered_at is None:
                recovered_at = time.monotonic()
                log("consumer group caught up with the input (lag 0)")
            # the dispatch topic too: clock reports keep arriving (about 2 a second per
            # partition) and offsets are committed every 2.8 s, so a small lag is idle
            if (
                recovered_at
                and datetime.now(UTC) > start + timedelta(seconds=150)
                and (lag_now(cluster.bootstrap, run_id, [f"{run_id}-dispatch"]) or 0) < 60
            ):
                break
            time.sleep(2)
        else:
            try:
                behind_by: Any = asyncio.run(lagging(cluster.bootstrap, run_id, sources))
            except KafkaError as exc:
                behind_by = f"unknown: the broker did not answer ({type(exc).__name__})"
            log(f"the group did not catch up: {behind_by}")
            figures["stalled_partitions"] = behind_by
        time.sleep(5)
        until = datetime.now(UTC)
        if unpublished:  # the oracle sees what the workers could see
            log(f"{len(unpublished)} events could not be published: left out of the oracle")
            skip = set(unpublished)
            file = folder / "published.jsonl"
            file.write_bytes(
                b"".join(orjson.dumps(e) + b"\n" for i, e in enumerate(events) if i not in skip)
            )
        on_broker = asyncio.run(
            records_in(
                cluster.bootstrap, [data["topics"]["interactions"], data["topics"]["orders"]]
            )
        )
        oracle_run = subprocess.run(
            [
                PY,
                "-m",
                "pipeline",
                "replay",
                str(file),
                "--config",
                str(config),
                "--until",
                until.isoformat(),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        oracle_records = {
            (r["exception_id"], r["status"]): r
            for r in map(json.loads, oracle_run.stdout.splitlines())
        }
        oracle = Counter(oracle_records)
        topics = sorted({f"{run_id}.handler.{h}" for h in data["handlers"]})
        records = asyncio.run(read_handlers(cluster.bootstrap, topics))
        got = Counter((r["exception_id"], r["status"]) for r in records)
        (folder / "oracle.jsonl").write_text(oracle_run.stdout)
        (folder / "read.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        lost = sorted(set(oracle) - set(got))
        spurious = sorted(set(got) - set(oracle))
        duplicates = sum(n - 1 for n in got.values() if n > 1)
        # Deadlines pending when the last worker was killed: each must fire exactly once.
        failover = cluster.failover_at
        pending = [
            key
            for key, r in oracle_records.items()
            if r["kind"] == "absence"
            and key[1] == "open"
            and failover is not None
            and datetime.fromisoformat(r["detected_at"]) > failover
        ]
        fired = Counter(got[key] for key in pending)
        figures |= {
            "events": len(events),
            "events_not_published": len(unpublished),
            # what the input topics hold: each published event once (an idempotent producer)
            "input_records_on_broker": on_broker,
            "customers": customers,
            "workers_started": cluster.started,
            "kills": cluster.kills,
            "worker_crashes_restarted": cluster.crashed,
            "broker_restarts": cluster.bounces,
            "expected_records": len(oracle),
            "records_read": sum(got.values()),
            "lost": len(lost),
            "spurious": len(spurious),
            "duplicates": duplicates,
            "deadlines_pending_at_failover": len(pending),
            "deadlines_fired_once": fired[1],
            "deadlines_not_fired": fired[0],
            "deadlines_fired_more_than_once": sum(n for times, n in fired.items() if times > 1),
            "run_seconds": round(time.monotonic() - began, 1),
            "drained_seconds_after_publishing": round(
                (recovered_at or time.monotonic()) - began - seconds, 1
            ),
            "mode": "at-least-once",
            "store": args.store,
            "brokers": cluster.nodes,
        }
        # `lost` counts records (an exception lost as open and as resolved is two); this counts
        # the exceptions they belong to
        figures["lost_exceptions"] = len({exception_id for exception_id, _ in lost})
        # which source partitions the lost records' customers are on (records, as `lost`, so
        # the counts add up to it): a loss confined to one partition points at that
        # partition's handover, not at a rule
        figures["lost_by_source_partition"] = dict(
            sorted(
                Counter(partition_for(oracle_records[k]["customer_id"], 6) for k in lost).items()
            )
        )
        for figure, value in figures.items():
            print(f"{figure:35} {value}")
        for name, keys in (("lost", lost), ("spurious", spurious)):
            for key in keys[:10]:
                r = oracle_records.get(key) or next(
                    x for x in records if (x["exception_id"], x["status"]) == key
                )
                print(
                    f"{name}: {key[1]} {r['rule']} {r['exception_id']} {r['customer_id']} "
                    f"{r['subject']} event_time={r['event_time']}"
                )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
        failed = lost or spurious or figures["deadlines_not_fired"]
        if lost or spurious:  # where it happened, while the folder is at hand
            subprocess.run(
                [PY, str(REPO / "tests" / "chaos" / "analyse.py"), str(folder)], cwd=REPO
            )
        if on_broker != len(events) - len(unpublished):
            log(f"the input topics hold {on_broker} records, not {len(events) - len(unpublished)}")
            failed = True
        return 1 if failed or "stalled_partitions" in figures else 0
    finally:
        for slot in list(cluster.workers):
            cluster.stop(slot)
        if args.keep_broker:
            log(f"broker left running for inspection: {cluster.bootstrap}")
        else:
            subprocess.run([str(KAFKA), "stop", "--purge"], env=cluster.env, capture_output=True)
        log(f"logs and data of this run: {folder}")


if __name__ == "__main__":
    sys.exit(main())
