"""A scenario of customer stories, in near-real time, that exercises every default rule.

Every deadline in it (delivery promises, and handlers' resolve_within in the shipped config) is
at least half an hour away from `now`, so a live worker and `casewatch replay --until now` agree
on what has fired whatever the exact moment they are compared.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson


def build(now: datetime, noise: int = 60, seed: int = 7) -> list[dict[str, Any]]:
    """The events, sorted by `occurred_at`, the newest a minute before `now`."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    n = 0

    def at(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).isoformat()

    def add(customer: str, type_: str, hours_ago: float, **fields: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        event = {
            "event_id": f"sc-{n}",
            "type": type_,
            "occurred_at": at(hours_ago),
            "customer_id": customer,
            **fields,
        }
        events.append(event)
        return event

    # missing_delivery: never delivered, promise long past -> open
    add("c-lost", "customer.profile", 200, tier="gold", name="Ana")
    add(
        "c-lost",
        "order.placed",
        60,
        order_id="o-lost",
        value={"amount": "89.00", "currency": "EUR"},
        promised_by=at(30),
    )
    add("c-lost", "order.shipped", 40, order_id="o-lost", carrier="DHL")
    # delivered after its deadline -> open, then resolved with the same id
    add("c-late", "order.shipped", 50, order_id="o-late", promised_by=at(45))
    add("c-late", "order.delivered", 20, order_id="o-late")
    # promise moved later by the shipment, still ahead -> nothing yet
    add(
        "c-ahead",
        "order.placed",
        12,
        order_id="o-ahead",
        value={"amount": "20.00", "currency": "EUR"},
        promised_by=at(11),
    )
    add("c-ahead", "order.shipped", 10, order_id="o-ahead", promised_by=at(-48))
    # delivered in time; cancelled -> nothing
    add("c-ontime", "order.shipped", 30, order_id="o-ontime", promised_by=at(25))
    add("c-ontime", "order.delivered", 29, order_id="o-ontime")
    add("c-cancel", "order.shipped", 30, order_id="o-cancel")
    add("c-cancel", "order.cancelled", 28, order_id="o-cancel")
    # no promise: 72 h after shipping -> open
    add("c-nopromise", "order.shipped", 81, order_id="o-nopromise")
    # delivery_failed
    add("c-failed", "order.shipped", 9, order_id="o-failed", promised_by=at(-30))
    add("c-failed", "order.delivery_failed", 9, order_id="o-failed", reason="address not found")
    # repeat_maintenance: the same faucet twice in 30 days; another asset once
    add(
        "c-faucet",
        "interaction.maintenance_requested",
        240,
        asset_id="unit-12/kitchen-faucet",
        category="plumbing/leak",
    )
    add("c-faucet", "interaction.maintenance_completed", 230, asset_id="unit-12/kitchen-faucet")
    add(
        "c-faucet",
        "interaction.maintenance_requested",
        100,
        asset_id="unit-12/boiler",
        category="heating",
    )
    add(
        "c-faucet",
        "interaction.maintenance_requested",
        20,
        asset_id="unit-12/kitchen-faucet",
        category="plumbing/leak",
    )
    # complaint_cluster: three negative interactions within 14 days
    add("c-noisy", "interaction.complaint", 200, channel="call", category="neighbours/noise")
    add(
        "c-noisy",
        "interaction.contact",
        120,
        channel="chat",
        category="neighbours/noise",
        sentiment="negative",
    )
    add("c-noisy", "interaction.complaint", 15, channel="email", category="neighbours/noise")
    # repeated_contact: four calls about one category in 24 h; four spread over 30 h do not
    for hours_ago in (6, 5, 4, 3.5):
        add(
            "c-calls",
            "interaction.contact",
            hours_ago,
            channel="call",
            category="internet/no-service",
        )
    for hours_ago in (40, 30, 20, 10):
        add("c-spread", "interaction.contact", hours_ago, channel="call", category="billing")
    # a repeated event: ignored
    events.append(dict(events[-1]))
    # background noise
    for i in range(noise):
        customer = f"c-noise-{i}"
        add(
            customer,
            "customer.profile",
            rng.uniform(100, 300),
            tier=rng.choice(["standard", "gold"]),
        )
        add(
            customer,
            "interaction.contact",
            rng.uniform(1, 100),
            channel="web",
            category=f"topic-{i}",
            sentiment="neutral",
        )
        # traffic up to the last minutes: the input is live, its clock follows the wall clock
        add(
            customer,
            "interaction.contact",
            rng.uniform(0.02, 0.05),
            channel="chat",
            category=f"topic-{i}",
            sentiment="neutral",
        )
        if i % 3 == 0:
            add(
                customer,
                "order.shipped",
                rng.uniform(20, 60),
                order_id=f"o-n{i}",
                promised_by=at(-48),
            )
            add(customer, "order.delivered", rng.uniform(2, 19), order_id=f"o-n{i}")
    events.sort(key=lambda e: e["occurred_at"])
    return [e for e in events if e["occurred_at"] <= at(1 / 60)]


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
