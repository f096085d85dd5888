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
from pipeline.core.errors import ConfigError, InvalidEvent
from pipeline.core.ingest import decode_event, parse_event
from pipeline.core.models import EVENT_TYPES

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
        event = parse_event(value)
    except InvalidEvent as exc:
        problem = exc
    assert time.perf_counter() - started < 1.0  # no pathological input
    if problem is not None:
        assert problem.reason.strip()
        assert problem.error_class.replace("_", "").isalnum()
    # The per-event path accepts the same, with the same dict, and rejects with the same words.
    fast: dict[str, object] | InvalidEvent
    try:
        fast = decode_event(value)
    except InvalidEvent as exc:
        fast = exc
    if problem is None:
        assert isinstance(fast, dict)
        assert list(fast.items()) == list(event.model_dump().items())
    else:
        assert isinstance(fast, InvalidEvent)
        assert (fast.reason, fast.error_class) == (problem.reason, problem.error_class)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(value: bytes) -> None:
    check(value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*sorted(VALID), "type", "x", "attributes"]), JSON))
def test_events_with_random_field_values(changes: dict[str, object]) -> None:
    # the standard library writes what orjson refuses (integers beyond 64 bits): so do producers
    check(json.dumps({**VALID, **changes}).encode())


TIMES = st.sampled_from(
    [
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00.5+05:30",
        "2026-03-01T10:00:00.123456-00:00",
        "2026-03-01T10:00:00.1234567Z",
        "2026-03-01T10:00:00",
        "2026-02-30T10:00:00Z",
        "2026-03-01 10:00:00Z",
        "2026-03-01T24:00:00Z",
        "2026-03-01T10:00:60Z",
        "2026-03-01T10:00:00+25:00",
        "0000-03-01T10:00:00Z",
    ]
)
AMOUNTS = st.sampled_from(["0", "12.50", "1e3", " 1", "-1", "1.123456789", "9" * 29, "00.10", ""])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(EVENT_TYPES),
    st.dictionaries(
        st.sampled_from(["channel", "category", "sentiment", "transferred", "summary", "tier"]),
        st.none() | st.booleans() | st.sampled_from(["call", "fax", "neutral", "", "x" * 201]),
        max_size=4,
    ),
    TIMES,
    AMOUNTS,
    st.sampled_from(["EUR", "eur", "EURO", "EU\n"]),
)
def test_plausible_events_of_every_type(
    kind: str, fields: dict[str, object], at: str, amount: str, currency: str
) -> None:
    """Near-valid events of every type, the kind the per-event path checks itself."""
    event = {
        **VALID,
        "type": kind,
        "occurred_at": at,
        "promised_by": at,
        "value": {"amount": amount, "currency": currency},
        "channel": "chat",
        "category": "billing",
        "asset_id": "a-1",
        "tier": "gold",
        **fields,
    }
    check(orjson.dumps(event))


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
