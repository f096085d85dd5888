"""A realistic workload: customer stories as the upstream systems would publish them.

Events come in *episodes*, the way customer operations produce them: a customer calls about a
problem (usually once, sometimes again and again, growing angrier), places an order that ships
and is delivered (or is late, lost, fails at the door, or is cancelled), reports a broken asset
(and sometimes reports it again), complains, or has their profile updated. Customers are not
equally active: a tenth of them produce about a quarter of the traffic.

The mix (share of events, measured on the full 300,000-event workload):

| type | share |
|---|---|
| interaction.contact | 60.9% |
| customer.profile | 11.1% |
| order.placed / shipped / delivered | 6.0% / 5.9% / 5.8% |
| interaction.maintenance_requested / completed | 3.9% / 3.1% |
| interaction.complaint | 3.1% |
| order.cancelled, order.delivery_failed | 0.17% / 0.12% |

plus 0.2% repeats of a message already sent (as an upstream retry does), which Casewatch counts
and ignores. Each event is about 330 bytes of JSON (a `source` and a few `attributes`, as real
CRM and order systems send). With the default rules about 5 exceptions open per 1,000 events
(`python bench/workload.py` prints the measured rate per rule, through the offline replay).

Durations are in model hours: an episode unfolds over hours. `span_hours` says how many model
hours the workload covers and `seconds` how many real seconds of event time they map to; the
backlog uses real time (a model hour is an hour, ending now), the paced phases compress a model
day into their duration so that episodes complete and rules fire at the same rate per event.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

CATEGORIES = (
    "billing/overcharge",
    "billing/refund",
    "internet/slow",
    "internet/no-service",
    "tv/no-signal",
    "mobile/roaming",
    "moving",
    "contract/renewal",
    "mobile/no-data",
    "tv/pay-per-view",
    "billing/direct-debit",
    "account/password",
)
ASSETS = ("kitchen-faucet", "boiler", "washing-machine", "front-door", "radiator", "router")
CHANNELS = ("call", "call", "call", "chat", "chat", "email", "web")
CARRIERS = ("DHL", "UPS", "PostNL", "DPD", "GLS")
REGIONS = ("north", "south", "east", "west", "centre")
HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True)
class Msg:
    """One message as published: event time, topic kind, key, value, event id."""

    t: float
    orders: bool  # the orders topic (else interactions)
    key: bytes
    value: bytes
    event_id: str


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class Generator:
    """Episodes of customer stories; `build()` returns them as messages sorted by time."""

    def __init__(
        self,
        customers: int,
        seed: int,
        prefix: str,
        start: float,
        seconds: float,
        span_hours: float = 24.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.customers = customers
        self.prefix = prefix
        self.start, self.end = start, start + seconds
        self.scale = seconds / (span_hours * HOUR)  # real seconds per model second
        self.n = 0
        self.out: list[Msg] = []
        # `Story`'s: events after the window, kept for the next one (None: cut, as `build`)
        self.carry: list[Msg] | None = None

    # -- building blocks ---------------------------------------------------------------------

    def _customer(self) -> str:
        rng = self.rng
        busy = max(1, self.customers // 10)
        i = rng.randrange(busy) if rng.random() < 0.15 else rng.randrange(self.customers)
        return f"cust-{i:06d}"

    def _at(self, t0: float, hours: float) -> float:
        return t0 + hours * HOUR * self.scale

    def _emit(self, customer: str, type_: str, t: float, **fields: Any) -> None:
        if t < self.start or (t >= self.end and self.carry is None):
            return  # the episode runs on past (or began before) the window: cut, as in life
        self.n += 1
        event_id = f"{self.prefix}-{self.n}"
        orders = type_.startswith("order.")
        event = {
            "event_id": event_id,
            "type": type_,
            "occurred_at": iso(t),
            "customer_id": customer,
            "source": "oms" if orders else "crm",
            **fields,
            "attributes": {
                "trace": f"{self.rng.getrandbits(64):016x}",
                "agent": f"agent-{self.rng.randrange(900):03d}",
            },
        }
        value = orjson.dumps(event)
        msg = Msg(t, orders, customer.encode(), value, event_id)
        if t < self.end:
            self.out.append(msg)
        elif self.carry is not None:  # a later chunk's (`Story`)
            self.carry.append(msg)

    # -- episodes ----------------------------------------------------------------------------

    def contacts(self, c: str, t: float) -> None:
        rng = self.rng
        category = rng.choice(CATEGORIES)
        calls = rng.choices((1, 2, 3, 4, 5), weights=(90, 9, 0.9, 0.07, 0.03))[0]
        for k in range(calls):
            angry = (0.04, 0.1, 0.25, 0.4, 0.5)[k]
            sentiment = "negative" if rng.random() < angry else rng.choice(("neutral", "positive"))
            self._emit(
                c,
                "interaction.contact",
                t,
                channel=rng.choice(CHANNELS),
                category=category,
                sentiment=sentiment,
                transferred=rng.random() < 0.1,
                summary=f"asked about {category.replace('/', ' ')}",
            )
            t = self._at(t, rng.uniform(0.2, 5))

    def profile(self, c: str, t: float) -> None:
        rng = self.rng
        tier = rng.choices(("standard", "gold", "platinum"), weights=(86, 10, 4))[0]
        self._emit(
            c,
            "customer.profile",
            t,
            tier=tier,
            segment=rng.choice(("consumer", "business")),
            region=rng.choice(REGIONS),
            name=f"Customer {c[5:]}",
        )

    def order(self, c: str, t: float) -> None:
        rng = self.rng
        order_id = f"{self.prefix}-o{self.n}"
        promise = self._at(t, rng.uniform(4, 10))
        amount = f"{rng.lognormvariate(3.5, 1.0):.2f}"
        self._emit(
            c,
            "order.placed",
            t,
            order_id=order_id,
            promised_by=iso(promise),
            value={"amount": amount, "currency": "EUR"},
        )
        shipped = self._at(t, rng.uniform(0.5, 2))
        if rng.random() < 0.03:
            self._emit(c, "order.cancelled", shipped, order_id=order_id)
            return
        self._emit(
            c,
            "order.shipped",
            shipped,
            order_id=order_id,
            carrier=rng.choice(CARRIERS),
            tracking_id=f"TRK{rng.getrandbits(40):012d}",
        )
        fate = rng.random()
        if fate < 0.01:  # lost: missing_delivery at the promise + 4 h
            return
        arrives = self._at(shipped, rng.uniform(1, 5))
        if fate < 0.02:  # late: missing_delivery, resolved when it arrives
            arrives = promise + self._at(0, rng.uniform(5, 8))
        elif fate < 0.04:  # a failed attempt first: delivery_failed
            self._emit(
                c,
                "order.delivery_failed",
                arrives,
                order_id=order_id,
                reason=rng.choice(("nobody home", "address not found", "depot closed")),
            )
            arrives = self._at(arrives, rng.uniform(2, 6))
        self._emit(c, "order.delivered", arrives, order_id=order_id)

    def maintenance(self, c: str, t: float) -> None:
        rng = self.rng
        asset = f"unit-{int(c[5:]) % 97}/{rng.choice(ASSETS)}"
        category = "plumbing/leak" if "faucet" in asset else "repair"
        self._emit(c, "interaction.maintenance_requested", t, asset_id=asset, category=category)
        done = self._at(t, rng.uniform(1, 6))
        if rng.random() < 0.8:
            self._emit(c, "interaction.maintenance_completed", done, asset_id=asset)
        if rng.random() < 0.01:  # it breaks again: repeat_maintenance
            again = self._at(done, rng.uniform(1, 8))
            self._emit(
                c,
                "interaction.maintenance_requested",
                again,
                asset_id=asset,
                category=category,
                summary="reported again after the repair",
            )

    def complaint(self, c: str, t: float) -> None:
        self._emit(
            c,
            "interaction.complaint",
            t,
            channel=self.rng.choice(CHANNELS),
            category=self.rng.choice(CATEGORIES),
            summary="formal complaint logged by agent",
        )

    # -- the whole ---------------------------------------------------------------------------

    def build(self, events: int, duplicates: float = 0.002, lead: bool = True) -> list[Msg]:
        """About `events` messages (the episodes' events, then repeats), sorted by time."""
        rng = self.rng
        kinds = (self.contacts, self.profile, self.order, self.maintenance, self.complaint)
        weights = (50, 10, 5.5, 3.5, 2.8)
        # Episodes may begin up to half a model day before the window: traffic is under way.
        ahead = 12 * HOUR * self.scale if lead else 0.0
        while len(self.out) < events * (1 - duplicates):
            t = rng.uniform(self.start - ahead, self.end)
            rng.choices(kinds, weights)[0](self._customer(), t)
        self.out.sort(key=lambda m: m.t)
        # An upstream retry: the same message again, a few messages later.
        picks = sorted(rng.sample(range(len(self.out)), int(events * duplicates)), reverse=True)
        for i in picks:
            self.out.insert(min(len(self.out), i + rng.randrange(1, 50)), self.out[i])
        return self.out


def paced(customers: int, rate: float, seconds: float, prefix: str, seed: int) -> list[Msg]:
    """`rate` events/s for `seconds` to be sent live, event times from a moment after they are
    built (time to build them); a model day is compressed into the `seconds` so that episodes
    complete within them."""
    n = max(1, int(rate * seconds))
    start = time.time() + 1.0 + n / 30_000
    return build(customers, n, start, seconds, prefix, seed)


class Story:
    """The paced workload as one unbroken story, told `seconds` at a time (`next`).

    A paced load built chunk by chunk (`paced`) cuts every episode at the chunk's edges: an
    order placed late in one chunk is never delivered, a delivery early in the next has no
    order. Over a soak of many chunks that inflates lost orders, `missing_delivery` findings
    and the open orders kept in state. Here an episode that runs past a chunk's end goes on in
    the next: its later events are kept and sent then, and each chunk starts where the last
    one ended (what the sender could not send while the next chunk was built goes out at once
    when it starts).
    """

    def __init__(self, customers: int, day: float, prefix: str, seed: int) -> None:
        start = time.time() + 1.0
        # a model day in `day` real seconds; the window is set per chunk
        self.gen = Generator(customers, seed, prefix, start, day)
        self.carry: list[Msg] = []
        self.gen.carry = self.carry  # events of later chunks, kept until theirs
        self.edge = start
        self.first = True  # only the first chunk has episodes under way before it

    def next(self, rate: float, seconds: float) -> list[Msg]:
        """The next `seconds` of the story at `rate` events/s (those carried over included)."""
        g = self.gen
        g.start, g.end = self.edge, self.edge + seconds
        self.edge = g.end
        g.out = [m for m in self.carry if m.t < g.end]
        g.carry = self.carry = [m for m in self.carry if m.t >= g.end]
        msgs = g.build(max(1, int(rate * seconds)), lead=self.first)
        self.first = False
        return msgs


def build(
    customers: int,
    events: int,
    start: float,
    seconds: float,
    prefix: str,
    seed: int = 7,
    span_hours: float = 24.0,
) -> list[Msg]:
    """The workload: `events` messages over `customers`, event times in [start, start+seconds)."""
    return Generator(customers, seed, prefix, start, seconds, span_hours).build(events)


def mix(msgs: list[Msg]) -> dict[str, float]:
    """Share of each event type."""
    counts: dict[str, int] = {}
    for m in msgs:
        kind = orjson.loads(m.value)["type"]
        counts[kind] = counts.get(kind, 0) + 1
    return {k: round(v / len(msgs), 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _check(argv: list[str] | None = None) -> None:
    """Print the mix, the event size, and the default rules' firing rate (offline replay)."""
    import argparse
    import io
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from collections import Counter

    from pipeline.config import load_config
    from pipeline.tools.replay import Replay

    p = argparse.ArgumentParser(description=_check.__doc__)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--seconds", type=float, default=24 * HOUR, help="event-time span (real s)")
    args = p.parse_args(argv)
    now = time.time()
    msgs = build(args.customers, args.events, now - args.seconds, args.seconds, "chk")
    size = sum(len(m.value) for m in msgs) / len(msgs)
    print(f"{len(msgs)} events, {len({m.key for m in msgs})} customers, mean {size:.0f} bytes")
    print("mix:", mix(msgs))
    replay = Replay(load_config(), errors=io.StringIO())
    records = list(replay.feed(m.value for m in msgs)) + list(replay.finish(now))
    rules = Counter(f"{r.rule}/{r.status}" for r in records)
    print(f"exception records per 1,000 events: {1000 * len(records) / len(msgs):.2f}", dict(rules))
    sizes = sorted(len(v) for v in replay.states.values())
    print(f"state bytes per customer: mean {sum(sizes) / len(sizes):.0f}, max {sizes[-1]}")


if __name__ == "__main__":
    _check()
