"""The analysis behind `casewatch report` (pure): exception records de-duplicated and folded
into cases, ranked by what recurs (rule, asset, category, customer), reopens, and resolution
times and SLA misses by handler. Input and the command: pipeline/tools/report/report.py; tables,
text and HTML: pipeline/tools/report/output.py."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TypeAlias

from pipeline.core.durations import age_text
from pipeline.core.models import ExceptionRecord

_CATEGORY_TYPES = ("interaction.contact", "interaction.complaint")  # their `detail` is a category
_BREACHED = re.compile(r"resolve_within of (\S+) \(")  # in an escalation's route.reason
Key: TypeAlias = tuple[str, str, str]  # rule, customer, subject without event_id
Bar: TypeAlias = tuple[str, tuple[float, ...], str]  # label, values drawn in order, text


@dataclass(frozen=True)
class Loaded:
    """The exception records read, in input order, and what they were read from."""

    records: list[ExceptionRecord]
    source: str
    invalid: int = 0


def dedupe(records: Iterable[ExceptionRecord]) -> tuple[list[ExceptionRecord], int]:
    """The records without repeats of (exception_id, status, handler), keeping the one with the
    earliest `detected_at`; and how many were dropped."""
    kept: dict[tuple[str, str, str], ExceptionRecord] = {}
    records = list(records)
    for r in records:
        key = (r.exception_id, r.status, _handler(r))
        if key not in kept or r.detected_at < kept[key].detected_at:
            kept[key] = r
    return list(kept.values()), len(records) - len(kept)


@dataclass(frozen=True)
class Case:
    """One exception: its records in `detected_at` order, duplicates removed."""

    records: tuple[ExceptionRecord, ...]

    @property
    def first(self) -> ExceptionRecord:
        return self.records[0]

    @property
    def opened(self) -> datetime:
        """`detected_at` of its first open record (of its first record, if none was read)."""
        return next((r for r in self.records if r.status == "open"), self.first).detected_at

    @property
    def resolved(self) -> ExceptionRecord | None:
        return next((r for r in self.records if r.status == "resolved"), None)

    @property
    def current(self) -> ExceptionRecord:
        """Resolved once a record says so (resolution is final); otherwise the latest."""
        return self.resolved or self.records[-1]

    @property
    def key(self) -> Key:
        """What recurs: rule, customer and subject (without a match rule's event_id)."""
        subject = sorted((k, v) for k, v in self.first.subject.items() if k != "event_id")
        return self.first.rule, self.first.customer_id, ",".join(f"{k}={v}" for k, v in subject)


def cases(records: Iterable[ExceptionRecord]) -> list[Case]:
    """The (de-duplicated) records grouped by exception_id."""
    grouped: dict[str, list[ExceptionRecord]] = defaultdict(list)
    for r in records:
        grouped[r.exception_id].append(r)
    return [Case(tuple(sorted(rs, key=lambda r: r.detected_at))) for rs in grouped.values()]


def category(case: Case) -> tuple[str, bool] | None:
    """The category and whether it was inferred: subject.category, else the category of the
    customer's newest recent contact or complaint in the exception's context."""
    if found := case.first.subject.get("category"):
        return found, False
    recent = case.first.context.get("recent_events")
    entries = [e for e in recent if isinstance(e, dict)] if isinstance(recent, list) else []
    usable = [e for e in entries if e.get("type") in _CATEGORY_TYPES and e.get("detail")]
    if not usable:
        return None
    return str(max(usable, key=lambda e: str(e.get("occurred_at", "")))["detail"]), True


@dataclass(frozen=True)
class Ranked:
    """One row of a top-N table."""

    name: str
    exceptions: int
    spread: int  # how many customers (how many rules, for a customer)
    still_open: int
    detail: str


def rank(
    all_cases: Sequence[Case],
    key: Callable[[Case], str | None],
    detail: Callable[[list[Case]], str],
    top: int,
    spread: Callable[[Case], str] = lambda c: c.first.customer_id,
) -> list[Ranked]:
    """The `top` values of `key` by number of exceptions, ties by name; a None key is left out."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in all_cases:
        if (k := key(c)) is not None:
            groups[k].append(c)
    rows = [
        Ranked(
            name,
            len(cs),
            len({spread(c) for c in cs}),
            sum(c.current.status != "resolved" for c in cs),
            detail(cs),
        )
        for name, cs in groups.items()
    ]
    return sorted(rows, key=lambda r: (-r.exceptions, r.name))[:top]


def most(field: Callable[[Case], str]) -> Callable[[list[Case]], str]:
    """A detail column: the most frequent value of `field`, with its count."""
    return lambda cs: "{} ({})".format(*Counter(map(field, cs)).most_common(1)[0])


@dataclass(frozen=True)
class Recurrence:
    """Per (rule, customer, subject) key: repeats, and reopens (an exception opened for the key
    after an earlier one for it was resolved)."""

    keys: int
    repeated: int  # keys with more than one exception
    resolved_keys: int  # keys resolved at least once
    reopens: int
    worst: list[tuple[Key, int, int]]  # repeated keys, most reopens first: key, exceptions, reopens

    @property
    def reopen_rate(self) -> float:
        return self.reopens / self.resolved_keys if self.resolved_keys else 0.0

    @property
    def repeat_rate(self) -> float:
        return self.repeated / self.keys if self.keys else 0.0


def recurrence(all_cases: Sequence[Case], top: int) -> Recurrence:
    """Reopens and repeats over every key."""
    by_key: dict[Key, list[Case]] = defaultdict(list)
    for c in all_cases:
        by_key[c.key].append(c)
    rows: list[tuple[Key, int, int]] = []
    for key, cs in by_key.items():
        reopens, first_resolved = 0, None
        for c in sorted(cs, key=lambda c: c.opened):
            reopens += first_resolved is not None and first_resolved <= c.opened
            if (done := c.resolved) and (
                first_resolved is None or done.detected_at < first_resolved
            ):
                first_resolved = done.detected_at
        rows.append((key, len(cs), reopens if first_resolved else -1))  # -1: never resolved
    worst = sorted((r for r in rows if r[1] > 1), key=lambda r: (-r[2], -r[1], r[0]))
    return Recurrence(
        keys=len(rows),
        repeated=sum(r[1] > 1 for r in rows),
        resolved_keys=sum(r[2] >= 0 for r in rows),
        reopens=sum(max(0, r[2]) for r in rows),
        worst=[(k, n, max(0, reopens)) for k, n, reopens in worst[:top]],
    )


@dataclass(frozen=True)
class HandlerRow:
    """Per handler: resolution times, SLA escalations, what it holds open now."""

    handler: str
    times: list[timedelta]  # first open -> resolved, for the exceptions it resolved
    breached: int  # escalated away from it: open past its resolve_within
    received: int  # escalated to it
    still_open: int  # held now, escalated ones included
    escalated_open: int

    def stat(self, q: float) -> timedelta | None:
        """Of the resolution times: the median for q=0.5, else the q-quantile (nearest rank)."""
        t, n = sorted(self.times), len(self.times)
        if not t:
            return None
        if q == 0.5 and n % 2 == 0:
            return (t[n // 2 - 1] + t[n // 2]) / 2
        return t[max(0, math.ceil(q * n) - 1)]

    def cells(self) -> list[str]:
        took = [_took(self.stat(q)) for q in (0.5, 0.9, 1)]
        held = f"{self.still_open} ({self.escalated_open} escalated)"
        return [
            self.handler,
            str(len(self.times)),
            *took,
            str(self.breached),
            str(self.received),
            held,
        ]

    def bar(self) -> Bar:
        """p90 (drawn first, light) and median."""
        median, p90 = self.stat(0.5), self.stat(0.9)
        return (
            self.handler,
            (_hours(p90), _hours(median)),
            f"median {_took(median)}, p90 {_took(p90)}",
        )


def handlers(all_cases: Sequence[Case]) -> list[HandlerRow]:
    """One row per handler seen, the slowest median resolution first."""
    times: dict[str, list[timedelta]] = defaultdict(list)
    n: dict[str, Counter[str]] = defaultdict(Counter)
    for c in all_cases:
        # Resolution time needs the open record: the input may start after it.
        if (done := c.resolved) and c.first.status == "open":
            times[_handler(done)].append(done.detected_at - c.opened)
        for before, r in zip(c.records, c.records[1:], strict=False):
            if r.status == "escalated":
                missed = _BREACHED.search(r.route.reason if r.route else "")
                n[missed.group(1) if missed else _handler(before)]["breached"] += 1
                n[_handler(r)]["received"] += 1
        if (now := c.current).status != "resolved":
            n[_handler(now)]["open"] += 1
            n[_handler(now)]["escalated"] += now.status == "escalated"
    fields = ("breached", "received", "open", "escalated")
    rows = [HandlerRow(h, times[h], *(n[h][f] for f in fields)) for h in sorted({*times, *n})]
    return sorted(rows, key=lambda r: -(r.stat(0.5) or timedelta(-1)).total_seconds())


def _handler(r: ExceptionRecord) -> str:
    return r.route.handler if r.route else "-"


@dataclass(frozen=True)
class Report:
    """Everything the report shows, computed when first asked for."""

    loaded: Loaded
    records: list[ExceptionRecord]  # de-duplicated
    duplicates: int
    cases: list[Case]
    top: int

    @cached_property
    def span(self) -> str:
        """The date range covered (detected_at), in UTC."""
        times = [r.detected_at.astimezone(UTC) for r in self.records]
        return f"{min(times):%Y-%m-%d %H:%M} to {max(times):%Y-%m-%d %H:%M} UTC"

    @cached_property
    def rules(self) -> list[Ranked]:
        return rank(self.cases, lambda c: c.first.rule, most(lambda c: _handler(c.first)), self.top)

    @cached_property
    def assets(self) -> list[Ranked]:
        return rank(self.cases, lambda c: c.first.subject.get("asset_id"), _top_rule, self.top)

    @cached_property
    def categories(self) -> list[Ranked]:
        def detail(cs: list[Case]) -> str:
            inferred = sum(bool((found := category(c)) and found[1]) for c in cs)
            return _top_rule(cs) + (f"; {inferred} from recent events" if inferred else "")

        return rank(self.cases, lambda c: (found := category(c)) and found[0], detail, self.top)

    @cached_property
    def customers(self) -> list[Ranked]:
        def detail(cs: list[Case]) -> str:
            records = sorted((r for c in cs for r in c.records), key=lambda r: r.detected_at)
            profiles = [p for r in records if isinstance(p := r.context.get("profile"), dict)]
            known = [str(v) for k in ("tier", "name") if profiles and (v := profiles[-1].get(k))]
            return "; ".join([", ".join(known), _top_rule(cs)] if known else [_top_rule(cs)])

        by_customer, by_rule = (lambda c: c.first.customer_id), (lambda c: c.first.rule)
        return rank(self.cases, by_customer, detail, self.top, by_rule)

    @cached_property
    def recurrence(self) -> Recurrence:
        return recurrence(self.cases, self.top)

    @cached_property
    def handlers(self) -> list[HandlerRow]:
        return handlers(self.cases)


_top_rule = most(lambda c: c.first.rule)


def analyse(loaded: Loaded, top: int = 10) -> Report:
    """The report on what was loaded (at least one record)."""
    records, duplicates = dedupe(loaded.records)
    return Report(loaded, records, duplicates, cases(records), top)


def _took(t: timedelta | None) -> str:
    return "-" if t is None else age_text(t)


def _hours(t: timedelta | None) -> float:
    return 0.0 if t is None else t.total_seconds() / 3600
