"""What `casewatch demo` publishes: background noise (contacts, orders, deliveries, profile
updates) and, every round, the seed stories woven in (the lost modem and five calls, the
leaking faucet, the noisy neighbours, a burst of failed deliveries, a couple of broken
messages), each as JSON at its moment in real time."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta
from typing import Any

import orjson

CATEGORIES = ("billing", "internet/slow", "tv/no-signal", "mobile/roaming", "moving", "contract")


class Traffic:
    """Realistic events in real time: noise plus the seed stories."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0
        self.round = 0

    def _event(self, customer: str, type_: str, at: datetime, **fields: Any) -> dict[str, Any]:
        self.n += 1
        return {
            "event_id": f"demo-{os.getpid()}-{self.n}",
            "type": type_,
            "occurred_at": at.isoformat(),
            "customer_id": customer,
            "source": "demo",
            **fields,
        }

    def noise(self, now: datetime) -> dict[str, Any]:
        rng = self.rng
        customer = f"c-{rng.randrange(2000):04d}"
        roll = rng.random()
        if roll < 0.55:
            sentiment = rng.choice(["neutral", "neutral", "positive", "negative"])
            channel = rng.choice(["call", "chat", "email", "web"])
            return self._event(
                customer,
                "interaction.contact",
                now,
                channel=channel,
                category=rng.choice(CATEGORIES),
                sentiment=sentiment,
            )
        if roll < 0.65:
            return self._event(
                customer, "customer.profile", now, tier=rng.choice(["standard"] * 9 + ["gold"])
            )
        order = f"o-{customer}-{rng.randrange(5)}"
        if roll < 0.75:
            value = {"amount": f"{rng.uniform(5, 900):.2f}", "currency": "EUR"}
            promise = (now + timedelta(days=2)).isoformat()
            return self._event(
                customer, "order.placed", now, order_id=order, value=value, promised_by=promise
            )
        if roll < 0.85:
            return self._event(customer, "order.shipped", now, order_id=order)
        if roll < 0.985:
            return self._event(customer, "order.delivered", now, order_id=order)
        return self._event(
            customer, "order.delivery_failed", now, order_id=order, reason="nobody home"
        )

    def stories(self, now: datetime) -> list[tuple[float, dict[str, Any] | bytes]]:
        """(seconds from now, event) for one round of the seed stories."""
        self.round += 1
        r = self.round
        ana, ben, cho = f"ana-{r}", f"ben-{r}", f"cho-{r}"
        modem = f"o-modem-{r}"

        def at(seconds: float) -> datetime:
            return now + timedelta(seconds=seconds)

        out: list[tuple[float, dict[str, Any] | bytes]] = [
            (0, self._event(ana, "customer.profile", at(0), tier="gold", name="Ana")),
            (
                1,
                self._event(
                    ana,
                    "order.placed",
                    at(1),
                    order_id=modem,
                    value={"amount": "89.00", "currency": "EUR"},
                    promised_by=at(4).isoformat(),
                ),
            ),
            (2, self._event(ana, "order.shipped", at(2), order_id=modem, carrier="DHL")),
            # the modem never arrives: missing_delivery at promise + 10 s; then five calls
            *[
                (
                    16 + 3 * i,
                    self._event(
                        ana,
                        "interaction.contact",
                        at(16 + 3 * i),
                        channel="call",
                        category="internet/no-service",
                        sentiment="negative" if i > 2 else "neutral",
                    ),
                )
                for i in range(5)
            ],
            (
                3,
                self._event(
                    ben,
                    "interaction.maintenance_requested",
                    at(3),
                    asset_id="unit-12/kitchen-faucet",
                    category="plumbing/leak",
                ),
            ),
            (
                9,
                self._event(
                    ben,
                    "interaction.maintenance_completed",
                    at(9),
                    asset_id="unit-12/kitchen-faucet",
                ),
            ),
            (
                14,
                self._event(
                    ben,
                    "interaction.maintenance_requested",
                    at(14),
                    asset_id="unit-12/kitchen-faucet",
                    category="plumbing/leak",
                    summary="leaking again",
                ),
            ),
            *[
                (
                    5 + 4 * i,
                    self._event(
                        cho,
                        "interaction.complaint",
                        at(5 + 4 * i),
                        channel="call",
                        category="neighbours/noise",
                    ),
                )
                for i in range(3)
            ],
            # a bad day for one depot: six failed deliveries at once (logistics holds 3)
            *[
                (
                    8,
                    self._event(
                        f"d-{r}-{i}",
                        "order.delivery_failed",
                        at(8),
                        order_id=f"o-d{r}-{i}",
                        reason="depot closed",
                    ),
                )
                for i in range(6)
            ],
            # broken upstream messages: they go to the dead-letter topic
            (10, b'{"event_id": "broken-1", "type": "interaction.contact"'),
            (
                11,
                orjson.dumps(
                    {
                        "event_id": f"bad-{r}",
                        "type": "order.shipped",
                        "occurred_at": "yesterday",
                        "customer_id": "x",
                    }
                ),
            ),
        ]
        return out
