"""Bytes of table state per customer, after the scenario and after a heavy year of one customer.

    .venv/bin/python bench/state_size.py

Offline (the replay holds states exactly as the table does). `bench/run.py` measures the same on
a live worker, from the table's changelog, over the benchmark's workload.
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config, load_config
from pipeline.replay import Replay
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
    state = replay.states["heavy"]
    print("heavy customer events", len(lines), "state bytes", len(state))
    saved = orjson.loads(state)
    print({k: len(orjson.dumps(v)) for k, v in saved.items()})
    print({k: len(orjson.dumps(v[1])) for k, v in saved.get("rules", {}).items()})


if __name__ == "__main__":
    config = load_config()
    scenario_sizes(config)
    heavy_sizes(config)
