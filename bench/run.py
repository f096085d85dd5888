"""The Casewatch benchmark, one command: Casewatch against the client's own ceiling, same run.

    .venv/bin/python bench/run.py                  # small (default): a couple of minutes
    .venv/bin/python bench/run.py --smoke          # seconds, what CI runs; exit 1 on any failure
    .venv/bin/python bench/run.py --full [--soak 10] [--profile]

The broker: KAFKA_BOOTSTRAP_SERVERS; without it the local broker (deploy/kafka/local-kafka) is
started on CASEWATCH_KAFKA_PORT (default: a free port, tests/ports.py) and stopped, its data
removed, at the end.
Every run has its own topics and group ids (`bench<time><hex>.*`), deleted at the end.

Phases (docs/performance.md says what each figure means):
 1. a realistic workload (bench/workload.py), bulk-published keyed by customer;
 2. the ceiling: a plain aiokafka loop that consumes it, validates each value with
    `pipeline.core.ingest.parse_event`, and produces one small record per event;
 3. one worker (`python -m pipeline worker`, every default rule, routing, context and metrics)
    drains the same backlog: sustained events/s;
 4. paced loads into the live worker at 30/50/70/90% of that peak: processing latency from
    the worker's histogram, and produce -> exception published from the exception log;
 5. memory: the worker's resident size, state bytes per customer from the table's changelog;
 6. scale-out: two workers in one group drain the same backlog on fresh topics.
Writes bench/results/latest.json and bench/results/latest.png.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chart, loader, phases, profile, report, workload
from bench.procs import (
    REPO,
    BenchError,
    Worker,
    consumed,
    create_topics,
    stop,
    up,
    wait_for,
    write_config,
)
from tests.ports import free_base

RESULTS = REPO / "bench" / "results"
LOCAL_KAFKA = REPO / "deploy" / "kafka" / "local-kafka"
DAY = workload.DAY


@dataclass(frozen=True)
class Mode:
    customers: int
    events: int
    loads: tuple[float, ...]  # offered load, as fractions of the measured peak
    load_seconds: float
    timeout: float  # for a drain or a catch-up


MODES = {
    "smoke": Mode(1_000, 4_000, (0.7,), 4, 120),
    "small": Mode(20_000, 60_000, (0.3, 0.5, 0.7, 0.9), 15, 300),
    "full": Mode(100_000, 300_000, (0.3, 0.5, 0.7, 0.9), 40, 900),
}


@contextmanager
def broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, or a local broker of our own for the run."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    env = {
        **os.environ,
        "CASEWATCH_KAFKA_PORT": os.environ.get("CASEWATCH_KAFKA_PORT") or str(free_base(0, 1)),
    }
    running = subprocess.run([LOCAL_KAFKA, "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run(
        [LOCAL_KAFKA, "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if started.returncode:
        raise BenchError(f"the local broker did not start:\n{started.stderr}")
    try:
        yield started.stdout.strip()
    finally:
        if not running:
            subprocess.run([LOCAL_KAFKA, "stop", "--purge"], env=env, capture_output=True)


class Bench:
    """One run: its folder, ids, broker and the figures gathered so far."""

    def __init__(self, args: argparse.Namespace, bootstrap: str) -> None:
        self.args = args
        self.mode = MODES[args.mode]
        self.bootstrap = bootstrap
        self.uid = f"bench{int(time.time())}{uuid.uuid4().hex[:4]}"
        self.folder = Path(tempfile.mkdtemp(prefix="casewatch-bench-"))
        self.workers: list[Worker] = []
        self.topics_made: list[str] = []
        self.r: dict[str, Any] = {}
        self.keep = args.keep  # the run's folder (config, worker logs, state) stays

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def fresh(self, uid: str) -> tuple[Path, loader.Topics]:
        config = write_config(self.folder, uid, pipeline=self.args.set)
        create_topics(config, self.bootstrap)
        self.topics_made.append(uid)
        return config, loader.Topics(f"{uid}.interactions", f"{uid}.orders", 6)

    def start(self, config: Path, name: str) -> Worker:
        w = Worker.start(config, self.bootstrap, self.folder, name, self.args.store)
        self.workers.append(w)
        return w

    def stop(self, workers: list[Worker]) -> None:
        stop(workers)

    # -- the phases --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        m, began = self.mode, time.monotonic()
        self.r |= {
            "mode": self.args.mode,
            "store": self.args.store,
            "settings": self.args.set,
            "customers": m.customers,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": report.git_head(REPO),
            "machine": report.machine(self.bootstrap),
            "loadavg_before": report.loadavg(),
        }
        now = time.time()
        # With the live loads, the backlog is the day before yesterday and `warm` drains
        # yesterday (the same customers) before them: see `warm`.
        first = now - (DAY if self.args.drain_only else 2 * DAY)
        backlog = workload.build(m.customers, m.events, first, DAY, self.uid)
        self.r |= {
            "events": len(backlog),
            "event_bytes_mean": sum(len(x.value) for x in backlog) / len(backlog),
            "mix": workload.mix(backlog),
        }
        config, topics = self.fresh(self.uid)
        seconds = asyncio.run(loader.load(self.bootstrap, topics, backlog))
        self.r["publish_events_per_s"] = len(backlog) / seconds
        self.say(f"published {len(backlog):,} events: {self.r['publish_events_per_s']:,.0f}/s")
        self.ceiling(topics, len(backlog))
        worker = self.one_worker(config, len(backlog))
        self.r["ratio"] = self.r["worker_events_per_s"] / self.r["ceiling_events_per_s"]
        if self.args.drain_only:
            self.stop([worker])
            self.r |= {
                "loadavg_after": report.loadavg(),
                "duration_s": round(time.monotonic() - began, 1),
            }
            return self.r
        already = self.warm(worker, topics, len(backlog), now - DAY)
        loads = []
        for fraction in m.loads:
            load, already = self.paced(worker, topics, fraction, already)
            loads.append(load)
        self.end_to_end(topics, loads)
        self.memory(worker)
        if self.args.soak:
            self.soak(worker, topics, already)
        self.stop([worker])
        self.scale_out(backlog)
        self.r["scale_out_ratio"] = (
            self.r["two_workers_events_per_s"] / self.r["worker_events_per_s"]
        )
        self.r |= {
            "loadavg_after": report.loadavg(),
            "duration_s": round(time.monotonic() - began, 1),
        }
        self.r["targets"] = report.targets(self.r)
        return self.r

    def ceiling(self, topics: loader.Topics, events: int) -> None:
        scratch = f"{self.uid}.scratch"
        asyncio.run(loader.create_topic(self.bootstrap, scratch, 6))
        cpu = time.process_time()
        rate = asyncio.run(
            loader.ceiling(self.bootstrap, topics, scratch, events, f"{self.uid}-ceiling")
        )
        cpu = time.process_time() - cpu
        self.r["ceiling_events_per_s"] = rate
        self.r["ceiling_events_per_cpu_s"] = events / cpu if cpu else None
        self.say(f"ceiling: {rate:,.0f} events/s ({events / cpu:,.0f} per CPU s)")

    def one_worker(self, config: Path, events: int) -> Worker:
        w = self.start(config, "worker-1")
        spy = self.profiling(w, "drain")
        try:
            d = phases.drain([w], events, self.mode.timeout)
        finally:
            self.profiled(spy, "drain")
        self.r |= {
            "worker_events_per_s": d.events_per_s,
            "worker_steady_events_per_s": d.steady_events_per_s,
            "worker_drain_seconds": d.seconds,
            "worker_cpu_seconds": d.cpu_seconds,
            "worker_events_per_cpu_s": events / d.cpu_seconds if d.cpu_seconds else None,
            "worker_runqueue_share": d.runqueue_seconds / d.seconds if d.seconds else None,
        }
        self.say(
            f"one worker drained {events:,} in {d.seconds:.1f} s: {d.events_per_s:,.0f}/s "
            f"(10-90%: {d.steady_events_per_s:,.0f}/s); {d.cpu_seconds:.1f} CPU s, "
            f"{d.runqueue_seconds:.1f} s waiting for a CPU"
        )
        routing = phases.routed_all([w], self.mode.timeout)
        self.r["worker_routing_catch_up_s"] = routing
        self.r["worker_events_per_s_all_routed"] = events / (d.seconds + routing)
        self.say(f"dispatch routed the backlog's last exceptions {routing:.1f} s after the drain")
        found = phases.exceptions_by_rule(w)
        self.r["exceptions_backlog"] = found
        self.r["exceptions_per_1000_events"] = 1000 * sum(found.values()) / events
        phases.require(sum(found.values()) > 0, "the worker found no exception in the backlog")
        return w

    def warm(self, w: Worker, topics: loader.Topics, already: int, start: float) -> int:
        """The peak the live loads are fractions of: the worker drains a second day of the same
        customers (from `start`), published at once. An event costs more the more its
        customer's state holds (up to its bounds), and the live loads come after the backlog:
        measured against the first drain, when every state starts empty, a load is a larger
        share of what the worker can do than its fraction says. Returns the messages sent."""
        m = self.mode
        d = phases.drain_day(
            w,
            self.bootstrap,
            topics,
            customers=m.customers,
            events=m.events,
            start=start,
            prefix=f"{self.uid}-w",
            seed=8,
            timeout=m.timeout,
            base=already,
        )
        self.r |= {
            "peak_events_per_s": d.events_per_s,
            "warm_steady_events_per_s": d.steady_events_per_s,
            "warm_events_per_cpu_s": d.events / d.cpu_seconds if d.cpu_seconds else None,
            "warm_runqueue_share": d.runqueue_seconds / d.seconds if d.seconds else None,
        }
        self.say(
            f"the second day ({d.events:,} events, the same customers) drained in "
            f"{d.seconds:.1f} s: {d.events_per_s:,.0f}/s (10-90%: {d.steady_events_per_s:,.0f}/s)"
            f", {1e6 * d.cpu_seconds / d.events:.0f} µs of CPU per event against "
            f"{1e6 * self.r['worker_cpu_seconds'] / already:.0f} on the first: the loads' peak"
        )
        phases.routed_all([w], m.timeout)
        return already + d.events

    def profiling(self, w: Worker, phase: str) -> subprocess.Popen[bytes] | None:
        """With --profile: py-spy records the worker during `phase`."""
        if not self.args.profile:
            return None
        return profile.attach(w.pid, self.folder / f"profile-{phase}.txt")

    def profiled(self, spy: subprocess.Popen[bytes] | None, phase: str) -> None:
        profile.detach(spy)
        raw = self.folder / f"profile-{phase}.txt"
        if spy is None or not raw.exists():
            return
        summary = profile.summarise(raw)
        self.r.setdefault("profile", {})[phase] = {
            "tool": "py-spy record --rate 100",
            "raw": str(raw),
            "summary": summary.splitlines(),
        }
        self.keep = True
        self.say(f"profile of the {phase} (raw stacks: {raw}):\n{summary}")

    def paced(
        self, w: Worker, topics: loader.Topics, fraction: float, already: int
    ) -> tuple[phases.Load, int]:
        m = self.mode
        rate = fraction * self.r["peak_events_per_s"]
        msgs = self.paced_msgs(f"l{round(100 * fraction)}", rate, m.load_seconds)
        phase = f"load-{round(100 * fraction)}"
        spy = self.profiling(w, phase) if fraction == 0.7 else None
        try:
            load = phases.paced_load(w, self.bootstrap, topics, msgs, fraction, already, m.timeout)
        finally:
            self.profiled(spy, phase)
        load.routing_catch_up_s = phases.routed_all([w], m.timeout)
        self.say(
            f"load {fraction:.0%}: offered {load.offered:,.0f}/s, achieved {load.achieved:,.0f}/s, "
            f"caught up {load.catch_up_s:.1f} s after the last send, all routed "
            f"{load.routing_catch_up_s:.1f} s later; processing p50 {load.p50_ms or 0:.1f} ms "
            f"p99 {load.p99_ms or 0:.1f} ms, {load.events / max(load.batches, 1):,.0f} records "
            f"per batch; worker CPU {load.cpu_share:.0%}, "
            f"waiting for a CPU {load.runqueue_share:.0%}; load generator CPU "
            f"{load.publisher_cpu_share:.0%}"
        )
        return load, already + len(msgs)

    def paced_msgs(self, tag: str, rate: float, seconds: float) -> list[workload.Msg]:
        """`rate` events/s for `seconds`, event times from a moment after they are built; a model
        day is compressed into the run so that episodes complete within it."""
        seed = zlib.crc32(tag.encode())
        return workload.paced(self.mode.customers, rate, seconds, f"{self.uid}-{tag}", seed)

    def end_to_end(self, topics: loader.Topics, loads: list[phases.Load]) -> None:
        records = asyncio.run(loader.read_all(self.bootstrap, f"{self.uid}.exceptions", 6))
        self.r["exception_log_records"] = len(records)
        out = []
        for load in loads:
            e2e = phases.end_to_end(records, load.sent)
            row = {k: v for k, v in asdict(load).items() if k != "sent"}
            row["offered_events_per_s"] = row.pop("offered")
            row["achieved_events_per_s"] = row.pop("achieved")
            row |= {
                f"e2e_{k}" if k != "samples" else "e2e_samples": v for k, v in asdict(e2e).items()
            }
            out.append(row)
        self.r["loads"] = out
        at70 = min(out, key=lambda x: abs(x["fraction"] - 0.7))
        self.r |= {
            "p50_ms": at70["p50_ms"],
            "p99_ms": at70["p99_ms"],
            "e2e_publish_p50_ms": at70["e2e_publish_p50_ms"],
            "e2e_publish_p99_ms": at70["e2e_publish_p99_ms"],
            "e2e_detect_p50_ms": at70["e2e_detect_p50_ms"],
            "e2e_detect_p99_ms": at70["e2e_detect_p99_ms"],
        }
        phases.require(at70["p99_ms"] is not None, "no processing latency was recorded")

    def memory(self, w: Worker) -> None:
        rss, hwm = w.rss_mb()
        state = phases.state_size(self.bootstrap, self.uid)
        disk = sum(
            f.stat().st_size for f in (self.folder / "worker-1-state").rglob("*") if f.is_file()
        )
        self.r |= {
            "rss_mb": rss,
            "rss_hwm_mb": hwm,
            "state_bytes_per_customer": state.mean,
            "state": asdict(state),
            "table_entries": phases.table_entries(w),
            "state_dir_bytes": disk,
        }
        self.say(
            f"memory: RSS {rss:.0f} MiB (peak {hwm:.0f}); state {state.mean:.0f} B/customer "
            f"over {state.customers:,} customers"
        )

    def soak(self, w: Worker, topics: loader.Topics, already: int) -> None:
        """Paced load for `--soak` minutes at the highest offered load the worker kept up with
        (caught up within 2 s of the last send), else 30% of the peak: memory under a load it
        sustains, not under a growing lag."""
        kept_up = [x["offered_events_per_s"] for x in self.r["loads"] if x["catch_up_s"] <= 2.0]
        rate = max(kept_up, default=0.3 * self.r["peak_events_per_s"])
        self.say(f"soak: {self.args.soak} min at {rate:,.0f} events/s, RSS every 10 s")

        # one story told in 30 s chunks, a model day each, episodes going on across them
        story = workload.Story(self.mode.customers, 30.0, f"{self.uid}-s", zlib.crc32(b"soak"))

        def make(chunk: int, rate: float, seconds: float) -> list[workload.Msg]:
            return story.next(rate, seconds)

        samples, _ = phases.soak(w, self.bootstrap, topics, rate, self.args.soak, make, already)
        verdict = phases.rss_flat(samples)
        # How much of the growth is the customers' states themselves (they grow with each
        # event until their bounds): the table's bytes before and after, from the changelog.
        before, after = self.r["state"], asdict(phases.state_size(self.bootstrap, self.uid))
        state_mb = [s["mean"] * s["customers"] / 2**20 for s in (before, after)]
        self.r["soak"] = {
            "minutes": self.args.soak,
            "rate": rate,
            **verdict,
            "state_mb_before": round(state_mb[0], 1),
            "state_mb_after": round(state_mb[1], 1),
            "state_after": after,
            "samples": [(round(t), round(mb, 1), int(n)) for t, mb, n in samples],
        }
        self.say(
            f"soak: {verdict}; the states' bytes {state_mb[0]:.0f} -> {state_mb[1]:.0f} MiB "
            f"({before['mean']:.0f} -> {after['mean']:.0f} B/customer)"
        )

    def scale_out(self, backlog: list[workload.Msg]) -> None:
        """Two workers, settled in one group (each owns partitions), then the same backlog
        published to their fresh topics at once; timed as the one-worker drain."""
        uid = f"{self.uid}s"
        config, topics = self.fresh(uid)
        pair = [self.start(config, "worker-2a"), self.start(config, "worker-2b")]
        up(pair, self.mode.timeout)
        base = self.settle(pair, topics, backlog[0].t)
        publisher = threading.Thread(
            target=asyncio.run, args=(loader.load(self.bootstrap, topics, backlog),), daemon=True
        )
        publisher.start()
        d = phases.drain(pair, len(backlog), self.mode.timeout, base)
        publisher.join(60)
        self.stop(pair)
        self.r |= {
            "two_workers_events_per_s": d.events_per_s,
            "two_workers_steady_events_per_s": d.steady_events_per_s,
            "two_workers_cpu_seconds": d.cpu_seconds,
            "two_workers_runqueue_share": d.runqueue_seconds / d.seconds / 2 if d.seconds else None,
        }
        self.say(
            f"two workers drained {len(backlog):,} in {d.seconds:.1f} s: {d.events_per_s:,.0f}/s "
            f"(10-90%: {d.steady_events_per_s:,.0f}/s); {d.cpu_seconds:.1f} CPU s, "
            f"{d.runqueue_seconds:.1f} s waiting for a CPU"
        )

    def settle(self, pair: list[Worker], topics: loader.Topics, before: float) -> int:
        """Small probes (older than the backlog, so clocks run as in the one-worker drain)
        until both workers have consumed some: then both hold partitions. Returns the count."""
        sent, deadline = 0, time.monotonic() + self.mode.timeout
        while True:
            probe = workload.build(
                self.mode.customers, 300, before - 3600 + sent, 60, f"{self.uid}-p{sent}"
            )
            asyncio.run(loader.load(self.bootstrap, topics, probe))
            sent += len(probe)

            def probed(n: int = sent) -> bool:
                return consumed(pair) >= n

            wait_for(
                "the probe to be consumed",
                probed,
                self.mode.timeout,
                pair,
            )
            if all(consumed([w]) > 0 for w in pair):
                time.sleep(2)
                return sent
            if time.monotonic() > deadline:
                raise BenchError("the two workers did not both get partitions")
            time.sleep(2)

    def cleanup(self, failed: bool) -> None:
        self.stop(self.workers)
        if self.keep or failed:
            self.say(f"kept: {self.folder} (config, worker logs, state)")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        try:
            asyncio.run(loader.delete_topics(self.bootstrap, self.topics_made))
        except Exception as exc:  # the figures matter more than the tidying
            self.say(f"could not delete this run's topics: {exc}")


def _setting(text: str) -> tuple[str, Any]:
    """NAME=VALUE, the value read as YAML (as the config file would give it)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    size.add_argument("--full", dest="mode", action="store_const", const="full")
    p.set_defaults(mode="small")
    # memory:// is the worker's default (pipeline/config.py Runtime); rocksdb:// is opt-in.
    p.add_argument("--store", default="memory://", choices=("memory://", "rocksdb://"))
    p.add_argument(
        "--soak",
        type=float,
        default=0,
        metavar="MINUTES",
        help="after the loads: paced load at 70%% of peak, RSS every 10 s",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on the one worker while it drains and under the 70%% load: summaries in "
        "the JSON and on stderr",
    )
    p.add_argument(
        "--drain-only",
        action="store_true",
        help="stop after the one-worker drain (publish, ceiling, drain, routing catch-up): "
        "for A/B comparisons of events per CPU second",
    )
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the workers' config `pipeline` section, for A/B runs of a setting "
        "(e.g. --set fetch_max_wait=250ms --set fetch_min_bytes=1048576); repeatable",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs, state)")
    args = p.parse_args(argv)
    args.set = dict(args.set)
    # SIGTERM (CI cancelling, `kill`) ends the run through the same cleanup as an error: the
    # workers it started are stopped and its topics deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # aiokafka logs every retry while fresh topics elect leaders: noise, not news
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        with broker() as bootstrap:
            bench = Bench(args, bootstrap)
            failed = True
            try:
                results = bench.run()
                failed = False
            finally:
                bench.cleanup(failed)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    report.write(results, args.out)
    if args.drain_only:
        print(report.drain_summary(results))
        print(f"\nfigures: {args.out}", file=sys.stderr)
        return 0
    print(report.table(results))
    print(f"\nfigures: {args.out}", file=sys.stderr)
    print(chart.draw(results, args.out.with_suffix(".png")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
