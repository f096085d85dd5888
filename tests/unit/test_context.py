"""The record's context: which recent events are the record's evidence, found by their times."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.core.context import context_of, evidence_of
from pipeline.core.state import CustomerState

T = datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp()
AT = "2026-03-01T10:00:00Z"
LATER = "2026-03-01T10:00:01Z"
COMPLAINT = "interaction.complaint"


def test_events_of_one_time_go_to_the_evidence_of_that_time_one_each() -> None:
    """Two complaints and a contact at the same second, the complaints the evidence: each id
    gets a complaint of its own, not the contact, and the contact keeps no id."""
    state = CustomerState(
        recent=(
            (T, "interaction.contact", "billing"),
            (T, COMPLAINT, "noise"),
            (T, COMPLAINT, "heating"),
            (T + 1, COMPLAINT, "water"),
        )
    )
    evidence = [("k1", T), ("k2", T), ("k3", T + 1)]
    context = context_of(state, "x", evidence, frozenset({COMPLAINT}))
    assert context["evidence"] == [
        {"event_id": "k1", "occurred_at": AT, "type": COMPLAINT, "detail": "noise"},
        {"event_id": "k2", "occurred_at": AT, "type": COMPLAINT, "detail": "heating"},
        {"event_id": "k3", "occurred_at": LATER, "type": COMPLAINT, "detail": "water"},
    ]
    assert [(e.get("event_id"), e["detail"]) for e in context["recent_events"]] == [
        ("k3", "water"),
        ("k2", "heating"),
        ("k1", "noise"),
        (None, "billing"),
    ]
    assert "event_id" not in context["recent_events"][-1]


def test_with_no_type_to_prefer_the_first_event_of_the_time_not_taken_is_it() -> None:
    state = CustomerState(recent=((T, "order.placed", "o-1"), (T, "order.shipped", "o-1")))
    context = context_of(state, "x", [("a", T), ("b", T)], None)
    assert [(e["event_id"], e["type"]) for e in context["evidence"]] == [
        ("a", "order.placed"),
        ("b", "order.shipped"),
    ]


def test_evidence_no_longer_among_the_recent_events_has_its_id_and_time_only() -> None:
    """It left the 20 recent events, or its time is unknown (a state of an earlier version):
    the id is there all the same; no recent event is given it."""
    state = CustomerState(recent=((T + 1, COMPLAINT, "water"),))
    context = context_of(state, "x", [("gone", T), ("old", None)], None)
    assert context["evidence"] == [
        {"event_id": "gone", "occurred_at": AT, "type": None, "detail": None},
        {"event_id": "old", "occurred_at": None, "type": None, "detail": None},
    ]
    assert context["recent_events"] == [
        {"occurred_at": LATER, "type": COMPLAINT, "detail": "water"}
    ]


def test_a_finding_without_times_gives_each_id_an_unknown_time() -> None:
    assert evidence_of(("a", "b"), ()) == [("a", None), ("b", None)]
    assert evidence_of(("a", "b"), (T,)) == [("a", T), ("b", None)]
    assert evidence_of(("a",), (T, T + 1)) == [("a", T)]
