"""Raw message bytes to a validated event, or an `InvalidEvent` with a reason a person can act on.

One pass of pydantic-core's JSON parser validates and builds the event (no separate json.loads).
Only when that fails do we look closer at the bytes, to say *why* in plain words.

`decode_event` is the per-event path: it checks the common, plainly valid event itself and
returns the dict the detectors read (what `Event.model_dump()` gives, key for key and in the
same order); whatever it is not sure of, it hands to `parse_event`, so what is accepted and
every reason for a rejection stay pydantic's.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, Union

import msgspec
import orjson
from pydantic import TypeAdapter, ValidationError

from pipeline.config import Config
from pipeline.core.errors import InvalidEvent
from pipeline.core.models import EVENT_MODELS, EVENT_TYPES, Event

_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
TIME_FORMAT = "YYYY-MM-DDThh:mm:ss followed by Z or an offset such as +01:00"  # RFC 3339, in words
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
_TYPES = ", ".join(EVENT_TYPES)


def parse_event(value: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Event:
    """Validate one message value. Raises `InvalidEvent` (reason + class) when it is not an event."""
    if not value:
        raise InvalidEvent(
            "the message has no value (null or empty): expected one JSON event object",
            "empty_value",
        )
    if len(value) > max_bytes:
        raise InvalidEvent(
            f"the value is {len(value)} bytes, over the limit of {max_bytes} bytes for one event "
            "(pipeline.max_event_bytes in the config): keep bulky data out of events",
            "too_large",
        )
    try:
        return _EVENT.validate_json(value)
    except ValidationError as exc:
        raise explain(value, exc) from None


def decode_event(value: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> dict[str, Any]:
    """Validate one message value and return it as the detectors read it (`engine.event_dict`
    of `parse_event`'s event: its fields with defaults applied, times as datetimes, amounts
    as Decimals, unknown fields after the known ones). Raises `InvalidEvent` as `parse_event`
    does, with the same reasons."""
    if value and len(value) <= max_bytes and _plain(value.translate(_SCAN)):
        # The usual event: read and checked by msgspec straight from the bytes.
        try:
            known = _decode_known(value)
        except msgspec.DecodeError:  # not plainly valid, or with fields of its own: below
            known = None
        if known is not None:
            of = _BY_STRUCT[known.__class__]
            values = _as_tuple(known)
            at = of.type_at
            event = _finished(
                dict(zip(of.order, (*values[:at], of.kind, *values[at:]), strict=True)), of
            )
            if event is not None:
                return event
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError:
            raw = None
        kind = raw.get("type") if raw.__class__ is dict else None
        fast = _FAST.get(kind) if kind.__class__ is str else None
        if fast is not None:
            event = _checked(raw, fast)
            if event is not None:
                return event
    data: dict[str, Any] = parse_event(value, max_bytes).model_dump()
    return data


# A value's bytes as what `_plain` looks for: digits as 0, opening brackets as [, the rest blank.
_SCAN = bytes(
    ord("0") if chr(b).isdigit() and b < 128 else ord("[") if b in b"[{" else ord(" ")
    for b in range(256)
)
_LONG = b"0" * 19
_BRACKETS = 100  # fewer opening brackets than this nest less deep than pydantic's limit


def _plain(scanned: bytes) -> bool:
    """Whether a value is for the per-event path. orjson reads an integer beyond 64 bits as a
    float, pydantic as an int: such a number (or any run of 19 digits, even in a string) goes
    to pydantic, and so does a value that could nest deeper than pydantic's parser allows."""
    return _LONG not in scanned and scanned.count(b"[") < _BRACKETS


_TIME = r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)\Z"
_ID, _LABEL, _TEXT = (1, 128), (1, 200), (0, 4000)  # text: least and most characters


class _Money(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[str, msgspec.Meta(pattern=r"\A\d{1,20}(?:\.\d{1,8})?\Z")]
    currency: Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{3}\Z")]


def _text(least: int, most: int) -> Any:
    return Annotated[str, msgspec.Meta(min_length=least, max_length=most)]


# Each field of the contract's events by name, as msgspec checks it: what its model declares,
# or stricter (then pydantic decides: test_fuzz holds the checks to the models). The same name
# has the same type in every event. Times are checked as text here and read by `_finished`.
_CHECKS: dict[str, Any] = {
    "event_id": _text(*_ID),
    "customer_id": _text(*_ID),
    "order_id": _text(*_ID),
    "asset_id": _text(*_ID),
    "occurred_at": Annotated[str, msgspec.Meta(pattern=_TIME)],
    "promised_by": Annotated[str, msgspec.Meta(pattern=_TIME)],
    "source": _text(*_LABEL),
    "category": _text(*_LABEL),
    "tier": _text(*_LABEL),
    "segment": _text(*_LABEL),
    "region": _text(*_LABEL),
    "carrier": _text(*_LABEL),
    "tracking_id": _text(*_LABEL),
    "summary": _text(*_TEXT),
    "name": _text(*_TEXT),
    "reason": _text(*_TEXT),
    "channel": Literal["call", "chat", "email", "visit", "letter", "social", "web"],
    "sentiment": Literal["negative", "neutral", "positive"],
    "transferred": bool,
    "attributes": dict[str, Any],
    "value": _Money,
}
_TIMES = ("occurred_at", "promised_by")


class _Fast(NamedTuple):
    """One event type's check: msgspec structs of its fields in the model's order (`struct`
    for a dict, `known` for the bytes of an event with no other fields, its type as the
    tag), their names, and the fields read after them (times, money)."""

    kind: str
    struct: type[msgspec.Struct]
    known: type[msgspec.Struct]
    order: tuple[str, ...]  # the model's fields, in order
    names: frozenset[str]
    type_at: int  # where "type" is among them
    times: tuple[str, ...]
    money: bool


def _fast_types() -> dict[Any, _Fast]:
    fast: dict[Any, _Fast] = {}
    for model in EVENT_MODELS:
        names = [n for n in model.model_fields if n != "type"]
        if any(n not in _CHECKS for n in names):
            continue  # a field the fast path does not know: pydantic validates this type
        kind = model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        fields: list[Any] = []
        for name, info in model.model_fields.items():
            if name == "type":
                fields.append((name, Literal[kind]))
            elif info.is_required():
                fields.append((name, _CHECKS[name]))
            elif info.default is None:
                fields.append((name, _CHECKS[name] | None, None))
            else:
                fields.append((name, _CHECKS[name], info.default))
        order = tuple(model.model_fields)
        fast[kind] = _Fast(
            kind,
            msgspec.defstruct(f"_{model.__name__}", fields, kw_only=True),
            msgspec.defstruct(
                f"_Known{model.__name__}",
                [f for f in fields if f[0] != "type"],
                kw_only=True,
                tag_field="type",
                tag=kind,
                forbid_unknown_fields=True,
            ),
            order,
            frozenset(order),
            order.index("type"),
            tuple(n for n in _TIMES if n in order),
            "value" in order,
        )
    return fast


_FAST = _fast_types()
_BY_STRUCT = {f.known: f for f in _FAST.values()}
_decode_known = msgspec.json.Decoder(Union[tuple(_BY_STRUCT)]).decode  # noqa: UP007
_as_dict = msgspec.structs.asdict
_as_tuple = msgspec.structs.astuple
_convert = msgspec.convert


def _checked(raw: dict[str, Any], fast: _Fast) -> dict[str, Any] | None:
    """The event as model_dump gives it, or None when a field is not plainly valid."""
    try:
        out = _as_dict(_convert(raw, fast.struct))
    except msgspec.ValidationError:
        return None
    event = _finished(out, fast)
    if event is not None and not raw.keys() <= fast.names:
        for name, v in raw.items():  # unknown fields are kept, after the known ones
            if name not in fast.names:
                event[name] = v
    return event


def _finished(out: dict[str, Any], fast: _Fast) -> dict[str, Any] | None:
    """The checked fields as model_dump gives them: times as datetimes, money as Decimal;
    None when a time is not one."""
    for name in fast.times:
        v = out[name]
        if v is not None:
            try:
                out[name] = datetime.fromisoformat(v)
            except ValueError:  # e.g. month 13: pydantic says why
                return None
    if fast.money:
        money = out["value"]
        out["value"] = {"amount": Decimal(money.amount), "currency": money.currency}
    return out


def explain(value: bytes, exc: ValidationError) -> InvalidEvent:
    """Turn pydantic's first error into one sentence; mention how many more there are."""
    errors = exc.errors(include_url=False)
    reason, error_class = _describe(value, errors[0])
    if len(errors) > 1:
        more = len(errors) - 1
        reason += f" (and {more} more problem{'s' if more > 1 else ''})"
    return InvalidEvent(reason, error_class)


def _describe(value: bytes, err: Any) -> tuple[str, str]:
    kind: str = err["type"]
    if kind == "json_invalid":
        return _describe_bad_json(value, err["msg"])
    if kind in ("dict_type", "model_type", "model_attributes_type") and not err["loc"]:
        return (
            f"the value is a JSON {_json_kind(err['input'])}, but an event must be a JSON object "
            '({"event_id": ..., "type": ..., ...})',
            "not_object",
        )
    if kind == "union_tag_not_found":
        return (f"field 'type' is missing: every event needs one, one of: {_TYPES}", "type_missing")
    if kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        return (
            f"field 'type': unknown event type '{tag}', expected one of: {_TYPES}",
            "type_unknown",
        )
    return _describe_field(err)


def _describe_bad_json(value: bytes, msg: str) -> tuple[str, str]:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as u:
        bad = value[u.start]
        return (
            f"the value is not valid UTF-8 (byte 0x{bad:02x} at position {u.start}): "
            "events must be UTF-8 encoded JSON",
            "not_utf8",
        )
    detail = msg.removeprefix("Invalid JSON: ")
    if "recursion limit" in detail:
        return (
            f"the JSON is nested too deeply ({detail}): events are flat objects; "
            "keep attributes shallow",
            "json_too_deep",
        )
    if detail.startswith("EOF while parsing"):
        return (
            f"the JSON ends too early ({detail}): the message looks truncated",
            "json_truncated",
        )
    return (f"the value is not valid JSON ({detail}): expected one JSON object", "json_invalid")


def _describe_field(err: Any) -> tuple[str, str]:
    loc = err["loc"]
    event_type = loc[0] if loc and isinstance(loc[0], str) and loc[0] in EVENT_TYPES else None
    path = _path(loc[1:] if event_type else loc)
    kind: str = err["type"]
    got = _show(err.get("input"))
    if kind == "missing":
        needed = f" for {event_type} events" if event_type else ""
        return (f"field '{path}' is missing: it is required{needed}", "field_missing")
    if kind == "timezone_aware":
        return (
            f"field '{path}': timestamp has no offset: write it as {TIME_FORMAT}",
            "timestamp_no_offset",
        )
    if kind.startswith("datetime"):
        why = err["msg"].removeprefix("Input should be a valid datetime").lstrip(", ")
        why = f" ({why})" if why else ""
        return (
            f"field '{path}': {got} is not an RFC 3339 timestamp{why}: write it as {TIME_FORMAT}",
            "timestamp_invalid",
        )
    if kind == "extra_forbidden":
        return (f"field '{path}' is not allowed here: remove it", "field_unknown")
    hint = _HINTS.get(str(loc[-1])) if loc else None
    if hint:
        return (f"field '{path}': {got} is not {hint}", "field_invalid")
    if kind == "literal_error":
        return (f"field '{path}': {got} is not {err['ctx']['expected']}", "field_invalid")
    if kind == "string_too_short":
        least = err["ctx"]["min_length"]
        return (
            f"field '{path}': {got} is too short, it needs at least {least} character",
            "field_invalid",
        )
    if kind == "string_too_long":
        most = err["ctx"]["max_length"]
        return (f"field '{path}': {got} is too long, at most {most} characters", "field_invalid")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = err["msg"].removeprefix("Input should be ")
        return (f"field '{path}': expected {want}, got {got}", "wrong_type")
    msg = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return (f"field '{path}': {got} is not allowed, it should be {msg}", "field_invalid")


_HINTS = {
    "currency": "an ISO 4217 currency code (three capital letters, e.g. EUR)",
    "amount": "a decimal amount of 0 or more, e.g. 12.50 (a JSON number or string)",
}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(value)"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, str):
        text = repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
        return text
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def topic_for(event_type: str, config: Config) -> str:
    """Orders go to the orders topic; interactions and profiles to the interactions topic."""
    return config.topics.orders if event_type.startswith("order.") else config.topics.interactions
