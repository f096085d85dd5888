"""What a config change does to the exceptions found in the same events: the exceptions of a
replay under each config, compared one by one (`casewatch replay --against`, the command in
pipeline/tools/backtest/backtest.py). Which appear, which disappear, and which go to another
handler, get another severity, end in another status or escalate differently.

The unit is an exception (every record with its `exception_id`), not a record. Its id is derived
from rule, customer, subject and trigger (pipeline/detectors/base.py), and the trigger (a
threshold's first event in the window, an absence's deadline) can move when a rule's parameters
do: a longer `grace` gives every missing delivery a new id. So an exception of the old run is
the same as one of the new run when
  1. they have the same `exception_id`; or else
  2. they have the same rule, customer and subject (a match rule's subject holds its event_id),
     taken in event-time order: the first left over under the old config with the first left
     over under the new one, and so on.
What is left over is an exception that appears (new only) or disappears (old only).

Of a pair, these are compared: the handlers its open record(s) went to (one per route matched,
more with `continue`; an overflow counts as the handler it went to), its severity, its status at
the end (open or resolved), its event time (a lower threshold count finds the same exception,
same id, earlier; a longer grace, a missing delivery later) and where it escalated, if it did. Escalations depend on SLA timing,
and a replay has no handler resolutions, so they are counted apart from the other changes.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from typing import IO, Any

from pipeline.config import Config
from pipeline.core.models import ExceptionRecord
from pipeline.tools.replay import Replay, Summary

# Kinds of change, in the order they are shown
APPEAR, DISAPPEAR, HANDLER, SEVERITY, STATUS, TIME, ESCALATION = (
    "appear",
    "disappear",
    "handler",
    "severity",
    "status",
    "time",
    "escalation",
)
KINDS = (APPEAR, DISAPPEAR, HANDLER, SEVERITY, STATUS, TIME, ESCALATION)
# The counts per rule and per handler: exceptions under each config, then changes
RULE_COUNTS = ("old", "new", *KINDS, "escalated_old", "escalated_new")
HANDLER_COUNTS: tuple[str, ...] = (
    "old",
    "new",
    APPEAR,
    DISAPPEAR,
    "moved_in",
    "moved_out",
    "escalated_old",
    "escalated_new",
)


@dataclass
class Case:
    """One exception in one run: what its records say about it."""

    exception_id: str
    rule: str
    customer_id: str
    subject: dict[str, str]
    event_time: datetime
    severity: str
    handlers: list[str] = field(default_factory=list)  # of its open records, in order
    paths: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    status: str = "open"  # open or resolved: escalation is kept apart
    escalated_to: str | None = None

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """Rule, customer and subject: what stays when a rule's parameters move its trigger."""
        return self.rule, self.customer_id, tuple(sorted(self.subject.items()))

    @property
    def handler(self) -> str:
        return "+".join(self.handlers) or "-"

    def take(self, record: ExceptionRecord) -> None:
        """Add one of its records."""
        route = record.route
        if record.status == "open":
            self.handlers.append(route.handler if route else "-")
            self.paths.append(route.path if route else "-")
            self.reasons.append(route.reason if route else "-")
        elif record.status == "escalated":
            self.escalated_to = route.handler if route else "-"
        else:
            self.status = record.status

    def json(self) -> dict[str, Any]:
        return {
            "exception_id": self.exception_id,
            "event_time": self.event_time.isoformat(),
            "severity": self.severity,
            "handlers": self.handlers,
            "paths": self.paths,
            "reasons": self.reasons,
            "status": self.status,
            "escalated_to": self.escalated_to,
        }


@dataclass
class Run:
    """The exceptions one config finds in the events."""

    cases: list[Case]
    summary: Summary


@dataclass(frozen=True)
class Change:
    """One difference: `old` is None for an exception that appears, `new` for one that goes."""

    kind: str
    old: Case | None
    new: Case | None

    @property
    def case(self) -> Case:
        found = self.new or self.old
        assert found is not None
        return found

    def before_after(self) -> tuple[str, str]:
        """The compared value under each config ("-": none)."""
        if self.kind in (APPEAR, DISAPPEAR, HANDLER):
            return _handler(self.old), _handler(self.new)
        if self.kind == TIME and self.old and self.new:
            return _minute(self.old.event_time), _minute(self.new.event_time)
        value = {SEVERITY: "severity", STATUS: "status", ESCALATION: "escalated_to"}[self.kind]
        return (getattr(self.old, value) or "-", getattr(self.new, value) or "-")

    def json(self) -> dict[str, Any]:
        c = self.case
        before, after = self.before_after()
        return {
            "change": self.kind,
            "rule": c.rule,
            "customer_id": c.customer_id,
            "subject": c.subject,
            "old": self.old.json() if self.old else None,
            "new": self.new.json() if self.new else None,
            "before": before,
            "after": after,
        }


def _handler(case: Case | None) -> str:
    return case.handler if case else "-"


def _minute(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M")


@dataclass
class Diff:
    """What changes from the old config's run to the new one's."""

    old: Run
    new: Run
    changes: list[Change]
    rules: dict[str, list[str]] = field(default_factory=dict)  # changed, added, removed

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def count(self, kind: str) -> int:
        return sum(c.kind == kind for c in self.changes)

    def by_rule(self) -> dict[str, Counter[str]]:
        """Per rule: its exceptions under each config ("old", "new") and its changes by kind."""
        rows: dict[str, Counter[str]] = defaultdict(Counter)
        for run, column in ((self.old, "old"), (self.new, "new")):
            for case in run.cases:
                rows[case.rule][column] += 1
                rows[case.rule][f"escalated_{column}"] += case.escalated_to is not None
        for change in self.changes:
            rows[change.case.rule][change.kind] += 1
        return dict(sorted(rows.items()))

    def by_handler(self) -> dict[str, Counter[str]]:
        """Per handler: its exceptions under each config, what appears at it or disappears from
        it, what moves in or out; and the escalations it receives under each config."""
        rows: dict[str, Counter[str]] = defaultdict(Counter)
        for run, column in ((self.old, "old"), (self.new, "new")):
            for case in run.cases:
                for h in case.handlers:
                    rows[h][column] += 1
                if case.escalated_to:
                    rows[case.escalated_to][f"escalated_{column}"] += 1
        for change in self.changes:
            if change.kind in (APPEAR, DISAPPEAR):
                for h in change.case.handlers:
                    rows[h][change.kind] += 1
            elif change.kind == HANDLER and change.old and change.new:
                for h in set(change.new.handlers) - set(change.old.handlers):
                    rows[h]["moved_in"] += 1
                for h in set(change.old.handlers) - set(change.new.handlers):
                    rows[h]["moved_out"] += 1
        return dict(sorted(rows.items()))

    def json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "exceptions": {"old": len(self.old.cases), "new": len(self.new.cases)},
            "rules": self.rules,
            "counts": {kind: self.count(kind) for kind in KINDS},
            "by_rule": {r: {k: c[k] for k in RULE_COUNTS} for r, c in self.by_rule().items()},
            "by_handler": {
                h: {k: c[k] for k in HANDLER_COUNTS} for h, c in self.by_handler().items()
            },
            "changes": [c.json() for c in self.changes],
        }


def collect(records: Iterable[ExceptionRecord]) -> list[Case]:
    """The exceptions of a run's records, in the order first seen."""
    cases: dict[str, Case] = {}
    for r in records:
        case = cases.get(r.exception_id)
        if case is None:
            case = cases[r.exception_id] = Case(
                r.exception_id, r.rule, r.customer_id, r.subject, r.event_time, r.severity
            )
        case.take(r)
    return list(cases.values())


def replay(config: Config, path: str, until: float | None, errors: IO[str]) -> Run:
    """Replay the events file under one config; keep its exceptions."""
    run = Replay(config, errors=errors)
    with open(path, "rb") as file:
        cases = collect(chain(run.feed(file, path), run.finish(until)))
    return Run(cases, run.summary)


def pair(old: list[Case], new: list[Case]) -> Iterator[tuple[Case | None, Case | None]]:
    """The same exception under both configs (see the module's docstring), then what is left
    over under the old one (it disappears), then under the new one (it appears)."""
    by_id = {c.exception_id: c for c in new}
    rest: list[Case] = []
    for case in old:
        match = by_id.pop(case.exception_id, None)
        if match is None:
            rest.append(case)
        else:
            yield case, match
    waiting: dict[tuple[Any, ...], deque[Case]] = defaultdict(deque)
    for case in sorted(by_id.values(), key=lambda c: c.event_time):
        waiting[case.key].append(case)
    for case in sorted(rest, key=lambda c: c.event_time):
        queue = waiting.get(case.key)
        yield case, (queue.popleft() if queue else None)
    for queue in waiting.values():
        for case in queue:
            yield None, case


def compare(old: Run, new: Run) -> Diff:
    """Every change from the old run to the new one."""
    changes: list[Change] = []
    for a, b in pair(old.cases, new.cases):
        if a is None or b is None:
            changes.append(Change(APPEAR if a is None else DISAPPEAR, a, b))
            continue
        for kind, differs in (
            (HANDLER, a.handlers != b.handlers),
            (SEVERITY, a.severity != b.severity),
            (STATUS, a.status != b.status),
            (TIME, a.event_time != b.event_time),
            (ESCALATION, a.escalated_to != b.escalated_to),
        ):
            if differs:
                changes.append(Change(kind, a, b))
    changes.sort(key=lambda c: (KINDS.index(c.kind), c.case.rule, c.case.event_time))
    return Diff(old, new, changes)


def rule_changes(old: Config, new: Config) -> dict[str, list[str]]:
    """The rules whose config differs (by version hash), and those only in one config."""
    return {
        "changed": sorted(
            r
            for r in new.rules.keys() & old.rules.keys()
            if new.rules[r].version() != old.rules[r].version()
        ),
        "added": sorted(new.rules.keys() - old.rules.keys()),
        "removed": sorted(old.rules.keys() - new.rules.keys()),
    }
