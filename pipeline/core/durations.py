"""Durations in config files: `90s`, `5m`, `4h`, `30d`, `1h30m`, or a number of seconds; and
ages as the tools show them (`age_text`: 45s, 12m, 5h07m, 3d04h)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, TypeAlias

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any) -> timedelta:
    """`90s`, `5m`, `4h`, `30d`, `1h30m`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"{value!r} is not a duration: write a number and a unit, e.g. 90s, 5m, 4h, 30d"
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


Duration: TypeAlias = Annotated[timedelta, BeforeValidator(parse_duration)]


def age_text(age: timedelta, *, spoken: bool = False) -> str:
    """How long, to the precision a person needs, in two units at most: 45s, 12m, 5h07m, 3d04h
    in a table; spoken (a page's prose): 45 s, 12 min, 5 h 7 min, 3 d 4 h."""
    s = max(0, int(age.total_seconds()))
    if s < 60:
        return f"{s} s" if spoken else f"{s}s"
    if s < 3600:
        return f"{s // 60} min" if spoken else f"{s // 60}m"
    if s < 86400:
        h, m = s // 3600, s % 3600 // 60
        return f"{h} h {m} min" if spoken else f"{h}h{m:02d}m"
    d, h = s // 86400, s % 86400 // 3600
    return f"{d} d {h} h" if spoken else f"{d}d{h:02d}h"
