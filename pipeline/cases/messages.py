"""The words a customer reads about a case: each rule's message template, the state words, and
times written for people (day, month name, year, then hours:minutes UTC).

Templates use Python's `str.format` placeholders, `{order_id}`, and nothing more: a field is
named whole (a subject field with a dot, `{value.currency}`, is one name, not an attribute),
with no conversion and no format spec. The fields a rule's template may use are its subject's
(absence: its `key`; threshold: its `group_by`; match: its `subject` and `event_id`) and the
common ones in COMMON. `problems(settings, rules)` checks every template at load, so a typo
stops `casewatch check` instead of reaching a customer.

Templates live in the `cases:` section, not in the rules: a rule's config hash is its version,
and new wording must not reset the detectors' state.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.core.rules import AbsenceRule, MatchRule, Rule, ThresholdRule

if TYPE_CHECKING:
    from pipeline.config import CasesSettings

COMMON = ("rule", "detected_at", "routed_at", "due", "resolved_at")
STATE_FIELDS: dict[str, tuple[str, ...]] = {
    "noticed": (),
    "on_it": (),
    "escalated": (),
    "resolved": ("resolved_on",),
}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def subject_fields(rule: Rule) -> tuple[str, ...]:
    """The subject fields of a rule's exceptions, as its detector fills them."""
    if isinstance(rule, AbsenceRule):
        return (rule.key,)
    if isinstance(rule, ThresholdRule):
        return tuple(rule.group_by)
    if isinstance(rule, MatchRule):
        return (*rule.subject, "event_id")
    return ()


def fields_for(rule: Rule | None) -> tuple[str, ...]:
    """Every field a template may use: the rule's subject fields, then the common ones
    (without a rule, as for `default_message`: the common ones only)."""
    own = subject_fields(rule) if rule is not None else ()
    return (*own, *(f for f in COMMON if f not in own))


class _Whole(string.Formatter):
    """`str.format` with each field name looked up whole in the mapping given."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return kwargs[field_name], field_name


_FORMATTER = _Whole()


def fill(template: str, values: Mapping[str, str]) -> str:
    """The template with its fields filled in (checked at load: every field is known)."""
    return _FORMATTER.vformat(template, (), {k: values.get(k, "") for k in _names(template)})


def _names(template: str) -> list[str]:
    return [name for _, name, _, _ in _FORMATTER.parse(template) if name is not None]


def check(template: str, allowed: Sequence[str]) -> str | None:
    """What is wrong with a template, or None: a malformed one, a field with a conversion or a
    format spec, a positional field, or a field not in `allowed`."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return (
            f"not a valid template ({exc}): write fields as {{name}}, and a brace that is "
            "meant as text as {{ or }}"
        )
    listed = ", ".join("{" + f + "}" for f in allowed) or "no fields"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        shown = f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        if spec or conversion:
            return (
                f"{shown} has a conversion or a format spec: write the field alone, {{{name}}} "
                "(times are already written for people)"
            )
        if name not in allowed:
            close = difflib.get_close_matches(name, list(allowed), n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            return f"unknown field {shown}: {hint}the fields it may use: {listed}"
    return None


def problems(settings: CasesSettings, rules: Mapping[str, Rule]) -> list[str]:
    """Every problem of the `cases:` section's wording, in the config's error style."""
    found: list[str] = []
    for name, template in settings.messages.items():
        place = f"cases.messages.{name}"
        if name not in rules:
            close = difflib.get_close_matches(name, list(rules), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(rules) or "none"
            found.append(
                f"{place}: no rule {name!r} under 'rules': {hint}a message belongs to a rule "
                f"(rules: {known})"
            )
            continue
        if (why := check(template, fields_for(rules[name]))) is not None:
            found.append(f"{place}: {why}")
    if (why := check(settings.default_message, fields_for(None))) is not None:
        found.append(f"cases.default_message: {why}")
    for state, allowed in STATE_FIELDS.items():
        if (why := check(getattr(settings.states, state), allowed)) is not None:
            found.append(f"cases.states.{state}: {why}")
    return found


@lru_cache(maxsize=8192)  # asked for again with every request about the same cases
def when(t: float) -> str:
    """A time for people, always in UTC: `day(t)`, then `HH:MM UTC`."""
    d = datetime.fromtimestamp(t, UTC)
    return f"{day(t)}, {d:%H:%M} UTC"


def day(t: float) -> str:
    """A date for people: the day, the month's English name, the year."""
    d = datetime.fromtimestamp(t, UTC)
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"
