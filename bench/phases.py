"""The measurements, one function each: drain a backlog with N workers, latency under a paced
load, end-to-end times from the exception log, memory and state size."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import orjson

from bench import loader, workload
from bench.procs import (
    BenchError,
    Worker,
    buckets,
    consumed,
    delta,
    quantile,
    total,
    wait_for,
)
from bench.workload import Msg
from pipeline.core import state

LATENCY = "casewatch_processing_latency_seconds"
POLL = 0.5  # seconds between two reads of the workers' counters while they drain


@dataclass
class Drain:
    """Workers draining a backlog: first event consumed to last."""

    events: int
    seconds: float
    events_per_s: float
    steady_events_per_s: float  # between 10% and 90% of the backlog (no start-up, no tail)
    cpu_seconds: float  # used by the workers' processes from the first event to the last
    runqueue_seconds: float  # ... and spent runnable, waiting for a CPU other processes held


def drain(workers: list[Worker], events: int, timeout: float, base: float = 0) -> Drain:
    """Poll the workers' counters every `POLL` s until they consumed `events` messages (more
    than the `base` they had consumed before)."""
    samples: list[tuple[float, float]] = []
    deadline, cpu, queued = time.monotonic() + timeout, 0.0, 0.0
    # the workers' CPU at the last poll that found nothing consumed yet: the start of a drain
    # that ends by the next one
    cpu_before = queued_before = 0.0
    while not samples or samples[-1][1] < events:
        if time.monotonic() > deadline:
            got = samples[-1][1] if samples else 0
            raise BenchError(
                f"drain timed out after {timeout:.0f} s: {got:.0f} of {events} consumed"
            )
        for w in workers:
            w.alive()
        n = consumed(workers) - base
        if n <= 0:
            cpu_before = sum(w.cpu_seconds() for w in workers)
            queued_before = sum(w.sched()[1] for w in workers)
        else:
            if not samples:
                cpu = sum(w.cpu_seconds() for w in workers)
                queued = sum(w.sched()[1] for w in workers)
            samples.append((time.monotonic(), n))
            if n >= events:
                break
        time.sleep(POLL)
    cpu_now, queued_now = sum(w.cpu_seconds() for w in workers), sum(w.sched()[1] for w in workers)
    cpu, queued = cpu_now - cpu, queued_now - queued
    (t0, n0), (t1, _) = samples[0], samples[-1]
    if t1 <= t0:  # all of it between two polls (a small smoke run): timed as one poll's time,
        # a lower bound of the rate, and its CPU since the poll before
        cpu, queued = cpu_now - cpu_before, queued_now - queued_before
        return Drain(events, POLL, events / POLL, events / POLL, cpu, queued)
    rate = (events - n0) / max(t1 - t0, 1e-3)
    lo, hi = _crossing(samples, 0.1 * events), _crossing(samples, 0.9 * events)
    steady = 0.8 * events / (hi - lo) if hi > lo else rate
    return Drain(events, t1 - t0, rate, steady, cpu, queued)


def drain_day(
    worker: Worker,
    bootstrap: str,
    topics: loader.Topics,
    *,
    customers: int,
    events: int,
    start: float,
    prefix: str,
    seed: int,
    timeout: float,
    base: float = 0,
    lead: bool = False,
) -> Drain:
    """A model day of about `events` for `customers` (the same customers on every call), from
    `start`, published at once while the worker is idle, then drained (`base`: what the worker
    had consumed before). Episodes start within the day unless `lead` (a first day: traffic
    under way)."""
    day = workload.Generator(customers, seed, prefix, start, workload.DAY).build(events, lead=lead)
    asyncio.run(loader.load(bootstrap, topics, day))
    return drain([worker], len(day), timeout, base)


def _crossing(samples: list[tuple[float, float]], level: float) -> float:
    """When the count reached `level`, interpolated between two polls."""
    for (ta, na), (tb, nb) in itertools.pairwise(samples):
        if na <= level <= nb:
            return ta + (tb - ta) * ((level - na) / max(nb - na, 1e-9))
    return samples[0][0] if level <= samples[0][1] else samples[-1][0]


@dataclass
class Load:
    """One paced run into a live worker."""

    fraction: float
    offered: float  # events/s sent
    achieved: float  # events/s the worker consumed while they were sent
    p50_ms: float | None  # processing latency (worker histogram: consumed -> outputs acked)
    p99_ms: float | None
    events: int
    publisher_lag_ms: float  # worst delay of the publisher behind its own schedule
    behind_at_end: int  # messages sent but not consumed yet when the last one was sent
    catch_up_s: float  # from the last send until all were consumed (polled every 0.25 s)
    cpu_share: float  # CPU seconds the worker used per second of sending
    runqueue_share: float  # ... and seconds it waited for a CPU that other processes held
    publisher_cpu_share: float  # CPU seconds the load generator itself used per second of sending
    sent: dict[tuple[str, int, int], float]
    routing_catch_up_s: float = 0.0  # after the catch-up, until dispatch routed every exception
    batches: int = 0  # batches the worker processed (the latency histogram counts one each)


def paced_load(
    worker: Worker,
    bootstrap: str,
    topics: loader.Topics,
    msgs: list[Msg],
    fraction: float,
    already: int,
    catch_up: float,
) -> Load:
    """Send `msgs` at their event times into the live worker; wait until it caught up."""
    before = buckets(worker.scrape(), LATENCY)
    start_count = consumed([worker])  # the worker is idle: nothing moves until the first send
    cpu, (_, queued) = worker.cpu_seconds(), worker.sched()
    sent = asyncio.run(loader.paced(bootstrap, topics, msgs))
    during = consumed([worker]) - start_count
    cpu, queued = worker.cpu_seconds() - cpu, worker.sched()[1] - queued
    seconds = max(sent.last - sent.first, 1e-3)
    target = already + len(msgs)
    wait_for(
        f"the worker to consume the paced load ({target} messages)",
        lambda: consumed([worker]) >= target,
        catch_up,
        [worker],
    )
    caught_up = time.time() - sent.last
    hist = delta(buckets(worker.scrape(), LATENCY), before)
    p50, p99 = quantile(0.5, hist), quantile(0.99, hist)
    return Load(
        fraction=fraction,
        offered=len(msgs) / seconds,
        achieved=min(during, len(msgs)) / seconds,
        p50_ms=None if p50 is None else 1000 * p50,
        p99_ms=None if p99 is None else 1000 * p99,
        events=len(msgs),
        publisher_lag_ms=1000 * sent.lag_max,
        behind_at_end=max(0, len(msgs) - int(during)),
        catch_up_s=caught_up,
        cpu_share=cpu / seconds,
        runqueue_share=queued / seconds,
        publisher_cpu_share=sent.cpu_seconds / seconds,
        sent=sent.sent,
        batches=int(hist[-1][1]) if hist else 0,
    )


@dataclass
class EndToEnd:
    """From our producing an event to the exception it triggered: found (its `detected_at`)
    and published (the record's timestamp on the exception log)."""

    samples: int
    detect_p50_ms: float | None
    detect_p99_ms: float | None
    publish_p50_ms: float | None
    publish_p99_ms: float | None


def end_to_end(
    records: list[tuple[bytes | None, bytes | None, int, int, int]],
    sent: dict[tuple[str, int, int], float],
) -> EndToEnd:
    """Exception records whose `source` is an event we sent at a known time."""
    detect, publish = [], []
    seen: set[tuple[str, str]] = set()
    for _, value, _, _, timestamp in records:
        record = orjson.loads(value or b"{}")
        source = record.get("source")
        ident = (record.get("exception_id", ""), record.get("status", ""))
        if not source or ident in seen:
            continue
        at = sent.get((source["topic"], source["partition"], source["offset"]))
        if at is None:
            continue
        seen.add(ident)
        found = datetime.fromisoformat(record["detected_at"]).timestamp()
        detect.append(1000 * (found - at))
        publish.append(1000 * (timestamp / 1000 - at))
    return EndToEnd(len(detect), *_p50_p99(detect), *_p50_p99(publish))


def _p50_p99(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def unrouted(workers: list[Worker]) -> float:
    """Exceptions detected (opened) that dispatch has not routed to a handler yet: each open
    record is routed once, normally or by overflow (the default route tree has no `continue`)."""
    opened = routed = 0.0
    for w in workers:
        samples = w.scrape()
        opened += sum(
            v
            for labels, v in samples.get("casewatch_exceptions_total", [])
            if labels.get("status") == "open"
        )
        routed += sum(
            v
            for labels, v in samples.get("casewatch_routed_total", [])
            if labels.get("reason") in ("normal", "overflow")
        )
    return opened - routed


def routed_all(workers: list[Worker], timeout: float) -> float:
    """Wait until dispatch has routed every exception detected so far; return the seconds."""
    began = time.monotonic()
    wait_for("dispatch to route every exception", lambda: unrouted(workers) <= 0, timeout, workers)
    return time.monotonic() - began


def exceptions_by_rule(worker: Worker) -> dict[str, int]:
    """Exception records the worker published so far, per rule/status."""
    out: Counter[str] = Counter()
    for labels, value in worker.scrape().get("casewatch_exceptions_total", []):
        out[f"{labels['rule']}/{labels['status']}"] += int(value)
    return dict(sorted(out.items()))


@dataclass
class State:
    """Bytes of table state per customer, from the changelog (the latest value per key)."""

    customers: int
    mean: float
    p50: int
    p99: int
    max: int
    changelog_records: int
    changelog_bytes: int
    # mean bytes of each part of the state (seen ids, rules, recent, ...) in its JSON before
    # compression (pipeline/core/state.py), so they add up to more than the stored mean
    parts: dict[str, int]


def state_size(bootstrap: str, app_id: str, partitions: int = 6) -> State:
    records = asyncio.run(loader.read_all(bootstrap, f"{app_id}-customers-changelog", partitions))
    latest: dict[bytes, bytes] = {}
    for key, value, _, _, _ in records:
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    if not latest:
        raise BenchError(f"the changelog {app_id}-customers-changelog is empty")
    sizes = sorted(len(v) for v in latest.values())
    parts: Counter[str] = Counter()
    for value in latest.values():
        for name, part in state.plain(value).items():  # parts before compression
            parts[name] += len(orjson.dumps(part)) + len(name) + 4  # "name": and a comma
            if name == "rules":
                for rule, saved in part.items():
                    parts[f"rules.{rule}"] += len(orjson.dumps(saved)) + len(rule) + 4
    return State(
        customers=len(sizes),
        mean=sum(sizes) / len(sizes),
        p50=sizes[len(sizes) // 2],
        p99=sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))],
        max=sizes[-1],
        changelog_records=len(records),
        changelog_bytes=sum(len(v or b"") + len(k or b"") for k, v, _, _, _ in records),
        parts={k: round(v / len(latest)) for k, v in parts.most_common()},
    )


def table_entries(worker: Worker) -> int:
    samples = worker.scrape().get("casewatch_table_entries", [])
    return int(sum(v for labels, v in samples if labels.get("table") == "customers"))


def rss_flat(samples: list[tuple[float, float, float]]) -> dict[str, object]:
    """Is resident memory flat? Least-squares slope over the second half of the soak: flat when
    it would add less than 5% of the resident size (or 10 MiB) over the whole soak."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return {
            "flat": None,
            "reason": "too few samples (a soak of a minute or more has enough)",
            "slope_mb_per_min": None,
            "first_mb": round(samples[0][1], 1),
            "last_mb": round(samples[-1][1], 1),
        }
    xs, ys = [t for t, _, _ in half], [m for _, m, _ in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(
        sum((x - mx) ** 2 for x in xs), 1e-9
    )
    minutes = (samples[-1][0] - samples[0][0]) / 60
    growth = slope * 60 * minutes
    limit = max(0.05 * my, 10.0)
    return {
        "flat": abs(growth) <= limit,
        "slope_mb_per_min": round(slope * 60, 3),
        "projected_growth_mb": round(growth, 1),
        "limit_mb": round(limit, 1),
        "first_mb": round(samples[0][1], 1),
        "last_mb": round(samples[-1][1], 1),
        "max_mb": round(max(m for _, m, _ in samples), 1),
        "consumed_during_soak": samples[-1][2] - samples[0][2],
    }


def soak(
    worker: Worker,
    bootstrap: str,
    topics: loader.Topics,
    rate: float,
    minutes: float,
    make: object,
    already: int,
) -> tuple[list[tuple[float, float, float]], int]:
    """Paced load at `rate` for `minutes`, in 30 s chunks; every 10 s: (seconds, RSS in MiB,
    messages consumed so far)."""
    samples: list[tuple[float, float, float]] = []
    began = time.monotonic()
    chunk = 0
    sent = already

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - began, worker.rss_mb()[0], consumed([worker])))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 10)

    async def run() -> None:
        nonlocal chunk, sent
        stop = asyncio.Event()
        task = asyncio.create_task(sampler(stop))
        end = began + 60 * minutes
        while time.monotonic() < end:
            msgs = make(chunk, rate, min(30.0, end - time.monotonic()))  # type: ignore[operator]
            await loader.paced(bootstrap, topics, msgs)
            sent += len(msgs)
            chunk += 1
            worker.alive()
        stop.set()
        await task

    asyncio.run(run())
    return samples, sent


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def require(condition: bool, what: str) -> None:
    if not condition:
        raise BenchError(what)


__all__ = ["LATENCY", "Drain", "EndToEnd", "Load", "State", "drain", "end_to_end", "total"]
