"""The engine's own shortcuts: what they skip must not change what is found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.config import load_config
from pipeline.core.engine import Engine
from pipeline.core.state import CustomerState
from pipeline.detectors.absence import AbsenceDetector
from pipeline.detectors.base import epoch
from pipeline.detectors.match import MatchDetector
from pipeline.detectors.threshold import ThresholdDetector


def test_an_event_time_read_again_and_another_read_in_between_are_both_right() -> None:
    a = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    b = a + timedelta(hours=1, microseconds=250)
    assert [epoch(a), epoch(b), epoch(a), epoch(a), epoch(b)] == [
        a.timestamp(),
        b.timestamp(),
        a.timestamp(),
        a.timestamp(),
        b.timestamp(),
    ]
    assert epoch("2026-12-01T10:00:00+00:00") == a.timestamp()
    assert epoch(a.replace(tzinfo=None).replace(tzinfo=UTC)) == a.timestamp()


def test_only_detectors_that_can_have_a_deadline_are_asked_for_one() -> None:
    assert AbsenceDetector.timed
    assert not ThresholdDetector.timed
    assert not MatchDetector.timed
    engine = Engine(load_config())
    assert [r.name for r in engine._timed] == ["missing_delivery"]


def test_a_shipped_orders_deadline_survives_the_stored_state_and_fires() -> None:
    """The absence rule's state goes through the table packed; its deadline still counts."""
    engine = Engine(load_config())
    shipped = {
        "event_id": "e-1",
        "type": "order.shipped",
        "customer_id": "c-1",
        "occurred_at": datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        "order_id": "o-1",
        "promised_by": datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        "carrier": None,
        "tracking_id": None,
    }
    state, _ = engine.observe(CustomerState(), shipped, shipped["occurred_at"].timestamp())
    stored = CustomerState.from_bytes(state.to_bytes())
    due = datetime(2026, 12, 2, 14, 0, tzinfo=UTC).timestamp()
    assert engine.next_deadline(stored) == due
    assert engine.fire(stored, due - 1)[1] == []
    fired, findings = engine.fire(stored, due)
    assert [(f.rule, f.status) for f in findings] == [("missing_delivery", "open")]
    assert engine.next_deadline(fired) is None
