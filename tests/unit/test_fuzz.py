"""Hostile input: random bytes and mutated events never crash the parser or the config loader
and never hang; every rejection is an InvalidEvent / ConfigError with a reason a person can read
(so the worker can dead-letter it)."""

from __future__ import annotations

import json
import string
import time
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.errors import ConfigError, InvalidEvent
from pipeline.ingest import parse_event

VALID = {
    "event_id": "e-1",
    "type": "order.placed",
    "occurred_at": "2026-03-01T10:00:00Z",
    "customer_id": "c-1",
    "order_id": "o-1",
    "value": {"amount": "12.50", "currency": "EUR"},
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def check(value: bytes) -> None:
    started = time.perf_counter()
    problem: InvalidEvent | None = None
    try:
        parse_event(value)
    except InvalidEvent as exc:
        problem = exc
    assert time.perf_counter() - started < 1.0  # no pathological input
    if problem is not None:
        assert problem.reason.strip()
        assert problem.error_class.replace("_", "").isalnum()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(value: bytes) -> None:
    check(value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(VALID), "type", "x", "attributes"]), JSON))
def test_events_with_random_field_values(changes: dict[str, object]) -> None:
    # the standard library writes what orjson refuses (integers beyond 64 bits): so do producers
    check(json.dumps({**VALID, **changes}).encode())


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_truncated_and_spliced_events(cut: int, junk: bytes) -> None:
    raw = orjson.dumps(VALID)
    check(raw[:cut] + junk + raw[cut:])


YAML_TEXT = st.text(alphabet=string.printable, max_size=400)


@settings(max_examples=300, deadline=None)
@given(YAML_TEXT)
def test_config_loader_never_crashes(tmp_path_factory: object, text: str) -> None:
    folder = Path(getattr(tmp_path_factory, "mktemp")("cfg"))  # noqa: B009
    file = folder / "c.yaml"
    file.write_text(text)
    problems: list[str] | None = None
    try:
        load_config(file)
    except ConfigError as exc:
        problems = exc.problems
    if problems is not None:
        assert problems
        assert all(p.strip() for p in problems)
