"""CPU per event of Casewatch's own logic, without Kafka or Faust: the benchmark's workload
replayed offline (`pipeline.tools.replay.Replay`: validation, dedupe, every default rule, context,
routing, each state decoded and encoded as the table holds it).

    .venv/bin/python bench/logic.py                 # 7 model days, 2,000 customers: ~10 s
    .venv/bin/python bench/logic.py --profile 25    # and cProfile's top 25 by own time

The worker does this and Faust's per-message work around it (bench/floor.py); what this prints
is the part a change to the rules, the state or the engine moves. Deterministic input (fixed
seed and start), so two commits compare directly; the run-to-run spread is about 1%.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import workload
from pipeline.config import load_config
from pipeline.tools.replay import Replay

START = 1_790_000_000.0  # a fixed start: the same events, ids and records in every run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--profile", type=int, metavar="N", default=0)
    args = parser.parse_args(argv)
    seconds = args.days * 86400.0
    events = args.customers * 3 * args.days  # the benchmark's 3 events per customer and day
    msgs = workload.build(
        args.customers, events, START - seconds, seconds, "lg", seed=5, span_hours=args.days * 24
    )
    values = [m.value for m in msgs]
    replay = Replay(load_config(), errors=io.StringIO())
    # Not from bench/, whose profile.py would stand in for the standard library's (cProfile
    # imports it).
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]
    import cProfile
    import pstats

    profiler = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    records = list(replay.feed(values))
    if profiler:
        profiler.disable()
    cpu = time.process_time() - started
    digest = hashlib.sha256()
    for record in records:
        data = record.model_dump(mode="json", exclude={"detected_at"})
        digest.update(repr(sorted(data.items())).encode())
    print(
        f"{len(values):,} events, {len(records):,} exception records "
        f"(digest {digest.hexdigest()[:12]}): {cpu / len(values) * 1e6:.1f} us of CPU per event"
        f"{' (under cProfile)' if profiler else ''}"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
