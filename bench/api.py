"""The case API under load: one worker taking live events at a share of its peak answers a
realistic mix of case requests at a fixed rate; the figures are the answers' latency.

    .venv/bin/python bench/api.py                   # half the worker's peak, 500 requests/s, 60 s
    .venv/bin/python bench/api.py --smoke           # seconds, what CI runs; exit 1 on errors
    .venv/bin/python bench/api.py --share 0.5 --requests 500 --seconds 60 --out FILE

The broker: KAFKA_BOOTSTRAP_SERVERS, else a local one of the run's own (as bench/run.py).

1. peak: two days of events (bench/workload.py, every default rule) are published one after
   the other, each at once, and the worker drains each: its steady events/s on the second day
   (on the states the first left) is the peak; the two days' exceptions are the cases asked
   about (the exception log says which);
2. measure: for `--seconds`, the same event rate goes on while another process sends
   `--requests` per second on a fixed schedule (open loop: a request is timed from when it was
   due, so a stalled server shows as latency, not as fewer requests). The mix: a customer's
   cases as staff JSON (50%), as the customer's view (25%), one case by id (15%), the CSR page
   (10%); a fifth of the customers asked about have no cases.

Prints and writes (default bench/results/api-latest.json) the latency quantiles overall and by
route, the statuses, the request and event rates achieved and the worker's processing latency
and CPU over the same window. docs/cases.md shows the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench import loader, phases, profile, workload
from bench.procs import (
    BenchError,
    Worker,
    buckets,
    create_topics,
    delta,
    quantile,
    stop,
    total,
    up,
    wait_for,
    write_config,
)
from bench.run import broker

TOKENS = {"CASEWATCH_STAFF_TOKENS": "bench-staff", "CASEWATCH_CUSTOMER_TOKENS": "bench-customer"}
MIX = (("staff_list", 0.50), ("customer_list", 0.25), ("case", 0.15), ("page", 0.10))
DAY = workload.DAY
OUT = Path(__file__).resolve().parent / "results" / "api-latest.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--share", type=float, default=0.5, help="of the peak, as the live load")
    p.add_argument("--rate", type=float, default=None, help="events/s instead of a share")
    p.add_argument("--requests", type=float, default=500.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    p.add_argument("--backlog", type=int, default=60_000, help="events drained for the peak")
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--smoke", action="store_true", help="small and short; exit 1 on any error")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="py-spy on the worker over the measured window: raw stacks to FILE, summary printed",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.requests, args.seconds, args.backlog, args.customers = 50.0, 8.0, 4000, 500
        args.rate = args.rate or 200.0
        if args.out == OUT:
            args.out = Path(tempfile.gettempdir()) / "casewatch-bench-api-smoke.json"
    with broker() as bootstrap:
        result = run(args, bootstrap)
    show(result)
    if args.profile and args.profile.exists():
        print(profile.summarise(args.profile))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    if args.smoke:
        bad = {s: n for s, n in result["statuses"].items() if not s.startswith("2")}
        if bad or result["errors"]:
            print(f"smoke: failed requests {bad}, errors {result['errors']}", file=sys.stderr)
            return 1
    return 0


def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    unique = f"benchapi{int(time.time())}{uuid.uuid4().hex[:4]}"
    folder = Path(tempfile.mkdtemp(prefix="casewatch-bench-api-"))
    config = write_config(folder, unique)
    topics = loader.Topics(f"{unique}.interactions", f"{unique}.orders", 6)
    create_topics(config, bootstrap)
    worker = Worker.start(config, bootstrap, folder, "worker", "memory://", extra_env=TOKENS)
    try:
        up([worker])
        now = time.time()
        first = phases.drain_day(
            worker,
            bootstrap,
            topics,
            customers=args.customers,
            events=args.backlog,
            start=now - 2 * DAY,
            prefix=unique,
            seed=7,
            timeout=600,
            lead=True,
        )
        # The peak: a second day of the same customers, on the states the first one left
        # (an event costs more the more its customer's state holds; bench/run.py's `warm`).
        second = phases.drain_day(
            worker,
            bootstrap,
            topics,
            customers=args.customers,
            events=args.backlog,
            start=now - DAY,
            prefix=f"{unique}w",
            seed=8,
            timeout=600,
            base=first.events,
        )
        cold, peak = first.steady_events_per_s, second.steady_events_per_s
        rate = args.rate or args.share * peak
        wait_for("the backlog's exceptions routed", lambda: _settled(worker), 120, [worker])
        log = asyncio.run(loader.read_all(bootstrap, f"{unique}.exceptions", 6))
        cases = sorted(
            {(k.decode(), orjson.loads(v)["exception_id"]) for k, v, *_ in log if k and v}
        )
        if not cases:
            raise BenchError("the backlog produced no exceptions: raise --backlog")
        customers = sorted({c for c, _ in cases})
        wait_for(
            "the backlog's cases in the case API",
            lambda: _cases_seen(worker, customers[-1]),
            60,
            [worker],
        )
        before, cpu0, t0 = worker.scrape(), worker.cpu_seconds(), time.monotonic()
        wait0, machine0 = worker.sched()[1], _machine()
        result_file = folder / "requests.json"
        client = multiprocessing.get_context("spawn").Process(
            target=_client,
            args=(worker.api_port, cases, args.requests, args.seconds, str(result_file)),
        )
        spy = profile.attach(worker.pid, args.profile) if args.profile else None
        client.start()
        live = workload.paced(args.customers, rate, args.seconds, f"{unique}live", 11)
        paced = asyncio.run(loader.paced(bootstrap, topics, live))
        client.join(args.seconds + 120)
        profile.detach(spy)
        after, cpu1, t1 = worker.scrape(), worker.cpu_seconds(), time.monotonic()
        wait1, machine1 = worker.sched()[1], _machine()
        if client.exitcode != 0:
            raise BenchError(f"the request process failed (exit {client.exitcode})")
        requests = json.loads(result_file.read_text())
        worker.alive()
    finally:
        stop([worker])
        shutil.rmtree(folder, ignore_errors=True)
    events = total(after, "casewatch_events_total") - total(before, "casewatch_events_total")
    processing = delta(
        buckets(after, "casewatch_processing_latency_seconds"),
        buckets(before, "casewatch_processing_latency_seconds"),
    )
    return {
        "command": " ".join(["bench/api.py", *sys.argv[1:]]),
        "peak_events_per_s": peak,
        "first_day_events_per_s": cold,
        "share": rate / peak,
        "event_rate_asked": rate,
        "events_per_s": events / (t1 - t0),
        "events_sent": paced.count,
        "publisher_cpu_share": paced.cpu_seconds / (t1 - t0),
        "request_rate_asked": args.requests,
        "seconds": args.seconds,
        "cases": len(cases),
        "customers_with_cases": len(customers),
        "worker_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        # time the worker was runnable but waited for a CPU the other processes held
        "worker_runqueue_share": (wait1 - wait0) / (t1 - t0),
        "client_cpu_share": requests.pop("cpu_seconds") / (t1 - t0),
        "machine_busy_share": _busy(machine0, machine1),
        "cpus": os.cpu_count(),
        "processing_p99_ms": _ms(quantile(0.99, processing)),
        **requests,
    }


def _machine() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def _busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def _settled(worker: Worker) -> bool:
    """Every exception found has been routed (the dispatch topic is read)."""
    return phases.unrouted([worker]) == 0


def _cases_seen(worker: Worker, customer: str) -> bool:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.api_port}/v1/customers/{customer}/cases",
        headers={"Authorization": f"Bearer {TOKENS['CASEWATCH_STAFF_TOKENS']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(orjson.loads(response.read())["cases"])
    except OSError:
        return False


def _client(port: int, cases: list[tuple[str, str]], rate: float, seconds: float, out: str) -> None:
    """The request process: `rate` requests/s on a fixed schedule for `seconds`."""
    result = asyncio.run(_requests(port, cases, rate, seconds))
    result["cpu_seconds"] = time.process_time()
    Path(out).write_text(json.dumps(result))


async def _requests(
    port: int, cases: list[tuple[str, str]], rate: float, seconds: float
) -> dict[str, Any]:
    rng = random.Random(5)
    staff = f"Bearer {TOKENS['CASEWATCH_STAFF_TOKENS']}"
    customer = f"Bearer {TOKENS['CASEWATCH_CUSTOMER_TOKENS']}"
    customers = sorted({c for c, _ in cases})
    routes = [route for route, _ in MIX]
    weights = [weight for _, weight in MIX]
    timings: dict[str, list[float]] = {r: [] for r in routes}
    statuses: dict[str, int] = {}
    errors: list[str] = []
    idle: list[_Connection] = []
    loop = asyncio.get_running_loop()

    def pick() -> tuple[str, bytes]:
        route = rng.choices(routes, weights)[0]
        who = rng.choice(customers) if rng.random() >= 0.2 else f"nobody-{rng.randrange(10**6)}"
        token = customer if route == "customer_list" else staff
        if route == "case":
            path = f"/v1/cases/{rng.choice(cases)[1]}"
        elif route == "page":
            path = f"/cases/customer/{who}"
        else:
            path = f"/v1/customers/{who}/cases"
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {token}\r\n\r\n"
        return route, request.encode()

    async def one(due: float, route: str, request: bytes) -> None:
        try:
            if idle:
                connection = idle.pop()
            else:
                _, connection = await loop.create_connection(_Connection, "127.0.0.1", port)
            status = await asyncio.wait_for(connection.ask(request), 30)
        except (TimeoutError, OSError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        timings[route].append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        idle.append(connection)

    n = int(rate * seconds)
    start = time.perf_counter() + 0.2
    tasks = []
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due, *pick())))
    sent_for = time.perf_counter() - start
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    every = sorted(t for ts in timings.values() for t in ts)
    return {
        "requests": n,
        "requests_per_s": n / sent_for,
        "statuses": statuses,
        "errors": len(errors),
        "first_errors": errors[:5],
        "latency_ms": _quantiles(every),
        "latency_ms_by_route": {r: _quantiles(sorted(ts)) for r, ts in timings.items()},
    }


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, one request at a time: the request process's client.

    A general client (aiohttp's) costs about 0.3 of a core at 500 requests/s, taken on a small
    machine from the worker it measures; this one reads a status line and a Content-Length.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, request: bytes) -> asyncio.Future[str]:
        """Send `request`; the future is the response's status once its body has arrived."""
        assert self.transport is not None
        assert self.answer is None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ValueError("a response without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        answer, self.answer = self.answer, None
        answer.set_result(head[9:12].decode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        self.answer = None
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "count": len(values)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def show(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    print(
        f"{r['requests_per_s']:.0f} requests/s for {r['seconds']:.0f} s while the worker took "
        f"{r['events_per_s']:.0f} events/s (asked {r['event_rate_asked']:.0f}, {r['share']:.0%} of a peak of "
        f"{r['peak_events_per_s']:.0f}); {r['cases']} cases of {r['customers_with_cases']} "
        "customers"
    )
    print(
        f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}  "
        f"(statuses {r['statuses']}, errors {r['errors']})"
    )
    for route, q in r["latency_ms_by_route"].items():
        print(f"  {route:<14} p50 {q['p50']}  p99 {q['p99']}  ({q['count']} requests)")
    print(
        f"worker: CPU {r['worker_cpu_share']:.2f} of a core (waited for one "
        f"{r['worker_runqueue_share']:.2f}), event processing p99 {r['processing_p99_ms']} ms; "
        f"request client: CPU {r['client_cpu_share']:.2f}; event publisher: CPU "
        f"{r.get('publisher_cpu_share', 0):.2f}; machine ({r['cpus']} CPUs) busy "
        f"{r['machine_busy_share']:.0%}"
    )


if __name__ == "__main__":
    sys.exit(main())
