"""Dispatch decisions with an injected clock: capacity, overflow, resolutions, escalation."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Config, load_config
from pipeline.routers.dispatch import Dispatcher

H = 3600.0
CONFIG = """
handlers:
  logistics: {capacity: 3, resolve_within: 8h, overflow: supervisors, escalate_to: supervisors}
  supervisors: {capacity: 2, resolve_within: 4h}
  triage: {capacity: 100}
route:
  handler: triage
  routes:
    - {name: logistics, match: ["rule = missing_delivery"], handler: logistics}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    file = tmp_path / "c.yaml"
    file.write_text(CONFIG)
    return load_config(file)


def record(n: int, status: str = "open", rule: str = "missing_delivery") -> dict[str, Any]:
    return {
        "exception_id": f"x{n}",
        "rule": rule,
        "kind": "absence",
        "status": status,
        "severity": "high",
        "customer_id": f"c{n}",
        "subject": {"order_id": f"o{n}"},
        "context": {},
    }


def routes(out: list[Any]) -> list[tuple[str, str]]:
    return [(r.handler, r.record["route"]["reason"]) for r in out]


def test_a_full_handler_overflows_with_the_reason_and_a_resolution_frees_a_slot(
    config: Config,
) -> None:
    d = Dispatcher(config, {})
    placed = [routes(d.on_exception(record(n), 0.0))[0] for n in range(5)]
    assert placed[:3] == [("logistics", "normal")] * 3
    assert placed[3:] == [
        ("supervisors", "overflow: logistics at capacity (3 open)"),
        ("supervisors", "overflow: logistics at capacity (3 open)"),
    ]
    assert (d.open_count("logistics"), d.open_count("supervisors")) == (3, 2)
    out = d.on_resolution(
        {"exception_id": "x1", "handler": "logistics", "status": "resolved", "at": "t"}, 1.0
    )
    assert [(r.handler, r.record["status"]) for r in out] == [("logistics", "resolved")]
    assert routes(d.on_exception(record(5), 2.0)) == [("logistics", "normal")]


def test_when_the_whole_chain_is_full_the_last_takes_it_and_says_so(config: Config) -> None:
    d = Dispatcher(config, {})
    for n in range(5):
        d.on_exception(record(n), 0.0)
    assert routes(d.on_exception(record(9), 0.0)) == [
        (
            "supervisors",
            "overflow: logistics, supervisors at capacity; over capacity at supervisors",
        )
    ]


def test_a_repeated_record_is_routed_once(config: Config) -> None:
    d = Dispatcher(config, {})
    assert len(d.on_exception(record(1), 0.0)) == 1
    assert d.on_exception(record(1), 0.0) == []
    assert d.open_count("logistics") == 1


def test_open_past_resolve_within_escalates_at_the_deadline_not_before(config: Config) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 10.0)
    assert d.fire(10.0 + 8 * H - 1) == []
    out, told = d.fire(10.0 + 8 * H)
    # logistics is told where it went: its view shows it handed on, not open and late
    assert (told.handler, told.reason, told.record["route"]["handler"]) == (
        "logistics",
        "handed_on",
        "supervisors",
    )
    assert (out.handler, out.record["status"], out.record["exception_id"]) == (
        "supervisors",
        "escalated",
        "x1",
    )
    assert (
        out.record["route"]["reason"]
        == "escalation: open past the resolve_within of logistics (8h)"
    )
    assert (d.open_count("logistics"), d.open_count("supervisors")) == (0, 1)
    assert d.breaches == ["logistics"]
    # supervisors has no escalate_to: a breach there is counted, nothing republished
    assert d.fire(10.0 + 12 * H) == []
    assert d.breaches == ["logistics", "supervisors"]


def test_a_resolved_exception_does_not_escalate(config: Config) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 0.0)
    d.on_exception(record(1, status="resolved"), 1.0)  # e.g. the delivery came
    assert d.fire(100 * H) == []
    assert d.open_count("logistics") == 0


def test_only_the_holder_can_resolve_and_acknowledging_keeps_it_open(config: Config) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 0.0)
    stranger = {"exception_id": "x1", "handler": "triage", "status": "resolved", "at": "t"}
    assert d.on_resolution(stranger, 1.0) == []
    ack = {"exception_id": "x1", "handler": "logistics", "status": "acknowledged", "at": "t"}
    assert d.on_resolution(ack, 1.0) == []
    assert d.open_count("logistics") == 1


def test_reassigning_hands_it_to_the_overflow_handler(config: Config) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 0.0)
    out = d.on_resolution(
        {"exception_id": "x1", "handler": "logistics", "status": "reassigned", "at": "t"}, 1.0
    )
    assert routes(out) == [
        ("supervisors", "reassigned by logistics"),
        ("logistics", "reassigned by logistics"),  # handed on: told where it went
    ]
    assert out[1].record["route"]["handler"] == "supervisors"
    assert (d.open_count("logistics"), d.open_count("supervisors")) == (0, 1)


def test_counts_and_timers_are_rebuilt_from_the_table(config: Config) -> None:
    store: dict[str, Any] = {}
    d = Dispatcher(config, store)
    for n in range(4):
        d.on_exception(record(n), 0.0)
    again = Dispatcher(config, store)
    again.rebuild(store.items())
    assert (again.open_count("logistics"), again.open_count("supervisors")) == (3, 1)
    escalated = [r.handler for r in again.fire(8 * H) if r.reason == "escalation"]
    assert escalated == ["supervisors"] * 3


def test_closed_exceptions_are_forgotten_after_a_week(config: Config) -> None:
    store: dict[str, Any] = {}
    d = Dispatcher(config, store)
    d.on_exception(record(1), 0.0)
    d.on_exception(record(1, status="resolved"), 1.0)
    d.fire(1.0 + 7 * 86400 - 1)
    assert "x1" in store
    d.fire(1.0 + 7 * 86400)
    assert "x1" not in store


def test_closed_exceptions_are_kept_as_long_as_the_dedupe_window(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("pipeline: {dedupe_window: 2h}\n" + CONFIG)
    store: dict[str, Any] = {}
    d = Dispatcher(load_config(file), store)
    d.on_exception(record(1), 0.0)
    d.on_exception(record(1, status="resolved"), 1.0)
    d.fire(1.0 + 2 * H - 1)
    assert "x1" in store
    assert d.on_exception(record(1, status="resolved"), 2.0) == []  # a duplicate: ignored
    d.fire(1.0 + 2 * H)
    assert "x1" not in store
    assert d.entries == 0


def test_a_resolution_after_the_sla_deadline_escalates_first_whatever_the_clock(
    config: Config,
) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 0.0)  # the clock never moves: no fire() at all
    out = d.on_exception(record(1, status="resolved"), 9 * H)  # delivered 9 h later
    assert [(r.handler, r.record["status"], r.reason) for r in out] == [
        ("supervisors", "escalated", "escalation"),
        ("logistics", "escalated", "handed_on"),
        ("logistics", "resolved", "update"),  # every handler that held it sees it closed
        ("supervisors", "resolved", "update"),
    ]
    # ... and a resolution before the deadline does not escalate
    d.on_exception(record(2), 0.0)
    out = d.on_exception(record(2, status="resolved"), 7 * H)
    assert [(r.handler, r.record["status"]) for r in out] == [("logistics", "resolved")]


def test_the_former_holder_may_still_resolve_after_an_escalation(config: Config) -> None:
    d = Dispatcher(config, {})
    d.on_exception(record(1), 0.0)
    d.fire(8 * H)
    out = d.on_resolution(
        {"exception_id": "x1", "handler": "logistics", "status": "resolved", "at": "t"}, 9 * H
    )
    assert [(r.handler, r.record["status"]) for r in out] == [
        ("logistics", "resolved"),  # the former holder's view closes it too
        ("supervisors", "resolved"),
    ]
    assert d.open_count("supervisors") == 0


def test_the_oldest_open_age_comes_from_memory_and_follows_the_holder(config: Config) -> None:
    class Counting(dict[str, Any]):
        reads = 0

        def get(self, key: str, default: Any = None) -> Any:
            Counting.reads += 1
            return super().get(key, default)

        def __getitem__(self, key: str) -> Any:
            Counting.reads += 1
            return super().__getitem__(key)

    store = Counting()
    d = Dispatcher(config, store)
    d.on_exception(record(1), 10.0)
    d.on_exception(record(2), 20.0)
    before = Counting.reads
    assert d.oldest_open("logistics") == 10.0
    assert Counting.reads == before  # the gauge does not read the table
    d.on_exception(record(1, status="resolved"), 30.0)
    assert d.oldest_open("logistics") == 20.0
    d.fire(20.0 + 8 * H)  # x2 escalates to supervisors at its deadline
    assert d.oldest_open("logistics") is None
    assert d.oldest_open("supervisors") == 20.0 + 8 * H
    again = Dispatcher(config, store)
    again.rebuild(store.items())
    assert again.oldest_open("supervisors") == 20.0 + 8 * H


def test_the_oldest_open_age_matches_every_open_exception_through_many_changes(
    tmp_path: Path,
) -> None:
    """Routing, resolutions by handler and detector, reassignment, escalation back and forth
    and a rebuild, in a random order: the oldest open time of every handler is the smallest
    over its open exceptions, as the table holds them."""
    file = tmp_path / "c.yaml"
    file.write_text(
        CONFIG.replace(
            "supervisors: {capacity: 2, resolve_within: 4h}",
            "supervisors: {capacity: 2, resolve_within: 4h, escalate_to: logistics}",
        )
    )
    config = load_config(file)
    rng = random.Random(7)
    store: dict[str, Any] = {}
    d = Dispatcher(config, store)
    now = 0.0
    for step in range(3000):
        now += rng.random() * 600
        n = rng.randrange(400)
        entry = store.get(f"x{n}")
        choice = rng.random()
        if entry is None:
            d.on_exception(record(n), now)
        elif entry.get("closed") is None and choice < 0.3:
            d.on_exception(record(n, status="resolved"), now)
        elif entry.get("closed") is None and choice < 0.6:
            status = "resolved" if choice < 0.45 else "reassigned"
            d.on_resolution(
                {
                    "exception_id": f"x{n}",
                    "handler": entry["holders"][-1],
                    "status": status,
                    "at": "2026-01-01T00:00:00+00:00",
                },
                now,
            )
        d.fire(now)
        if step % 700 == 699:
            d = Dispatcher(config, store)
            d.rebuild(store.items())
        for handler in config.handlers:
            expected = [
                e["since"]
                for e in store.values()
                if e.get("closed") is None and handler in e["holders"]
            ]
            assert d.oldest_open(handler) == min(expected, default=None), (step, handler)
    assert sum(len(h) for h in d._oldest.values()) < 3 * sum(map(len, d.open.values())) + 200
