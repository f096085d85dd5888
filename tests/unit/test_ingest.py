"""Raw bytes to events: what is accepted, and the reason a person reads when it is not."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from pipeline.core.errors import InvalidEvent
from pipeline.core.ingest import _CHECKS, _FAST, decode_event, parse_event
from pipeline.core.models import EVENT_MODELS, EVENT_TYPES, CustomerProfile, OrderPlaced

PLACED = {
    "event_id": "e-1",
    "type": "order.placed",
    "occurred_at": "2026-03-01T10:00:00+01:00",
    "customer_id": "c-1",
    "order_id": "o-1",
    "value": {"amount": "149.99", "currency": "EUR"},
}


def raw(**changes: object) -> bytes:
    event = {**PLACED, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


def reject(value: bytes | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(value)
    with pytest.raises(InvalidEvent) as fast:  # the per-event path says the same
        decode_event(value)
    assert (fast.value.reason, fast.value.error_class) == (
        info.value.reason,
        info.value.error_class,
    )
    return info.value


def test_valid_order_keeps_decimal_amount_and_offset() -> None:
    event = parse_event(raw(value={"amount": 0.1, "currency": "EUR"}))
    assert isinstance(event, OrderPlaced)
    assert event.value.amount == Decimal("0.1")
    assert event.occurred_at.utcoffset() is not None


def test_unknown_fields_are_kept_for_passthrough() -> None:
    event = parse_event(raw(crm_ticket="T-9"))
    assert event.model_dump()["crm_ticket"] == "T-9"


def test_complaint_defaults_to_negative_sentiment() -> None:
    event = parse_event(
        raw(
            type="interaction.complaint",
            channel="call",
            category="billing",
            order_id=...,
            value=...,
        )
    )
    assert event.sentiment == "negative"  # type: ignore[union-attr]


def test_profile_is_accepted() -> None:
    event = parse_event(raw(type="customer.profile", tier="gold", order_id=..., value=...))
    assert isinstance(event, CustomerProfile)


@pytest.mark.parametrize(
    ("value", "error_class", "reason"),
    [
        (b"", "empty_value", "the message has no value (null or empty)"),
        (None, "empty_value", "the message has no value (null or empty)"),
        (raw()[:-7], "json_truncated", "the message looks truncated"),
        (
            b"hello",
            "json_invalid",
            "the value is not valid JSON (expected value at line 1 column 1)",
        ),
        (b"\xff\xfe{}", "not_utf8", "not valid UTF-8 (byte 0xff at position 0)"),
        (b"[1, 2]", "not_object", "the value is a JSON array, but an event must be a JSON object"),
        (b"42", "not_object", "the value is a JSON number"),
        (b'{"a":' * 300 + b"1" + b"}" * 300, "json_too_deep", "nested too deeply"),
        (raw(type="order.lost"), "type_unknown", "field 'type': unknown event type 'order.lost'"),
        (raw(type=...), "type_missing", "field 'type' is missing"),
        (
            raw(order_id=...),
            "field_missing",
            "field 'order_id' is missing: it is required for order.placed",
        ),
        (raw(event_id=...), "field_missing", "field 'event_id' is missing"),
        (raw(customer_id=...), "field_missing", "field 'customer_id' is missing"),
        (raw(occurred_at=...), "field_missing", "field 'occurred_at' is missing"),
        (
            raw(occurred_at="2026-03-01T10:00:00"),
            "timestamp_no_offset",
            "field 'occurred_at': timestamp has no offset: write it as YYYY-MM-DDThh:mm:ss followed by Z or an offset such as +01:00",
        ),
        (
            raw(occurred_at="2026-02-30T10:00:00Z"),
            "timestamp_invalid",
            "day value is outside expected range",
        ),
        (
            raw(occurred_at=1772359200),
            "timestamp_invalid",
            "1772359200 is not an RFC 3339 timestamp",
        ),
        (raw(promised_by="tomorrow"), "timestamp_invalid", "field 'promised_by': 'tomorrow'"),
        (
            raw(value={"amount": -5, "currency": "EUR"}),
            "field_invalid",
            "field 'value.amount': -5 is not a decimal amount of 0 or more",
        ),
        (raw(value={"amount": "NaN", "currency": "EUR"}), "field_invalid", "field 'value.amount'"),
        (
            raw(value={"amount": 1, "currency": "euro"}),
            "field_invalid",
            "field 'value.currency': 'euro' is not an ISO 4217 currency code",
        ),
        (raw(customer_id=""), "field_invalid", "field 'customer_id': '' is too short"),
        (raw(event_id="x" * 129), "field_invalid", "is too long, at most 128 characters"),
        (raw(customer_id=7), "wrong_type", "field 'customer_id': expected a valid string, got 7"),
        (raw(value="149.99"), "wrong_type", "field 'value'"),
        (raw(value={"amount": 1, "currency": "EUR", "fx": 1}), "field_unknown", "field 'value.fx'"),
        (raw(attributes=[1]), "wrong_type", "field 'attributes'"),
    ],
)
def test_bad_input_gets_an_actionable_reason(
    value: bytes | None, error_class: str, reason: str
) -> None:
    error = reject(value)
    assert error.error_class == error_class
    assert reason in error.reason


def test_channel_reason_lists_the_valid_channels() -> None:
    value = raw(type="interaction.contact", channel="fax", category="x", order_id=..., value=...)
    assert (
        "'fax' is not 'call', 'chat', 'email', 'visit', 'letter', 'social' or 'web'"
        in reject(value).reason
    )


def test_oversized_value_names_the_limit_and_setting() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(b"{" + b" " * 2000 + b"}", max_bytes=1024)
    assert info.value.error_class == "too_large"
    assert "2002 bytes, over the limit of 1024 bytes" in info.value.reason
    assert "pipeline.max_event_bytes" in info.value.reason


def test_several_problems_are_counted() -> None:
    assert "(and 1 more problem)" in reject(raw(order_id=..., value=...)).reason


def test_the_per_event_path_gives_the_dict_the_detectors_read_from_the_model() -> None:
    """decode_event: what Event.model_dump() gives, key for key, in order, typed the same."""
    values = [
        raw(),
        raw(promised_by="2026-03-02T10:00:00.250Z", note="kept", attributes={"a": [1, 2.5]}),
        raw(type="interaction.complaint", order_id=..., value=..., channel="web", category="x"),
        raw(type="customer.profile", tier="gold", order_id=..., value=..., source=None),
    ]
    for value in values:
        fast = decode_event(value)
        dumped = parse_event(value).model_dump()
        assert list(fast.items()) == list(dumped.items())
        assert [type(v) for v in fast.values()] == [type(v) for v in dumped.values()] or all(
            isinstance(a, type(b)) or isinstance(b, type(a))
            for a, b in zip(fast.values(), dumped.values(), strict=True)
        )
    assert decode_event(values[2])["sentiment"] == "negative"
    beyond_64_bits = (
        raw()[:-1] + b',"attributes":{"n":-9223372036854775809},"x":18446744073709551616}'
    )
    assert list(decode_event(beyond_64_bits).items()) == list(
        parse_event(beyond_64_bits).model_dump().items()
    )
    assert decode_event(values[0])["value"]["amount"] == Decimal("149.99")


def test_the_per_event_path_checks_every_type_and_knows_every_field() -> None:
    """Every event type goes through the per-event path (a type with a field it has no check
    for would silently go to pydantic: correct, but slow), and no check is left unused; that
    each check agrees with its model is test_fuzz's (same dict, same rejections)."""
    assert set(_FAST) == set(EVENT_TYPES)
    names = {name for model in EVENT_MODELS for name in model.model_fields if name != "type"}
    assert names == set(_CHECKS)


def test_attributes_nested_deeper_than_the_parser_allows_are_refused_on_both_paths() -> None:
    """orjson reads deeper JSON than pydantic does: the per-event path must not accept what
    parse_event refuses."""
    deep = raw()[:-1] + b',"attributes":{"x":' + b"[" * 300 + b"]" * 300 + b"}}"
    assert reject(deep).error_class == "json_too_deep"
    shallow = raw()[:-1] + b',"attributes":{"x":' + b"[" * 50 + b"]" * 50 + b"}}"
    assert list(decode_event(shallow).items()) == list(parse_event(shallow).model_dump().items())
