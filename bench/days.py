"""What an event costs as its customer's state grows: one worker drains several days of the same
customers, one day after the other, and prints the CPU per event of each.

    .venv/bin/python bench/days.py                        # 3 days, 20,000 customers, 60,000 a day
    .venv/bin/python bench/days.py --days 3 --customers 20000 --events 60000 --out FILE

Each day is published at once while the worker is idle, then drained (bench/phases.drain: the
worker's CPU from its first event of the day to the last). The days are consecutive model days
ending now, with episodes starting on their own day after the first. The broker:
KAFKA_BOOTSTRAP_SERVERS, else a local one of the run's own (as bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loader, phases, report, workload
from bench.procs import Worker, create_topics, stop, up, write_config
from bench.run import broker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--events", type=int, default=60_000, help="events a day")
    p.add_argument("--out", type=Path, default=None, help="also write the lines to FILE")
    args = p.parse_args(argv)
    lines = [
        f"bench/days.py --days {args.days} --customers {args.customers} --events {args.events}"
        f" (commit {report.git_head(Path(__file__).resolve().parents[1])}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    ]
    print(lines[0], flush=True)
    with broker() as bootstrap:
        for line in run(args, bootstrap):
            print(line, flush=True)
            lines.append(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written: {args.out}")
    return 0


def run(args: argparse.Namespace, bootstrap: str) -> list[str]:
    unique = f"benchdays{int(time.time())}{uuid.uuid4().hex[:4]}"
    folder = Path(tempfile.mkdtemp(prefix="casewatch-bench-days-"))
    config = write_config(folder, unique)
    topics = loader.Topics(f"{unique}.interactions", f"{unique}.orders", 6)
    create_topics(config, bootstrap)
    worker = Worker.start(config, bootstrap, folder, "worker", "memory://")
    out = []
    try:
        up([worker])
        now, base = time.time(), 0
        for day in range(args.days):
            d = phases.drain_day(
                worker,
                bootstrap,
                topics,
                customers=args.customers,
                events=args.events,
                start=now - (args.days - day) * workload.DAY,
                prefix=f"{unique}-d{day}",
                seed=7 + day,
                timeout=900,
                base=base,
                lead=day == 0,
            )
            base += d.events
            out.append(
                f"day {day + 1}: {d.events:,} events drained at {d.events_per_s:,.0f}/s, "
                f"{1e6 * d.cpu_seconds / d.events:.0f} µs of CPU per event"
            )
            phases.routed_all([worker], 120)
    finally:
        stop([worker])
        shutil.rmtree(folder, ignore_errors=True)
        try:
            asyncio.run(loader.delete_topics(bootstrap, [unique]))
        except Exception as exc:  # the figures matter more than the tidying
            print(f"could not delete this run's topics: {exc}", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(main())
