"""A memory soak at equilibrium: does one worker's resident memory stay flat once every window
has filled?

    .venv/bin/python bench/soak.py [--rate 800] [--warmup 15] [--minutes 10] [--out FILE]
    .venv/bin/python bench/soak.py --smoke    # CI: a minute and a half, to keep it working
    .venv/bin/python bench/soak.py --probe    # and where the worker's memory is (memprobe.py)

`bench/run.py --soak` runs its soak on the benchmark's worker, whose windows are real time (a
7-day dedupe window, 30-day rule windows) while its paced load compresses a model day into 30 s:
in ten minutes no event leaves any window, so every customer's state grows towards its bounds
and memory cannot be flat. Here the worker's durations are compressed by the same factor as the
load (a model day in 30 s: x2880), so the state reaches the equilibrium a real worker reaches
after its longest window:

- the shipped config with every duration of the pipeline, the rules and the handlers divided by
  2880 (`dedupe_window` 7d -> 210 s, `repeated_contact` 24h -> 30 s, `repeat_maintenance`
  30d -> 900 s, `missing_delivery` 72h -> 90 s and its `forget_after` 30d -> 900 s, SLAs
  2-48h -> 2.5-60 s; dispatch forgets closed exceptions after `dedupe_window`, so 210 s; the
  case view keeps closed cases for `cases.retention`, `topics.retention` when unset: 7d -> 210 s);
- customers: `--rate` x 10, so that each has the workload's 3 events per model day;
- a handler stand-in resolves every routed exception `--resolve-after` seconds (default 10 s:
  8 model hours) after it was routed, as handler teams do; without it dispatch would hold every
  exception ever opened;
- a paced load at `--rate` for `--warmup` minutes (not judged), then `--minutes` measured:
  RSS every 10 s, judged flat as `bench/run.py` does (least-squares slope over the second half,
  under 5% of RSS or 10 MiB over the soak), and the customers' state bytes at the start and end
  of the measured part (from the changelog).

Everything else is the benchmark's: the local broker or KAFKA_BOOTSTRAP_SERVERS, fresh topics
deleted at the end, the worker's default store (`memory://`). Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loader, phases, workload
from bench.procs import BenchError, Worker, create_topics, stop, up, write_config
from pipeline.config import load_config
from pipeline.core.durations import parse_duration
from pipeline.core.rules import FORGET_AFTER

COMPRESSION = 86400 / 30  # the paced load's model day in 30 s
DURATIONS = {
    "pipeline": ("dedupe_window",),
    "rules": ("window", "grace", "delay", "forget_after"),
    "handlers": ("resolve_within",),
}


def compressed(seconds: float) -> str:
    return f"{max(1, round(1000 * seconds / COMPRESSION))}ms"


def compress_config(path: Path) -> dict[str, str]:
    """Divide the config's windows, deadlines and SLAs by COMPRESSION in place; what changed."""
    data = yaml.safe_load(path.read_text())
    changed = {}
    for name in DURATIONS["pipeline"]:
        old = data["pipeline"][name]
        data["pipeline"][name] = compressed(parse_duration(old).total_seconds())
        changed[f"pipeline.{name}"] = f"{old} -> {data['pipeline'][name]}"
    for section in ("rules", "handlers"):
        for item, spec in data[section].items():
            for name in DURATIONS[section]:
                if name in spec or (name == "forget_after" and spec["kind"] == "absence"):
                    old = spec.get(name, FORGET_AFTER)  # forget_after's default when absent
                    spec[name] = compressed(parse_duration(old).total_seconds())
                    changed[f"{section}.{item}.{name}"] = f"{old} -> {spec[name]}"
    # The case view's retention (cases.retention, else the topics' retention): without it, every
    # case of the soak stays, up to cases.max_per_customer per customer, and memory grows.
    kept = load_config(path).case_retention()
    data.setdefault("cases", {})["retention"] = compressed(kept.total_seconds())
    changed["cases.retention"] = f"{kept} -> {data['cases']['retention']}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return changed


class Resolver:
    """The handler teams: every exception routed to a handler is resolved by it `after` s later."""

    def __init__(self, bootstrap: str, uid: str, after: float) -> None:
        self.bootstrap, self.uid, self.after = bootstrap, uid, after
        self.resolved = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self.run(),), daemon=True)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            f"{self.uid}.exceptions", bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await consumer.start()
        await producer.start()
        due: deque[tuple[float, bytes, bytes]] = deque()  # (when, key, resolution), in order
        # (exception, handler) -> when seen, in insertion (time) order: forgotten from the front
        done: dict[tuple[str, str], float] = {}
        try:
            while not self.stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for records in batches.values():
                    for r in records:
                        record = orjson.loads(r.value)
                        handler = record.get("route", {}).get("handler")
                        mark = (record["exception_id"], handler)
                        if record["status"] == "resolved" or not handler or mark in done:
                            continue
                        done[mark] = now
                        resolution = {
                            "exception_id": record["exception_id"],
                            "handler": handler,
                            "status": "resolved",
                            "note": "bench/soak.py",
                        }
                        due.append((now + self.after, r.key, orjson.dumps(resolution)))
                while due and due[0][0] <= now:
                    _, key, value = due.popleft()
                    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                    body = orjson.loads(value) | {"at": at}
                    await producer.send(f"{self.uid}.resolutions", orjson.dumps(body), key=key)
                    self.resolved += 1
                while done and next(iter(done.values())) < now - 600:
                    del done[next(iter(done))]
        finally:
            await producer.stop()
            await consumer.stop()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=800.0, help="offered events/s")
    p.add_argument(
        "--warmup",
        type=float,
        default=15.0,
        help="minutes before measuring (the longest compressed window is 15 min)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="minutes measured")
    p.add_argument("--resolve-after", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    p.add_argument("--keep", action="store_true", help="keep the run's folder (config, log)")
    p.add_argument(
        "--smoke", action="store_true", help="what CI runs: 200 events/s, 15 s warm-up, 1 min"
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="run the worker under bench/memprobe.py: the C heap, Python's blocks and object "
        "counts every 30 s, their change over the measured minutes in the JSON",
    )
    args = p.parse_args()
    if args.smoke:  # not judged: it shows the soak still runs end to end
        args.rate, args.warmup, args.minutes = 200.0, 0.25, 1.0
    from bench.run import broker

    customers = int(args.rate * 10)
    uid = f"soak{int(time.time())}{uuid.uuid4().hex[:4]}"
    folder = Path(tempfile.mkdtemp(prefix="casewatch-soak-"))

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    try:
        with broker() as bootstrap:
            config = write_config(folder, uid)
            changed = compress_config(config)
            create_topics(config, bootstrap)
            topics = loader.Topics(f"{uid}.interactions", f"{uid}.orders", 6)
            probe = folder / "memprobe.jsonl"
            program = None
            if args.probe:
                os.environ["CASEWATCH_MEMPROBE_FILE"] = str(probe)
                program = [sys.executable, str(Path(__file__).with_name("memprobe.py"))]
            worker = Worker.start(config, bootstrap, folder, "worker", "memory://", program)
            resolver = Resolver(bootstrap, uid, args.resolve_after)
            try:
                up([worker])
                resolver.thread.start()
                say(f"{customers:,} customers at {args.rate:,.0f} events/s; windows x1/2880")

                # One story for warm-up and measure, a model day per 30 s (COMPRESSION),
                # its episodes going on from one chunk to the next (workload.Story).
                story = workload.Story(customers, 86400 / COMPRESSION, f"{uid}-s", 1000)

                def make(chunk: int, rate: float, seconds: float) -> list[workload.Msg]:
                    return story.next(rate, seconds)

                warm, sent = phases.soak(worker, bootstrap, topics, args.rate, args.warmup, make, 0)
                say(f"warm-up: RSS {warm[0][1]:.0f} -> {warm[-1][1]:.0f} MiB")
                before = phases.state_size(bootstrap, uid)
                measured_from = time.time()

                samples, total = phases.soak(
                    worker, bootstrap, topics, args.rate, args.minutes, make, sent
                )
                after = phases.state_size(bootstrap, uid)
                rss_now, hwm = worker.rss_mb()
                probed = probe_change(probe, measured_from) if args.probe else None
            finally:
                resolver.stopping.set()
                stop([worker])
                resolver.thread.join(10)
                asyncio.run(loader.delete_topics(bootstrap, [uid]))
    except (BenchError, OSError) as exc:
        print(f"soak: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    verdict = phases.rss_flat(samples)
    consumed = samples[-1][2] - samples[0][2]
    result: dict[str, Any] = {
        "rate": args.rate,
        "customers": customers,
        "compression": COMPRESSION,
        "durations": changed,
        "warmup_minutes": args.warmup,
        "minutes": args.minutes,
        "resolved": resolver.resolved,
        "warmup_samples": [(round(t), round(mb, 1), int(n)) for t, mb, n in warm],
        "samples": [(round(t), round(mb, 1), int(n)) for t, mb, n in samples],
        # sent: the paced publisher pauses while it builds each 30 s chunk, so a little under
        # --rate; consumed: what the worker took in the same time (equal when it keeps up)
        "sent_events_per_s": (total - sent) / (60 * args.minutes),
        "achieved_events_per_s": consumed / max(1.0, samples[-1][0] - samples[0][0]),
        "rss_hwm_mb": round(hwm, 1),
        "rss_end_mb": round(rss_now, 1),
        **verdict,
        "state_before": asdict(before),
        "state_after": asdict(after),
    }
    if probed is not None:
        result["probe"] = probed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    state = [s.mean * s.customers / 2**20 for s in (before, after)]
    print(
        f"soak at equilibrium: {customers:,} customers, {args.rate:,.0f} events/s asked, "
        f"{result['sent_events_per_s']:,.0f}/s sent, {result['achieved_events_per_s']:,.0f}/s "
        f"consumed; {resolver.resolved:,} exceptions "
        f"resolved by the stand-in\n"
        f"RSS after {args.warmup:g} min warm-up {verdict['first_mb']} MiB, end {verdict['last_mb']} "
        f"MiB, max {verdict['max_mb']}; slope over the second half "
        f"{verdict['slope_mb_per_min']} MiB/min -> flat: {verdict['flat']}\n"
        f"states: {before.customers:,} -> {after.customers:,} customers, {before.mean:.0f} -> "
        f"{after.mean:.0f} B each, {state[0]:.1f} -> {state[1]:.1f} MiB\n"
        f"figures: {args.out}"
    )
    if probed is not None:
        print(probe_summary(probed))
    return 0


def probe_change(file: Path, since: float) -> dict[str, Any]:
    """What `memprobe.py` wrote from `since` on: every sample's figures (object counts left
    out), and the object types whose counts changed most between the first and the last."""
    lines = [orjson.loads(line) for line in file.read_bytes().splitlines() if line.strip()]
    measured = [s for s in lines if s["t"] >= since] or lines[-1:]
    if not measured:
        raise BenchError(f"the memory probe wrote nothing to {file}")
    first, last = measured[0], measured[-1]
    names = set(first["types"]) | set(last["types"])
    moved = sorted(
        ((n, last["types"].get(n, 0) - first["types"].get(n, 0)) for n in names),
        key=lambda item: -abs(item[1]),
    )
    return {
        "samples": [{k: v for k, v in s.items() if k != "types"} for s in measured],
        "types_first": first["types"],
        "types_changed": dict(moved[:15]),
    }


def probe_summary(probed: dict[str, Any]) -> str:
    first, last = probed["samples"][0], probed["samples"][-1]
    parts = [
        f"{name} {first[name]:,} -> {last[name]:,}"
        for name in (
            "rss",
            "heap_in_use",
            "heap_free",
            "mmapped",
            "py_arenas",
            "py_used",
            "py_free",
            "objects",
        )
        if name in first
    ]
    changed = ", ".join(f"{n} {d:+,}" for n, d in list(probed["types_changed"].items())[:8])
    return f"memory probe over the measured minutes: {'; '.join(parts)}\nobjects: {changed}"


if __name__ == "__main__":
    sys.exit(main())
