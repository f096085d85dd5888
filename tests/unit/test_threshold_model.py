"""Property: over random in-order event sequences, the threshold detector fires exactly where a
brute-force reference model does (count every window from scratch, no incremental state)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.detectors.matchers import Matcher
from pipeline.detectors.threshold import ThresholdDetector

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def reference(times: list[int], count: int, window: int) -> list[int]:
    """Indexes of the events at which the rule fires, recomputed from scratch at every event."""
    fired, quiet = [], float("-inf")
    for i, t in enumerate(times):
        inside = [u for u in times[: i + 1] if t - window < u <= t]
        if len(inside) >= count and t >= quiet:
            fired.append(i)
            quiet = max(inside) + window
    return fired


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=30),
    count=st.integers(min_value=1, max_value=5),
    window=st.integers(min_value=1, max_value=30),
)
def test_threshold_agrees_with_the_reference_model(
    gaps: list[int], count: int, window: int
) -> None:
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    detector = ThresholdDetector(
        rule="r", when=[[Matcher("type", "=", "x")]], count=count, window=float(window)
    )
    state, fired = detector.initial(), []
    for i, t in enumerate(times):
        event = {
            "event_id": f"e-{i}",
            "type": "x",
            "customer_id": "c",
            "occurred_at": T0 + timedelta(seconds=t),
        }
        step = detector.observe(state, event, 0.0)
        state = orjson.loads(orjson.dumps(step.state))  # as the table stores it
        fired += [i] * len(step.findings)
    assert fired == reference(times, count, window)
