"""The threshold detector: window edges, firing once, firing again, groups, out of order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.detectors.base import Finding
from pipeline.detectors.matchers import Matcher
from pipeline.detectors.threshold import ThresholdDetector

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
DAY = 86400.0

REPEAT = ThresholdDetector(
    rule="repeat_maintenance",
    when=[[Matcher("type", "=", "interaction.maintenance_requested")]],
    count=2,
    window=30 * DAY,
    group_by=("asset_id",),
)
CLUSTER = ThresholdDetector(
    rule="complaint_cluster",
    when=[[Matcher("type", "=", "interaction.complaint")], [Matcher("sentiment", "=", "negative")]],
    count=3,
    window=14 * DAY,
)


def ev(n: int, days: float, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{n}",
        "customer_id": "c-1",
        "occurred_at": T0 + timedelta(days=days),
        **fields,
    }


def run(detector: ThresholdDetector, events: list[dict[str, Any]]) -> list[Finding]:
    state, found = detector.initial(), []
    for e in events:
        step = detector.observe(state, e, 0.0)
        state = step.state
        found.extend(step.findings)
    return found


def leak(n: int, days: float, asset: str = "unit-12/kitchen-faucet") -> dict[str, Any]:
    return ev(n, days, type="interaction.maintenance_requested", asset_id=asset)


def test_second_request_for_the_same_asset_within_30_days_fires() -> None:
    (found,) = run(REPEAT, [leak(1, 0), leak(2, 8)])
    assert found.subject == {"asset_id": "unit-12/kitchen-faucet"}
    assert found.evidence == ("e-1", "e-2")
    assert found.event_time == (T0 + timedelta(days=8)).timestamp()


def test_exactly_at_the_window_edge_is_outside() -> None:
    assert run(REPEAT, [leak(1, 0), leak(2, 30)]) == []
    assert len(run(REPEAT, [leak(1, 0), leak(2, 29.999)])) == 1


def test_other_assets_are_other_groups() -> None:
    assert run(REPEAT, [leak(1, 0), leak(2, 1, asset="unit-12/shower")]) == []


def test_fires_once_then_again_only_after_its_evidence_left_the_window() -> None:
    complaints = [ev(i, d, type="interaction.complaint") for i, d in enumerate([0, 1, 2, 3, 10])]
    assert len(run(CLUSTER, complaints)) == 1
    later = [*complaints, *(ev(10 + i, 16 + i, type="interaction.complaint") for i in range(3))]
    found = run(CLUSTER, later)
    assert len(found) == 2
    # At day 16 the first evidence (days 0-2) has left; days 3, 10 and 16 are a new cluster.
    assert found[1].evidence == ("e-3", "e-4", "e-10")
    assert found[1].evidence_at == tuple((T0 + timedelta(days=d)).timestamp() for d in (3, 10, 16))


def test_negative_contacts_count_as_complaints_and_neutral_ones_do_not() -> None:
    events = [
        ev(1, 0, type="interaction.contact", sentiment="negative"),
        ev(2, 1, type="interaction.contact", sentiment="neutral"),
        ev(3, 2, type="interaction.complaint"),
    ]
    assert run(CLUSTER, events) == []
    assert (
        len(run(CLUSTER, [*events, ev(4, 3, type="interaction.contact", sentiment="negative")]))
        == 1
    )


def test_out_of_order_events_count_in_their_own_window() -> None:
    (found,) = run(REPEAT, [leak(2, 8), leak(1, 0)])
    assert found.evidence == ("e-1", "e-2")
    assert found.evidence_at == (T0.timestamp(), (T0 + timedelta(days=8)).timestamp())


def test_exception_id_is_deterministic_and_depends_on_the_trigger() -> None:
    a = run(REPEAT, [leak(1, 0), leak(2, 8)])[0]
    b = run(REPEAT, [leak(1, 0), leak(2, 8)])[0]
    c = run(REPEAT, [leak(1, 1), leak(2, 8)])[0]
    assert a.exception_id == b.exception_id != c.exception_id
