"""The match detector and the matcher operators."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.detectors.match import MatchDetector
from pipeline.detectors.matchers import Matcher, matches_any

FAILED = MatchDetector(
    rule="delivery_failed",
    when=[[Matcher("type", "=", "order.delivery_failed")]],
    subject=("order_id",),
)


def ev(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "customer_id": "c-1",
        "occurred_at": "2026-03-01T10:00:00+00:00",
        **fields,
    }


def test_a_failed_delivery_is_an_exception_about_its_order() -> None:
    (found,) = FAILED.observe(None, ev(type="order.delivery_failed", order_id="o-1"), 0.0).findings
    assert found.subject == {"order_id": "o-1", "event_id": "e-1"}
    assert found.evidence == ("e-1",)
    assert found.evidence_at == (datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp(),)


def test_other_events_are_not() -> None:
    assert FAILED.observe(None, ev(type="order.delivered", order_id="o-1"), 0.0).findings == ()


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (Matcher("tier", "=", "gold"), True),
        (Matcher("tier", "!=", "gold"), False),
        (Matcher("tier", "=~", "gold|platinum"), True),
        (Matcher("tier", "=~", "gol"), False),  # a regex matches the whole value
        (Matcher("tier", "!~", "standard"), True),
        (Matcher("tier", "in", ("gold", "platinum")), True),
        (Matcher("value.currency", "=", "EUR"), True),
        (Matcher("region", "=", ""), True),  # a missing field is ''
        (Matcher("transferred", "=", "true"), True),
    ],
)
def test_matcher_operators(matcher: Matcher, expected: bool) -> None:
    event = {"tier": "gold", "value": {"currency": "EUR"}, "transferred": True}
    assert matcher.matches(event) is expected


def test_condition_sets_mean_any_of() -> None:
    sets = [[Matcher("a", "=", "1"), Matcher("b", "=", "2")], [Matcher("c", "=", "3")]]
    assert matches_any(sets, {"c": "3"})
    assert not matches_any(sets, {"a": "1"})


def test_a_bad_regex_fails_when_the_rule_is_built() -> None:
    with pytest.raises(re.error, match="missing \\)"):
        Matcher("x", "=~", "(")
