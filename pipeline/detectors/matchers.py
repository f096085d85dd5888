"""Conditions on event fields, like Alertmanager matchers: `=`, `!=`, `=~`, `!~`, `in`; and
numeric comparisons `>`, `>=`, `<`, `<=` (a value that is not a number never matches them).

A rule's `when` is a list of condition sets: the event matches when every condition of any one
set holds ("any of"). A regex matches the whole value, as in Alertmanager.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            re.compile(str(self.value))  # fails at load, not on the first event

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the event's field satisfies the condition."""
        actual = field_text(event, self.field)
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        if self.op == "in":
            return actual in self.value
        if self.op in NUMERIC:
            try:
                return NUMERIC[self.op](float(actual), float(str(self.value)))
            except ValueError:
                return False
        found = re.fullmatch(str(self.value), actual) is not None
        return found if self.op == "=~" else not found


def field_text(event: Mapping[str, Any], path: str) -> str:
    """A field as text, by dotted path (`value.currency`); absent or null is ''."""
    value: Any = event
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def matches_any(sets: Sequence[Sequence[Matcher]], event: Mapping[str, Any]) -> bool:
    """True when every matcher of at least one set holds; no sets means everything matches."""
    return not sets or any(all(m.matches(event) for m in group) for group in sets)
