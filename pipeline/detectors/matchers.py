"""Conditions on event fields, like Alertmanager matchers: `=`, `!=`, `=~`, `!~`, `in`; and
numeric comparisons `>`, `>=`, `<`, `<=` (a value that is not a number never matches them).

A rule's `when` is a list of condition sets: the event matches when every condition of any one
set holds ("any of"). A regex matches the whole value, as in Alertmanager.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

NUMERIC: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Matcher:
    """One condition on one field; a missing field is the empty string."""

    field: str
    op: str
    value: str | tuple[str, ...]
    # the test on the field's text, chosen once by `op`
    test: Callable[[str], bool] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _test(self.op, self.value))

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the event's field satisfies the condition."""
        return self.test(field_text(event, self.field))


def _test(op: str, value: str | tuple[str, ...]) -> Callable[[str], bool]:
    if op == "=":
        return partial(operator.eq, value)
    if op == "!=":
        return partial(operator.ne, value)
    if op == "in":
        return partial(operator.contains, value)
    if op in NUMERIC:
        return partial(_compare, NUMERIC[op], float(str(value)))
    pattern = re.compile(str(value))  # fails at load, not on the first event
    if op == "=~":
        return lambda actual: pattern.fullmatch(actual) is not None
    return lambda actual: pattern.fullmatch(actual) is None


def _compare(compare: Callable[[float, float], bool], value: float, actual: str) -> bool:
    try:
        return compare(float(actual), value)
    except ValueError:
        return False


def field_text(event: Mapping[str, Any], path: str) -> str:
    """A field as text, by dotted path (`value.currency`); absent or null is ''."""
    if "." in path:
        value: Any = event
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    else:
        value = event.get(path)
    if value is None:
        return ""
    if value.__class__ is str:
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def matches_any(sets: Sequence[Sequence[Matcher]], event: Mapping[str, Any]) -> bool:
    """True when every matcher of at least one set holds; no sets means everything matches."""
    if not sets:
        return True
    for group in sets:
        for m in group:
            if not m.test(field_text(event, m.field)):
                break
        else:
            return True
    return False


def predicate(sets: Sequence[Sequence[Matcher]]) -> Callable[[Mapping[str, Any]], bool]:
    """`matches_any(sets, event)` as a function of the event, chosen once: sets that each only
    name the event's type (`type = X`, `type in [...]`), as most rules' are, are one lookup."""
    types = types_of(sets)
    if types is not None and all(len(group) == 1 for group in sets):
        return lambda event: event.get("type") in types
    return partial(matches_any, sets)


def types_of(sets: Sequence[Sequence[Matcher]]) -> frozenset[str] | None:
    """The event types `matches_any(sets, ...)` can be true for (every set names the type with
    `=` or `in`), or None when it can be for any type."""
    if not sets:
        return None
    found: set[str] = set()
    for group in sets:
        named = [m.value for m in group if m.field == "type" and m.op in ("=", "in")]
        if not named:
            return None
        found.update([named[0]] if isinstance(named[0], str) else named[0])
    return frozenset(found)
