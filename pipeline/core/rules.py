"""Rules in the config file: typed, tagged on `kind`, validated whole at load, built into
detectors through an explicit registry.

A condition is a string `field op value` with op one of `=`, `!=`, `=~`, `!~`, `in`
(`tier in gold,platinum`), or a numeric comparison `>`, `>=`, `<`, `<=` (`value >= 500`). `when` lists alternatives ("any of"); an alternative that is itself a
list needs all of its conditions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.core.durations import Duration
from pipeline.core.models import Severity
from pipeline.detectors.absence import AbsenceDetector
from pipeline.detectors.match import MatchDetector
from pipeline.detectors.matchers import NUMERIC, Matcher
from pipeline.detectors.threshold import ThresholdDetector

_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(=~|!~|!=|>=|<=|=|>|<|\s+in\s+)\s*(.*?)\s*$")
Alternative: TypeAlias = str | list[str]


def parse_condition(text: str) -> Matcher:
    """`field op value` -> Matcher; a clear error for anything else."""
    found = _CONDITION.match(text)
    if not found or not found.group(3):
        raise ValueError(
            f"{text!r} is not a condition: write 'field op value' with op one of "
            "=, !=, =~, !~, in, >, >=, <, <="
        )
    name, op, value = found.group(1), found.group(2).strip(), found.group(3).strip("\"'")
    if op == "=" and value.startswith("="):
        raise ValueError(f"{text!r}: '==' is not an operator: write '{name} = {value[1:].strip()}'")
    if op == "in":
        return Matcher(name, op, tuple(v.strip() for v in value.split(",")))
    if op in NUMERIC:
        try:
            float(value)
        except ValueError:
            raise ValueError(
                f"{text!r}: {op} compares numbers: write e.g. '{name} {op} 500'"
            ) from None
    try:
        return Matcher(name, op, value)
    except re.error as exc:
        raise ValueError(f"{text!r}: the regular expression is invalid ({exc})") from None


def _conditions(alternatives: list[Alternative]) -> list[list[Matcher]]:
    return [[parse_condition(c) for c in ([a] if isinstance(a, str) else a)] for a in alternatives]


FORGET_AFTER = timedelta(days=30)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: Severity = "medium"
    description: str | None = None
    # Fields added after rules were in use: left out of the version while at their default, so
    # a rule written before them keeps its version and its customers' pending state.
    _added_later: ClassVar[frozenset[str]] = frozenset()

    def version(self) -> str:
        """A hash of the rule's config: exception records say which version found them."""
        fields = type(self).model_fields
        unset = {f for f in self._added_later if getattr(self, f) == fields[f].default}
        return hashlib.sha256(self.model_dump_json(exclude=unset).encode()).hexdigest()[:12]


def _check(alternatives: list[Alternative]) -> list[Alternative]:
    _conditions(alternatives)
    return alternatives


class MatchRule(_Rule):
    """One matching event is an exception."""

    kind: Literal["match"]
    when: list[Alternative] = Field(min_length=1)
    subject: list[str] = []
    _v = field_validator("when")(_check)


class ThresholdRule(_Rule):
    """N matching events per customer (and group) within a window."""

    kind: Literal["threshold"]
    when: list[Alternative] = Field(min_length=1)
    count: int = Field(ge=1, le=1000)
    window: Duration
    group_by: list[str] = []
    _v = field_validator("when")(_check)


class AbsenceRule(_Rule):
    """An expected event that did not come by a deadline."""

    kind: Literal["absence"]
    key: str
    start: list[Alternative] = Field(min_length=1)
    expect: list[Alternative] = Field(min_length=1)
    cancel: list[Alternative] = []
    deadline_field: str | None = None
    grace: Duration = timedelta(0)
    delay: Duration
    # How long a key is remembered once closed, or once fired and never closed (a parcel lost
    # for good): a late start cannot re-arm it meanwhile; then it is dropped.
    forget_after: Duration = FORGET_AFTER
    # Fields added after the first version: configs written before them still load.
    _added_later: ClassVar[frozenset[str]] = frozenset({"forget_after"})
    _v = field_validator("start", "expect", "cancel")(_check)


Rule: TypeAlias = Annotated[MatchRule | ThresholdRule | AbsenceRule, Field(discriminator="kind")]


def _match(name: str, r: Any) -> MatchDetector:
    return MatchDetector(rule=name, when=_conditions(r.when), subject=tuple(r.subject))


def _threshold(name: str, r: Any) -> ThresholdDetector:
    return ThresholdDetector(
        rule=name,
        when=_conditions(r.when),
        count=r.count,
        window=r.window.total_seconds(),
        group_by=tuple(r.group_by),
    )


def _absence(name: str, r: Any) -> AbsenceDetector:
    return AbsenceDetector(
        rule=name,
        key=r.key,
        start=_conditions(r.start),
        expect=_conditions(r.expect),
        cancel=_conditions(r.cancel),
        grace=r.grace.total_seconds(),
        delay=r.delay.total_seconds(),
        deadline_field=r.deadline_field,
        keep_closed=r.forget_after.total_seconds(),
    )


BUILDERS: dict[str, Callable[[str, Any], Any]] = {
    "match": _match,
    "threshold": _threshold,
    "absence": _absence,
}


def build(name: str, rule: MatchRule | ThresholdRule | AbsenceRule) -> Any:
    """The detector for one rule of the config."""
    return BUILDERS[rule.kind](name, rule)
