"""What `casewatch demo` shows while it runs: a live terminal view (each handler's queue against
its capacity, the newest exceptions, the workers' counters scraped from their `/metrics`), or on
a pipe one summary line every 5 s."""

from __future__ import annotations

import asyncio
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
    """The parts of a running demo (`pipeline.demo.Demo`) the view reads."""

    bootstrap: str
    ports: list[int]
    config: Config | None
    began: float
    sent: int
    by_status: Counter[str]
    routed: Counter[str]
    recent: deque[dict[str, Any]]


async def show(demo: Shown, deadline: float | None, check: Callable[[], None]) -> None:
    """Until `deadline` (monotonic; None: until cancelled), calling `check` between updates."""
    console = Console()
    if console.is_terminal:
        with Live(view(demo), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1)
                live.update(view(demo))
                check()
    else:
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(5)
            check()
            print(summary(demo), flush=True)


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


def view(demo: Shown) -> Group:
    assert demo.config is not None
    metrics = scrape(demo.ports)
    open_ = metrics.get("casewatch_open_exceptions", {})
    dead = sum(metrics.get("casewatch_dead_letters_total", {}).values())
    events = sum(metrics.get("casewatch_events_total", {}).values())
    elapsed = time.monotonic() - demo.began
    head = (
        f"broker {demo.bootstrap}   workers: "
        + "  ".join(f"http://127.0.0.1:{p}/metrics" for p in demo.ports)
        + f"\n{elapsed:5.0f}s  published {demo.sent}  processed {events:.0f}  "
        f"dead letters {dead:.0f}   exceptions: "
        + ", ".join(f"{n} {s}" for s, n in sorted(demo.by_status.items()))
        + "   routed: "
        + ", ".join(f"{n} {r}" for r, n in sorted(demo.routed.items()))
    )
    queues = Table(title="handler queues (open / capacity)", expand=True)
    for column in ("handler", "open", "capacity", ""):
        queues.add_column(column)
    for name, handler in demo.config.handlers.items():
        n = int(open_.get((f"handler={name}",), 0))
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


def summary(demo: Shown) -> str:
    return (
        "demo summary: exceptions "
        + ", ".join(f"{s}={n}" for s, n in sorted(demo.by_status.items()))
        + "; routed "
        + ", ".join(f"{r}={n}" for r, n in sorted(demo.routed.items()))
        + f"; published {demo.sent} events"
    )
