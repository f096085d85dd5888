"""CPU of one case API request inside the worker, without HTTP, Kafka or other load: what
`CaseApi.handle` costs per route, for customers asked about the first time and again.

    .venv/bin/python bench/api_views.py                     # 1,000 customers of 6 cases each
    .venv/bin/python bench/api_views.py --customers 5000 --cases 10

Each customer's book is folded from routed records, as the `cases` table holds it (half of the
cases resolved). A first pass asks about every customer once per route (nothing of theirs
formatted before), a second pass asks again. aiohttp's own work per request comes on top
(bench/api.py measures the whole, under event load). docs/cases.md shows the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config, load_config
from pipeline.core.processor import Record
from pipeline.routers.dispatch import Dispatcher
from pipeline.runtime.api import SELF, CaseApi, Reply, Tokens
from pipeline.runtime.cases import CaseKeeper
from pipeline.runtime.metrics import Metrics

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
STAFF, CUSTOMER = "staff-token", "customer-token"
ROUTES = ("customer_cases staff", "customer_cases customer", "case", "page")


@dataclass
class Table:
    data: dict[bytes, bytes] = field(default_factory=dict)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())

    async def put(self, key: bytes, value: bytes | None, partition: int) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    async def delete(self, key: bytes, partition: int) -> None:
        self.data.pop(key, None)


class Here:
    """Every customer is this worker's."""

    def owner(self, customer: bytes) -> str | None:
        return SELF

    def others(self) -> list[str]:
        return []

    def me(self) -> str:
        return "http://127.0.0.1:6066"

    async def fetch(self, url: str, target: str, headers: Any) -> Reply:
        raise AssertionError("no other worker")

    async def close(self) -> None:
        pass


def records(config: Config, customer: str, n: int, cases: int) -> list[dict[str, Any]]:
    """A customer's cases as the exception log carries them: routed, half of them resolved."""
    dispatcher = Dispatcher(config, {})
    out = []
    for i in range(cases):
        at = NOW - timedelta(hours=cases - i, minutes=n % 60)
        record = {
            "exception_id": f"{n:024x}{i:08x}",
            "rule": "delivery_failed",
            "kind": "match",
            "status": "open",
            "severity": "high",
            "customer_id": customer,
            "subject": {"order_id": f"o-{n}-{i}", "event_id": f"fail-{n}-{i}"},
            "event_time": at.isoformat(),
            "detected_at": at.isoformat(),
            "evidence": [f"fail-{n}-{i}"],
            "context": {
                "profile": {"tier": "standard", "name": f"Customer {n}"},
                "recent_events": [{"type": "order.shipped", "order_id": f"o-{n}-{i}"}],
                "open_orders": [],
                "open_exceptions": [],
            },
            "rule_version": "v",
        }
        (routed,) = dispatcher.on_exception(record, at.timestamp())
        out.append(routed.record)
        if i % 2:
            route = {**routed.record["route"], "reason": "resolved by logistics"}
            later = (at + timedelta(minutes=30)).isoformat()
            out.append(
                {**routed.record, "status": "resolved", "detected_at": later, "route": route}
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--cases", type=int, default=6, help="per customer")
    args = parser.parse_args(argv)
    config = load_config()
    keeper = CaseKeeper(config=config, metrics=Metrics.create(), table=Table())

    ids: dict[str, str] = {}
    for n in range(args.customers):
        customer = f"c-{n}"
        for r in records(config, customer, n, args.cases):
            ids.setdefault(customer, r["exception_id"])
            log = Record("exceptions", 0, 0, customer.encode(), orjson.dumps(r))
            asyncio.run(keeper.record(log))
    keeper.ready = True
    api = CaseApi(
        config=config,
        keeper=keeper,
        tokens=Tokens(staff=(STAFF,), customer=(CUSTOMER,)),
        peers=Here(),
        metrics=Metrics.create(),
        clock=lambda: (NOW + timedelta(hours=1)).timestamp(),
    )

    async def one(route: str, n: int) -> int:
        name, _, who = route.partition(" ")
        token = CUSTOMER if who == "customer" else STAFF
        params = {"exception_id": ids[f"c-{n}"]} if name == "case" else {"customer_id": f"c-{n}"}
        reply = await api.handle(name, params, {}, {"authorization": f"Bearer {token}"})
        return reply.status

    customers: int = args.customers

    async def sweep(route: str) -> float:
        started = time.process_time()
        for n in range(customers):
            assert await one(route, n) == 200
        return (time.process_time() - started) / customers

    print(f"{args.customers:,} customers of {args.cases} cases (half resolved), in process")
    for label in ("first time", "again"):
        costs = {route: asyncio.run(sweep(route)) for route in ROUTES}
        shown = ", ".join(f"{route} {1e6 * cpu:,.0f} us" for route, cpu in costs.items())
        print(f"{label}: {shown}")


if __name__ == "__main__":
    main()
