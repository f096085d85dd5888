"""A worker restarted with a backlog on its orders partition does not page anyone for orders
whose delivery is in that backlog: an input with records not read yet holds the clock, however
long it delivers nothing (pipeline/core/clock.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import scenario
from tests.integration.test_detect import casewatch, collect
from tests.integration.workers import run_worker, wait_for

pytestmark = pytest.mark.integration

ORDERS = 30


@pytest.fixture
def one_partition(config_file: Path) -> Path:
    """One partition, and inputs idle after 50 ms: a partition whose orders input delivers
    nothing for that long while it is read counts as quiet, unless its backlog is seen."""
    data = yaml.safe_load(config_file.read_text())
    data["pipeline"] |= {"partitions": 1, "idle_after": "1ms"}
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_file


def order(n: int, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}-{n}",
        "type": kind,
        "occurred_at": at.isoformat(),
        "customer_id": f"c-{n}",
        "order_id": f"o-{n}",
        **fields,
    }


def test_no_missing_delivery_for_an_order_whose_delivery_is_in_the_backlog(
    one_partition: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    config = str(one_partition)
    with run_worker(one_partition, bootstrap, tmp_path / "one") as worker:
        # Deadlines set from when the worker is up: the shipments are read well before them.
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=20)
        promised = (deadline - timedelta(hours=4)).isoformat()  # the rule's grace is 4 h
        shipped = [order(n, "order.shipped", now, promised_by=promised) for n in range(ORDERS)]
        contact = {
            "event_id": "contact-1",
            "type": "interaction.contact",
            "occurred_at": now.isoformat(),
            "customer_id": "c-talks",
            "channel": "call",
            "category": "billing/question",
        }
        first = scenario.write(tmp_path / "first.jsonl", [*shipped, contact])
        casewatch("produce", str(first), "--config", config, bootstrap=bootstrap)
        wait_for(
            "the shipments",
            lambda: worker.metric("casewatch_events_total") == ORDERS + 1,
            60,
        )
        assert datetime.now(UTC) < deadline - timedelta(seconds=2), "shipments read too late"
    # The worker is stopped; every order is delivered on time, into its orders partition.
    delivered = [order(n, "order.delivered", now + timedelta(seconds=2)) for n in range(ORDERS)]
    second = scenario.write(tmp_path / "second.jsonl", delivered)
    casewatch("produce", str(second), "--config", config, bootstrap=bootstrap)
    # Restarted once the deadlines have passed on the wall clock: the deliveries are unread
    # while the interactions input is caught up and quiet.
    wait_for("the deadlines", lambda: datetime.now(UTC) > deadline + timedelta(seconds=1), 60)
    with run_worker(one_partition, bootstrap, tmp_path / "two") as worker:
        wait_for(
            "the deliveries",
            lambda: worker.metric("casewatch_events_total") == ORDERS,
            60,
        )
        records = asyncio.run(collect(bootstrap, f"{unique}.exceptions", set(), settle=3))
    opened = [r for r in records if r["rule"] == "missing_delivery"]
    assert opened == [], f"{len(opened)} missing deliveries for orders delivered on time"
