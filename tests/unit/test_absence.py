"""The absence detector with an injected clock: the missing-delivery cases of the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.detectors.absence import AbsenceDetector
from pipeline.detectors.base import Finding
from pipeline.detectors.matchers import Matcher

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
H = 3600.0

MISSING = AbsenceDetector(
    rule="missing_delivery",
    key="order_id",
    start=[[Matcher("type", "=", "order.shipped")]],
    expect=[[Matcher("type", "=", "order.delivered")]],
    cancel=[[Matcher("type", "=", "order.cancelled")]],
    grace=4 * H,
    delay=72 * H,
    deadline_field="promised_by",
)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ev(n: int, type_: str, hours: float, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{n}",
        "type": type_,
        "customer_id": "c-1",
        "order_id": "o-1",
        "occurred_at": at(hours),
        **fields,
    }


def play(events: list[dict[str, Any]], clock: float) -> list[Finding]:
    """Observe the events in order, firing deadlines as event time passes, then advance to `clock` hours."""
    state, found = MISSING.initial(), []
    for e in events:
        step = MISSING.fire(state, e["occurred_at"].timestamp())
        state, found = step.state, found + list(step.findings)
        step = MISSING.observe(state, e, e["occurred_at"].timestamp())
        state, found = step.state, found + list(step.findings)
    step = MISSING.fire(state, at(clock).timestamp())
    return found + list(step.findings)


PLACED = ev(1, "order.placed", 0, promised_by=at(48).isoformat())
SHIPPED = ev(2, "order.shipped", 10)


def test_fires_at_promise_plus_grace_and_not_a_second_before() -> None:
    assert play([PLACED, SHIPPED], clock=52 - 1 / 3600) == []
    (found,) = play([PLACED, SHIPPED], clock=52)
    assert (found.status, found.subject, found.event_time) == (
        "open",
        {"order_id": "o-1"},
        at(52).timestamp(),
    )
    assert found.evidence == ("e-2",)
    assert found.evidence_at == (at(10).timestamp(),)


def test_a_later_promise_on_shipping_moves_the_deadline() -> None:
    moved = ev(2, "order.shipped", 10, promised_by=at(96).isoformat())
    assert play([PLACED, moved], clock=60) == []
    assert len(play([PLACED, moved], clock=100)) == 1


def test_without_a_promise_it_fires_72_hours_after_shipping() -> None:
    assert play([SHIPPED], clock=81.9) == []
    assert play([SHIPPED], clock=82)[0].event_time == at(82).timestamp()


def test_delivery_or_cancellation_in_time_disarms_it() -> None:
    assert play([PLACED, SHIPPED, ev(3, "order.delivered", 40)], clock=500) == []
    assert play([PLACED, SHIPPED, ev(3, "order.cancelled", 40)], clock=500) == []


def test_a_late_delivery_resolves_the_same_exception() -> None:
    opened, resolved = play([PLACED, SHIPPED, ev(3, "order.delivered", 70)], clock=500)
    assert (opened.status, resolved.status) == ("open", "resolved")
    assert opened.exception_id == resolved.exception_id
    assert resolved.evidence == ("e-2", "e-3")
    assert resolved.evidence_at == (at(10).timestamp(), at(70).timestamp())


def test_a_delivery_after_the_deadline_before_the_clock_fired_opens_and_resolves() -> None:
    # The clock lags event time (allowed lateness): the delivery at 60h is seen before the
    # clock reaches the 52h deadline. It was still missing at 52h.
    state = MISSING.initial()
    for e in (PLACED, SHIPPED, ev(3, "order.delivered", 60)):
        step = MISSING.observe(state, e, at(0).timestamp())
        state = step.state
    opened, resolved = step.findings
    assert (opened.status, resolved.status) == ("open", "resolved")
    assert opened.event_time == at(52).timestamp()
    assert opened.exception_id == resolved.exception_id
    assert MISSING.fire(state, at(500).timestamp()).findings == ()


def test_delivery_seen_before_the_shipment_keeps_it_closed() -> None:
    assert play([ev(3, "order.delivered", 5), SHIPPED], clock=500) == []


def test_next_deadline_is_the_earliest_armed_one() -> None:
    state = MISSING.observe(MISSING.initial(), SHIPPED, 0.0).state
    assert MISSING.next_deadline(state) == at(82).timestamp()
    assert MISSING.next_deadline(MISSING.fire(state, at(82).timestamp()).state) is None


def test_a_key_that_fired_and_never_closed_is_forgotten_after_forget_after() -> None:
    """A parcel lost for good: its entry goes once `keep_closed` (the rule's forget_after) has
    passed since its deadline, so lost orders do not pile up in the customer's state."""
    state = MISSING.initial()
    for e in (PLACED, SHIPPED):
        state = MISSING.observe(state, e, e["occurred_at"].timestamp()).state
    state = MISSING.fire(state, at(52).timestamp()).state
    assert state["o-1"]["f"]
    later = 52 + MISSING.keep_closed / H
    other = {**ev(3, "order.placed", later - 1), "order_id": "o-2"}
    kept = MISSING.observe(state, other, other["occurred_at"].timestamp()).state
    assert set(kept) == {"o-1", "o-2"}  # a second short of forget_after: still there
    other = {**ev(4, "order.placed", later), "order_id": "o-3"}
    gone = MISSING.observe(kept, other, other["occurred_at"].timestamp()).state
    assert set(gone) == {"o-2", "o-3"}


def test_a_state_stored_by_an_earlier_version_keeps_its_ids_with_times_unknown() -> None:
    """Before evidence times, "ev" held the start events' ids alone. Such a state still fires
    and resolves with every id; the ids stored then have no time, those seen since have one."""
    old = {
        "o-1": {
            "c": "c-1",
            "p": None,
            "s": at(10).timestamp(),
            "d": at(82).timestamp(),
            "f": False,
            "ev": ["e-2"],
        }
    }
    reshipped = ev(4, "order.shipped", 20)
    state = MISSING.observe(old, reshipped, at(20).timestamp()).state
    (opened,) = MISSING.fire(state, at(92).timestamp()).findings
    assert opened.evidence == ("e-2", "e-4")
    assert opened.evidence_at == (None, at(20).timestamp())
    state = MISSING.fire(state, at(92).timestamp()).state
    (resolved,) = MISSING.observe(
        state, ev(5, "order.delivered", 100), at(100).timestamp()
    ).findings
    assert (resolved.status, resolved.exception_id) == ("resolved", opened.exception_id)
    assert resolved.evidence == ("e-2", "e-4", "e-5")
    assert resolved.evidence_at == (None, at(20).timestamp(), at(100).timestamp())
