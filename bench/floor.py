"""What Faust itself costs per message: the engine's floor, on the benchmark's own data.

    .venv/bin/python bench/floor.py [--events 60000] [--customers 20000] [--rounds 1]
    .venv/bin/python bench/floor.py --smoke     # CI: every way a variant is built, once

Publishes the small workload (bench/workload.py) to fresh topics, then runs, each in its own
process and consumer group, Faust apps that do less and less of Casewatch's work:

- `ceiling`: bench/run.py's plain aiokafka loop (consume, `parse_event`, one record out);
- `stock-noop`: the same as `faust-noop` below, with Faust's own App and consumer;
- `faust-noop`: one agent over the two source topics (raw bytes, the worker's settings and its
  consumer, pipeline/runtime/durable.py), iterating `stream.events()` and doing nothing;
- `faust-parse`: the same, validating each value with `parse_event`;
- `faust-table`: + one write per event of a ~900-byte value to a changelog-backed table, through
  Faust's `Table.__setitem__` (as the worker wrote a customer's state before `StateTable`);
- `fast-table`: the same write through `pipeline.runtime.durable.StateTable`, as the worker writes a
  customer's state: to the table's store, its changelog record to the producer directly, held
  and sent with others;
- `take-noop`: `stream.take_events(500, within=0.01)`, doing nothing with the batch;
- `take-table`: batches, `parse_event` each, one table write per customer per batch;
- `batch-noop`: no agent: each partition's fetched records handed as one list from the fetch
  loop to `App.on_batch` and acknowledged together (pipeline/runtime/offsets.py), as the worker
  reads its source topics; doing nothing with them;
- `batch-table`: the same, `parse_event` and one `StateTable` write per event (`fast-table`'s
  work without the per-message agent path);
- `worker`: `python -m pipeline worker` itself (every default rule, routing, context, metrics),
  as bench/run.py's one-worker drain.

Each prints events/s (first event to last) and events per CPU second (the process's CPU time
over the same span). Together with the ceiling (a plain aiokafka loop, `bench/run.py`) and the
worker's drain they say how much of a worker's cost is the engine and how much Casewatch
(docs/performance.md, "The engine's floor").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = (
    "ceiling",
    "stock-noop",
    "faust-noop",
    "faust-parse",
    "faust-table",
    "fast-table",
    "take-noop",
    "take-table",
    "batch-noop",
    "batch-table",
    "worker",
)
STATE = b"x" * 900  # about a customer's stored state


def child(variant: str, bootstrap: str, prefix: str, total: int, folder: str, result: str) -> None:
    """One variant in this process: consume `total` events, write the figures as JSON to
    `result` (Faust's worker takes over stdout)."""
    if variant == "ceiling":
        ceiling(bootstrap, prefix, total, result)
        return
    import faust

    from pipeline.core.ingest import parse_event
    from pipeline.runtime.durable import App, StateTable

    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    # stock-noop: Faust's own App and consumer, to tell their cost from
    # pipeline/runtime/offsets.py's
    app = (faust.App if variant.startswith("stock") else App)(
        f"{prefix}-{variant}-{uuid.uuid4().hex[:6]}",  # a fresh group each run
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=folder,
        autodiscover=False,
        web_enabled=False,
        topic_partitions=6,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_max_request_size=4 * 1024 * 1024,
        consumer_max_fetch_size=4 * 1024 * 1024,
        producer_linger=float(os.environ.get("FLOOR_LINGER_MS", "0")) / 1000,
    )
    ours = cast(App, app)  # our App, but for stock-noop (which uses neither below)
    sources = app.topic(f"{prefix}.interactions", f"{prefix}.orders", partitions=6, **raw)
    # Outside stream iteration (a batch) Faust needs the partitioner to place a key.
    table = app.Table(
        "floor",
        partitions=6,
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(**raw),
        use_partitioner=variant.startswith("take"),
    )
    # only our App sends held table writes before its commits (stock-noop is Faust's own)
    direct = StateTable(ours, table) if variant in ("fast-table", "batch-table") else None
    seen = [0]
    marks: dict[str, float] = {}

    def count(n: int) -> None:
        if not seen[0]:
            marks["t0"], marks["cpu0"] = time.perf_counter(), time.process_time()
        seen[0] += n
        if seen[0] >= total:
            marks["t1"], marks["cpu1"] = time.perf_counter(), time.process_time()
            out = {
                "variant": variant,
                "events": seen[0],
                "seconds": marks["t1"] - marks["t0"],
                "cpu_seconds": marks["cpu1"] - marks["cpu0"],
            }
            Path(result).write_text(json.dumps(out))
            os._exit(0)

    async def per_event(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            if not variant.endswith("noop"):
                parse_event(msg.value)
            if variant == "faust-table":
                table[msg.key] = STATE
            elif direct is not None:  # fast-table, as the worker writes (runtime/durable.py)
                await direct.put(msg.key, STATE, msg.partition)
            count(1)

    async def batched(stream: Any) -> None:
        async for events in stream.take_events(500, within=0.01):
            if variant == "take-table":
                touched = set()
                for event in events:
                    parse_event(event.message.value)
                    touched.add(event.message.key)
                for key in touched:
                    table[key] = STATE
            count(len(events))

    async def on_batch(records: list[Any]) -> None:
        if direct is not None:
            for record in records:
                parse_event(record.value)
                await direct.put(record.key, STATE, record.partition)
        count(len(records))

    if variant.startswith("batch"):
        app.topics.add(sources)
        ours.batch_topics = frozenset(sources.topics)
        ours.on_batch = on_batch
    else:
        app.agent(sources, name="floor")(batched if variant.startswith("take") else per_event)
    from faust.worker import Worker

    @app.task  # type: ignore[untyped-decorator]
    async def quiet() -> None:
        # Debug records were built (and dropped) for every send: not what a worker does.
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)

    Worker(app, loglevel="warn").execute_from_commandline()  # as `casewatch worker` runs it


def ceiling(bootstrap: str, prefix: str, total: int, result: str) -> None:
    """bench/run.py's ceiling loop (aiokafka, `parse_event`, one record out per event)."""
    from bench import loader

    topics = loader.Topics(f"{prefix}.interactions", f"{prefix}.orders", 6)
    scratch = f"{prefix}.scratch{uuid.uuid4().hex[:4]}"
    asyncio.run(loader.create_topic(bootstrap, scratch, 6))
    cpu = time.process_time()
    rate = asyncio.run(loader.ceiling(bootstrap, topics, scratch, total, f"{scratch}-ceiling"))
    cpu = time.process_time() - cpu  # includes the client's start: a little over
    out = {"variant": "ceiling", "events": total, "seconds": total / rate, "cpu_seconds": cpu}
    Path(result).write_text(json.dumps(out))


def worker(bootstrap: str, prefix: str, total: int) -> dict[str, Any]:
    """The Casewatch worker on the same topics, a fresh app id (group, tables) each time."""
    from bench import phases
    from bench.procs import Worker, create_topics, stop, write_config

    folder = Path(tempfile.mkdtemp(prefix="casewatch-floor-"))
    config = write_config(folder, prefix, app_id=f"{prefix}-worker-{uuid.uuid4().hex[:6]}")
    create_topics(config, bootstrap)
    w = Worker.start(config, bootstrap, folder, "worker", "memory://")
    try:
        d = phases.drain([w], total, 600)
    finally:
        stop([w])
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "variant": "worker",
        "events": total,
        "seconds": d.seconds,
        "cpu_seconds": d.cpu_seconds,
    }


def show(row: dict[str, Any]) -> None:
    print(
        f"round {row['round']} {row['variant']:12} {row['events'] / row['seconds']:8,.0f} "
        f"events/s {row['events'] / row['cpu_seconds']:8,.0f} per CPU s",
        flush=True,
    )


def publish(bootstrap: str, prefix: str, customers: int, events: int) -> int:
    from bench import loader, workload

    now = time.time()
    backlog = workload.build(customers, events, now - 86400, 86400, prefix)
    topics = loader.Topics(f"{prefix}.interactions", f"{prefix}.orders", 6)

    async def go() -> None:
        await loader.create_topic(bootstrap, topics.interactions, 6)
        await loader.create_topic(bootstrap, topics.orders, 6)
        await loader.load(bootstrap, topics, backlog)

    asyncio.run(go())
    return len(backlog)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", choices=VARIANTS, action="append")
    p.add_argument("--profile", action="store_true", help="py-spy each variant (summary on stderr)")
    p.add_argument(
        "--child", nargs=5, metavar=("VARIANT", "BOOTSTRAP", "PREFIX", "TOTAL", "RESULT")
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="what CI runs: 3,000 events; the ceiling, stock-noop (Faust's own App), faust-noop, "
        "faust-table, fast-table (StateTable), batch-table (App.on_batch) and the worker once",
    )
    args = p.parse_args()
    if args.smoke:
        args.events, args.customers, args.rounds = 3_000, 1_000, 1
        # every way a variant is built: Faust's App and ours, Faust's table and StateTable
        args.only = [
            "ceiling",
            "stock-noop",
            "faust-noop",
            "faust-table",
            "fast-table",
            "batch-table",
            "worker",
        ]
    if args.child:
        variant, bootstrap, prefix, total, result = args.child
        # The child ends with os._exit (Faust's worker would not return): its data goes in
        # the folder of its result, which the parent removes.
        folder = Path(result).parent / "data"
        folder.mkdir(exist_ok=True)
        child(variant, bootstrap, prefix, int(total), str(folder), result)
        return 0

    from bench import loader, profile
    from bench.run import broker

    with broker() as bootstrap:
        prefix = f"floor{int(time.time())}{uuid.uuid4().hex[:4]}"
        total = publish(bootstrap, prefix, args.customers, args.events)
        print(f"published {total:,} events to {prefix}.*", file=sys.stderr)
        rows = []
        try:
            for r in range(args.rounds):
                for variant in args.only or VARIANTS:
                    if variant == "worker":
                        rows.append(worker(bootstrap, prefix, total) | {"round": r + 1})
                        show(rows[-1])
                        continue
                    scratch = Path(tempfile.mkdtemp(prefix="casewatch-floor-"))
                    result = scratch / "result.json"
                    cmd = [sys.executable, __file__, "--child", variant, bootstrap, prefix]
                    cmd += [str(total), str(result)]
                    raw = result.with_name("profile.txt")
                    if args.profile:
                        spy = str(Path(sys.executable).parent / "py-spy")
                        cmd = [
                            spy,
                            "record",
                            "--rate",
                            "200",
                            "--format",
                            "raw",
                            "-o",
                            str(raw),
                            "--",
                            *cmd,
                        ]
                    run = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=600,
                    )
                    if not result.exists():
                        print(f"{variant}: no result\n{run.stderr[-3000:]}", file=sys.stderr)
                        return 1
                    rows.append(json.loads(result.read_text()) | {"round": r + 1})
                    show(rows[-1])
                    if args.profile and raw.exists():
                        print(f"{variant} ({raw}):\n{profile.summarise(raw)}", file=sys.stderr)
                    shutil.rmtree(scratch, ignore_errors=True)
        finally:
            asyncio.run(loader.delete_topics(bootstrap, [prefix]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
