"""What `casewatch demo` shows while it runs: a live terminal view (each handler's queue against
its capacity, the newest exceptions, the workers' counters scraped from their `/metrics`), or on
a pipe one summary line every 5 s."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from pipeline.config import Config


class Shown(Protocol):
    """The parts of a running demo (`pipeline.tools.demo.demo.Demo`) the view reads."""

    bootstrap: str
    ports: list[int]
    config: Config | None
    commands: list[str]
    page: str
    began: float
    sent: int
    found: set[str]
    by_status: Counter[str]
    routed: Counter[str]
    recent: deque[dict[str, Any]]


async def show(demo: Shown, deadline: float | None, check: Callable[[], None]) -> None:
    """Until `deadline` (monotonic; None: until cancelled), calling `check` every second."""
    console = Console()
    if console.is_terminal:
        with Live(view(demo), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1)
                check()
                live.update(view(demo))
    else:
        ticks = 0
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(1)
            check()
            ticks += 1
            if ticks % 5 == 0:
                open_now = open_counts(scrape(demo.ports))
                show_line(summary(demo, sum(open_now.values())))


def show_line(line: str) -> None:
    """A line on stdout; when the terminal has gone (SIGHUP), nothing, now or at exit."""
    try:
        print(line, flush=True)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def scrape(ports: list[int]) -> dict[str, dict[tuple[str, ...], float]]:
    """The workers' metrics, per name: open counts from whichever owns dispatch."""
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for port in ports:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
        except OSError:
            continue
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                key = tuple(f"{k}={v}" for k, v in sorted(s.labels.items()))
                bucket = found.setdefault(s.name, {})
                if s.name in ("casewatch_open_exceptions", "casewatch_handler_capacity"):
                    bucket[key] = max(bucket.get(key, 0.0), s.value)
                else:
                    bucket[key] = bucket.get(key, 0.0) + s.value
    return found


def open_counts(metrics: dict[str, dict[tuple[str, ...], float]]) -> dict[str, int]:
    """Open exceptions per handler now (the dispatch's gauge), as the queue table shows them."""
    gauge = metrics.get("casewatch_open_exceptions", {})
    return {key[0].removeprefix("handler="): int(n) for key, n in gauge.items() if key}


def headline(demo: Shown, metrics: dict[str, dict[tuple[str, ...], float]]) -> str:
    """The header: where things run, what happened, and how to follow it from elsewhere."""
    dead = sum(metrics.get("casewatch_dead_letters_total", {}).values())
    events = sum(metrics.get("casewatch_events_total", {}).values())
    elapsed = time.monotonic() - demo.began
    return (
        f"broker {demo.bootstrap}   workers: "
        + "  ".join(f"http://127.0.0.1:{p}/metrics" for p in demo.ports)
        + f"\n{elapsed:5.0f}s  published {demo.sent}  processed {events:.0f}  "
        f"dead letters {dead:.0f}   {tally(demo, sum(open_counts(metrics).values()))}"
        + "   routed by: "
        + ", ".join(f"{n} {r}" for r, n in sorted(demo.routed.items()))
        + "".join(f"\n{line}" for line in demo.commands)
        + (f"\nCSR page: {demo.page}" if demo.page else "")
    )


def tally(demo: Shown, open_now: int) -> str:
    """Exceptions in plain words: found is every one ever detected, open now is the queues'."""
    return (
        f"exceptions found: {len(demo.found)}, open now: {open_now}, "
        f"resolved: {demo.by_status['resolved']}, escalated: {demo.by_status['escalated']}"
    )


def view(demo: Shown) -> Group:
    assert demo.config is not None
    metrics = scrape(demo.ports)
    open_ = open_counts(metrics)
    head = headline(demo, metrics)
    queues = Table(title="handler queues (open / capacity)", expand=True)
    for column in ("handler", "open", "capacity", ""):
        queues.add_column(column)
    for name, handler in demo.config.handlers.items():
        n = open_.get(name, 0)
        bar = "█" * min(n, 30) + "·" * max(0, handler.capacity - n)
        style = "red" if n >= handler.capacity else "green"
        queues.add_row(name, str(n), str(handler.capacity), f"[{style}]{bar}[/]")
    recent = Table(title="newest exceptions", expand=True)
    for column in ("at", "status", "rule", "customer", "handler", "reason"):
        recent.add_column(column, overflow="fold")
    for r in demo.recent:
        recent.add_row(
            r["detected_at"][11:19],
            r["status"],
            r["rule"],
            r["customer_id"],
            r["route"]["handler"],
            r["route"]["reason"],
        )
    return Group(Panel(head, title="casewatch demo"), queues, recent)


def summary(demo: Shown, open_now: int | None = None) -> str:
    """One line: exceptions found (ever) and, while the workers run, open now."""
    now = "" if open_now is None else f" open_now={open_now},"
    return (
        f"demo summary: exceptions found={len(demo.found)},{now} "
        f"resolved={demo.by_status['resolved']}, escalated={demo.by_status['escalated']}"
        "; routed by "
        + ", ".join(f"{r}={n}" for r, n in sorted(demo.routed.items()))
        + f"; published {demo.sent} events"
    )
