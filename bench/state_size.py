"""Bytes of table state per customer, after the scenario and after a heavy year of one customer;
with `--days N`, at equilibrium: the benchmark's workload over N model days.

    .venv/bin/python bench/state_size.py
    .venv/bin/python bench/state_size.py --days 30 --customers 3000   # about 2 minutes

Offline (the replay holds states exactly as the table does). `bench/run.py` measures the same on
a live worker, from the table's changelog, over the benchmark's workload.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import workload
from pipeline.config import Config, load_config
from pipeline.core.state import CustomerState, plain
from pipeline.tools.replay import Replay
from tests.integration import scenario


def scenario_sizes(cfg: Config) -> None:
    replay = Replay(cfg, errors=io.StringIO())
    events = scenario.build(scenario.now(), noise=2000)
    list(replay.feed([orjson.dumps(e) for e in events]))
    list(replay.finish())
    sizes = sorted(len(v) for v in replay.states.values())
    print(
        "scenario customers",
        len(sizes),
        "mean",
        sum(sizes) // len(sizes),
        "p99",
        sizes[int(len(sizes) * 0.99)],
        "max",
        sizes[-1],
    )


def heavy_year() -> list[bytes]:
    """10 contacts a day on 5 categories, a complaint a week, an order every other day."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    lines: list[bytes] = []

    def add(type_: str, at: datetime, **fields: Any) -> None:
        event = {
            "event_id": f"h{len(lines) + 1}",
            "type": type_,
            "customer_id": "heavy",
            "occurred_at": at.isoformat(),
            **fields,
        }
        lines.append(orjson.dumps(event))

    for day in range(365):
        for k in range(10):
            add(
                "interaction.contact",
                t0 + timedelta(days=day, minutes=k * 30),
                channel="call",
                category=f"cat-{k % 5}",
            )
        if day % 7 == 0:
            add(
                "interaction.complaint",
                t0 + timedelta(days=day, hours=8),
                channel="call",
                category="x",
            )
        if day % 2 == 0:
            add("order.shipped", t0 + timedelta(days=day, hours=9), order_id=f"o{day}")
            add("order.delivered", t0 + timedelta(days=day, hours=30), order_id=f"o{day}")
    return lines


def heavy_sizes(cfg: Config) -> None:
    replay = Replay(cfg, errors=io.StringIO())
    lines = heavy_year()
    list(replay.feed(lines))
    state = replay.states[b"heavy"]
    print("heavy customer events", len(lines), "state bytes", len(state))
    saved = plain(state)  # the parts before compression
    print({k: len(orjson.dumps(v)) for k, v in saved.items()})
    print({k: len(orjson.dumps(v[1])) for k, v in saved.get("rules", {}).items()})


def equilibrium(cfg: Config, customers: int, days: int) -> None:
    """Each customer's state after `days` model days of the benchmark's workload (3 events a
    day per customer, every episode complete: no live chunks to cut them). Replays keep every
    exception open (nobody resolves them), so `open` is at its bound, as with absent handlers."""
    t0 = time.time() - days * 86400
    msgs = workload.build(
        customers, customers * 3 * days, t0, days * 86400, "eq", seed=5, span_hours=days * 24
    )
    replay = Replay(cfg, errors=io.StringIO())
    list(replay.feed([m.value for m in msgs]))
    sizes = sorted(len(v) for v in replay.states.values())
    n = len(sizes)
    # the same states stored uncompressed (`pipeline.compress_state: false`)
    raw = [
        len(CustomerState.from_bytes(v).to_bytes(compress=False)) for v in replay.states.values()
    ]
    print(
        f"{days} model days, {len(msgs):,} events, {n:,} customers: stored bytes per customer"
        f" mean {sum(sizes) // n:,} p50 {sizes[n // 2]:,} p99 {sizes[int(n * 0.99)]:,}"
        f" max {sizes[-1]:,}; uncompressed mean {sum(raw) // n:,}"
    )
    parts: Counter[str] = Counter()
    for value in replay.states.values():
        for name, part in plain(value).items():
            parts[name] += len(orjson.dumps(part))
            if name == "rules":
                for rule, saved in part.items():
                    parts[f"rules.{rule}"] += len(orjson.dumps(saved))
    print("parts as JSON (plain):", {k: v // n for k, v in parts.most_common()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, help="the workload over this many model days")
    parser.add_argument("--customers", type=int, default=3000)
    args = parser.parse_args()
    config = load_config()
    if args.days:
        equilibrium(config, args.customers, args.days)
    else:
        scenario_sizes(config)
        heavy_sizes(config)
