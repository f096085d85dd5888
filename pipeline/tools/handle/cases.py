"""The handler app's view of its topic (pure): exception records folded into cases, the table
of them newest first, and the commands a handler types (`a N`, `r N [note]`, `x N [note]`)
turned into a `Resolution`. Reading and publishing: pipeline/tools/handle/kafka.py; the live view
and the command: pipeline/tools/handle/handle.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from rich import box
from rich.table import Table
from rich.text import Text

from pipeline.core.durations import age_text
from pipeline.core.errors import HandleError
from pipeline.core.models import ExceptionRecord, Resolution, ResolutionStatus

ACTIONS: dict[str, ResolutionStatus] = {"a": "acknowledged", "r": "resolved", "x": "reassigned"}
USAGE = "type a N (acknowledge), r N [note] (resolve), x N [note] (reassign) or q (quit)"
_SEVERITY = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}
_STATUS = {"open": "bold", "escalated": "bold magenta", "resolved": "dim"}


@dataclass(frozen=True)
class Case:
    """One exception as its handler sees it now."""

    number: int  # the row number: the order it was first seen in, fixed for the run
    first_seen: datetime  # `detected_at` of its first record
    record: ExceptionRecord  # its latest record

    def handed_on(self, handler: str | None) -> str | None:
        """The handler it went to, when `handler` passed it on (escalated or reassigned away)
        and nobody has closed it since; None when it is still `handler`'s or closed."""
        route = self.record.route
        if handler is None or self.record.status == "resolved" or route is None:
            return None
        return route.handler if route.handler != handler else None

    def done(self, handler: str | None) -> bool:
        """Nothing left for `handler` to do: resolved, or handed on to another handler."""
        return self.record.status == "resolved" or self.handed_on(handler) is not None


def fold(
    records: Iterable[ExceptionRecord], cases: Mapping[str, Case] | None = None
) -> dict[str, Case]:
    """The current state per `exception_id` of records in topic order: the latest record wins,
    the first-seen time and row number stay. (An exception's updates share its customer key,
    hence one partition, so topic order is the order they were written in.)"""
    folded = dict(cases or {})
    for record in records:
        seen = folded.get(record.exception_id)
        folded[record.exception_id] = (
            Case(len(folded) + 1, record.detected_at, record)
            if seen is None
            else replace(seen, record=record)
        )
    return folded


def newest_first(
    cases: Mapping[str, Case], show_resolved: bool = False, handler: str | None = None
) -> list[Case]:
    """The rows to show, newest first seen first; those done for `handler` (resolved, or
    handed on to another handler) only with `show_resolved`."""
    kept = [c for c in cases.values() if show_resolved or not c.done(handler)]
    return sorted(kept, key=lambda c: (c.first_seen, c.number), reverse=True)


COLUMNS = [
    "#",
    "id",
    "age",
    "status",
    "severity",
    "rule",
    "customer",
    "subject",
    "route",
    "context",
]


def table(
    shown: Sequence[Case],
    now: datetime,
    title: str = "",
    within: timedelta | None = None,
    handler: str | None = None,
) -> Table:
    """The handler's table, rows in the order given. An age past `within` (the handler's
    resolve_within) says `late`; a case `handler` handed on says to whom and when. Text from
    records is never read as rich markup."""
    t = Table(
        *COLUMNS,
        title=title or None,
        title_justify="left",
        caption=None if shown else "nothing to do",
        box=box.SIMPLE_HEAD,
    )
    for case in shown:
        t.add_row(*_cells(case, now, within, handler), style="dim" if case.done(handler) else None)
    return t


def _cells(case: Case, now: datetime, within: timedelta | None, handler: str | None) -> list[Text]:
    r, age = case.record, now - case.first_seen
    to = case.handed_on(handler)
    late = within is not None and not case.done(handler) and age > within
    status = (
        Text(f"handed on to {to} {age_text(now - r.detected_at)} ago")
        if to
        else Text(r.status, _STATUS[r.status])
    )
    return [
        Text(str(case.number)),
        Text(r.exception_id[:8]),
        Text(age_text(age) + (" late" if late else ""), "red" if late else ""),
        status,
        Text(r.severity, _SEVERITY[r.severity]),
        Text(r.rule),
        Text(customer(r)),
        Text(subject(r)),
        Text(r.route.reason if r.route else "-"),
        Text(glance(r)),
    ]


def customer(record: ExceptionRecord) -> str:
    """The customer id with the profile's tier and name, e.g. `c-1 (gold, Ada Lovelace)`."""
    profile = _dict(record.context.get("profile"))
    known = [str(profile[k]) for k in ("tier", "name") if profile.get(k)]
    return f"{record.customer_id} ({', '.join(known)})" if known else record.customer_id


def subject(record: ExceptionRecord) -> str:
    """What the exception is about, e.g. `order_id=o-1`."""
    return ", ".join(f"{k}={v}" for k, v in record.subject.items()) or "-"


def glance(record: ExceptionRecord) -> str:
    """The context at a glance: `3 recent events (2 evidence), 1 open order 89.00 EUR, 2
    other open` (evidence: the recent events that made the exception, which carry their id).
    Every context key may be missing or null; a malformed one counts as missing."""
    ctx, parts = record.context, []
    if events := _dicts(ctx.get("recent_events")):
        evidence = sum(1 for e in events if e.get("event_id"))
        parts.append(
            _plural(len(events), "recent event") + (f" ({evidence} evidence)" if evidence else "")
        )
    if orders := _dicts(ctx.get("open_orders")):
        parts.append(f"{_plural(len(orders), 'open order')} {_totals(orders)}".rstrip())
    others = [
        e
        for e in _dicts(ctx.get("open_exceptions"))
        if e.get("exception_id") != record.exception_id and e.get("status") != "resolved"
    ]
    if others:
        parts.append(f"{len(others)} other open")
    return ", ".join(parts) or "-"


def _totals(orders: list[dict[str, Any]]) -> str:
    totals: dict[str, Decimal] = {}
    for order in orders:
        value = _dict(order.get("value"))
        try:
            amount = Decimal(str(value["amount"]))
        except (KeyError, InvalidOperation):
            continue
        currency = str(value.get("currency") or "?")
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    return " + ".join(f"{amount} {currency}" for currency, amount in totals.items())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resolution(
    record: ExceptionRecord,
    handler: str,
    status: ResolutionStatus,
    at: datetime,
    note: str | None = None,
) -> Resolution:
    """The handler's answer on an exception (`at` is passed in: no clock is read here)."""
    return Resolution(
        exception_id=record.exception_id, handler=handler, status=status, at=at, note=note or None
    )


def encode(answer: Resolution) -> bytes:
    """The Resolution as it goes on the resolutions topic."""
    return orjson.dumps(answer.model_dump(mode="json", exclude_none=True))


def lookup(
    cases: Mapping[str, Case], ref: str, topic: str, rows: Sequence[Case] | None = None
) -> Case:
    """The exception `ref` names: a full exception_id or a unique prefix of one, or, when the
    `rows` on screen are given (the live view), a number from their # column. `HandleError`
    says why none fits; a row not on screen (a hidden resolved one) is not there."""
    if rows is not None and ref.isdigit():
        found = [c for c in rows if c.number == int(ref)]
        if not found:
            raise HandleError(f"no row {ref} on screen: use a number from the # column")
        return found[0]
    if ref in cases:
        return cases[ref]
    found = [c for key, c in cases.items() if ref and key.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise HandleError(
            f"no exception {ref!r} on {topic} ({_plural(len(cases), 'exception')} there): "
            "check the id, and that it belongs to this handler"
        )
    ids = ", ".join(sorted(c.record.exception_id[:12] for c in found)[:5])
    raise HandleError(
        f"{ref!r} matches {len(found)} exceptions on {topic} ({ids}): give more of the id"
    )


@dataclass(frozen=True)
class Command:
    """A typed line of the live view; `status` None means quit."""

    status: ResolutionStatus | None
    ref: str = ""
    note: str | None = None


def parse_command(line: str) -> Command:
    """`a N`, `r N [note]`, `x N [note]` or `q`; a `ValueError` with the usage otherwise."""
    words = line.strip().split(maxsplit=2)
    if words in (["q"], ["quit"]):
        return Command(None)
    if len(words) >= 2 and words[0] in ACTIONS:
        return Command(ACTIONS[words[0]], words[1], words[2] if len(words) > 2 else None)
    raise ValueError(f"{line.strip()!r}: {USAGE}")
