"""The engine: every rule of the config run over one customer's state, on a clock passed in.

The live worker (`pipeline/runtime/worker.py`) and the offline replay (`pipeline/tools/replay.py`)
both call `Engine.observe` for each event and `Engine.fire` when a customer's deadline is due, so
live and replay run the same code on the same state and cannot disagree. No I/O, no clock reads.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.config import Config
from pipeline.core.clock import NEVER
from pipeline.core.context import context_of, evidence_of
from pipeline.core.models import ExceptionRecord, SourcePosition
from pipeline.core.rules import build
from pipeline.core.state import CustomerState, Section, load, new_state
from pipeline.detectors.base import Finding, epoch

_PROFILE_SKIP = frozenset({"event_id", "type", "customer_id", "source"})


@dataclass(frozen=True)
class _Compiled:
    name: str
    detector: Any
    version: str
    severity: str
    types: frozenset[str] | None  # event types the rule observes (None: all)
    evidence_types: frozenset[str] | None  # event types its evidence can have (None: all)
    initial: Any  # the detector's initial state: not stored (`_keep`)
    timed: bool  # whether the detector ever has a deadline (Detector.timed)


class Engine:
    """All rules of one config, as pure functions of (customer state, event, clock)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rules = [
            _Compiled(
                name,
                d,
                rule.version(),
                rule.severity,
                d.types(),
                d.evidence_types(),
                d.initial(),
                getattr(d, "timed", True),
            )
            for name, rule in config.rules.items()
            for d in [build(name, rule)]
        ]
        self._by_name = {r.name: r for r in self.rules}
        self._timed = [r for r in self.rules if r.timed]
        self._names = frozenset(self._by_name)

    def observe(
        self,
        state: CustomerState,
        event: Mapping[str, Any],
        clock: float,
        due: float | None = NEVER,
    ) -> tuple[CustomerState, list[Finding]]:
        """One event of this customer: deadlines due by `clock` fire first, then every rule
        sees the event. Returns the new state and what was found, in order. `due`: the
        state's next deadline (`next_deadline`) when the caller knows it, None for none; by
        default it is looked for."""
        findings: list[Finding]
        if due is None or due > clock:
            fired, findings = state, []
        else:
            fired, findings = self.fire(state, clock)
        rules = dict(fired.rules)
        kind = event.get("type")
        for r in self.rules:
            saved = rules.get(r.name)
            # A rule that does nothing with this type (Detector.types) is not run: its state
            # stays as it is, unless it is of another version or the initial one (`_keep`).
            if (
                r.types is not None
                and kind not in r.types
                and (saved is None or (saved[0] == r.version and saved[1] != r.initial))
            ):
                continue
            step = r.detector.observe(self._state(rules, r), event, clock)
            _keep(rules, r, step.state)
            findings.extend(step.findings)
        profile = fired.profile
        if kind == "customer.profile" and _newer(event, load(profile)):
            profile = {
                k: _plain(v) for k, v in event.items() if k not in _PROFILE_SKIP and v is not None
            }
        new = new_state(
            CustomerState,
            (
                fired.seen_ids,
                fired.seen_times,
                rules,
                profile,
                fired.partition,
                _recent(fired.recent, event),
                _orders(fired.orders, event),
                fired.open,
            ),
        )
        return with_findings(new, findings), findings

    def fire(self, state: CustomerState, clock: float) -> tuple[CustomerState, list[Finding]]:
        """Deadlines of this customer that passed by `clock`."""
        findings: list[Finding] = []
        rules: dict[str, Any] | None = None  # copied on the first change
        if not self._names.issuperset(state.rules):  # a rule no longer in the config: dropped
            rules = {k: v for k, v in state.rules.items() if k in self._by_name}
        for r in self._timed:
            if r.name not in state.rules:
                continue
            current = self._state(rules if rules is not None else state.rules, r)
            due = r.detector.next_deadline(current)
            if due is None or due > clock:
                continue
            step = r.detector.fire(current, clock)
            if rules is None:
                rules = dict(state.rules)
            _keep(rules, r, step.state)
            findings.extend(step.findings)
        if rules is None:
            return state, findings
        return with_findings(state._replace(rules=rules), findings), findings

    def next_deadline(self, state: CustomerState) -> float | None:
        """When `fire` next has something to do for this customer, or None."""
        rules = state.rules
        best: float | None = None
        for r in self._timed:
            if r.name not in rules:
                continue
            d = r.detector.next_deadline(self._state(rules, r))
            if d is not None and (best is None or d < best):
                best = d
        return best

    def record(
        self,
        finding: Finding,
        detected_at: datetime,
        source: SourcePosition | None,
        context: Mapping[str, Any],
    ) -> ExceptionRecord:
        """The contract's exception record for a finding (route comes with the routers)."""
        rule = self._by_name[finding.rule]
        return ExceptionRecord(
            exception_id=finding.exception_id,
            rule=finding.rule,
            kind=finding.kind,
            status=finding.status,
            severity=rule.severity,
            customer_id=finding.customer_id,
            subject=dict(finding.subject),
            event_time=datetime.fromtimestamp(finding.event_time, UTC),
            detected_at=detected_at,
            evidence=list(finding.evidence),
            context=dict(context),
            rule_version=rule.version,
            source=source,
        )

    def context(self, state: CustomerState, finding: Finding) -> dict[str, Any]:
        """The record's context (pipeline/core/context.py): the customer as of `state`, and
        the finding's evidence events found among the recent ones by their times."""
        return context_of(
            state,
            finding.exception_id,
            evidence_of(finding.evidence, finding.evidence_at),
            self._by_name[finding.rule].evidence_types,
        )

    def _state(self, rules: Mapping[str, Any], r: _Compiled) -> Any:
        saved = rules.get(r.name)
        if saved is None or saved[0] != r.version:
            return r.detector.initial()  # new or changed rule: start afresh
        state = load(saved[1])
        if state is not saved[1] and rules.__class__ is dict:
            # read lazily: decoded once, kept decoded (the same value, the same bytes written)
            rules[r.name] = (saved[0], state)
        return state


RECENT_MAX = 20  # recent events kept per customer for context
RECENT_WINDOW = 90 * 86400.0  # ... within this much event time of the newest
ORDERS_MAX = 20  # open orders kept per customer (the oldest dropped beyond)
OPEN_MAX = 20  # open exceptions listed per customer (the oldest dropped beyond)
_DETAIL = ("order_id", "asset_id", "category", "channel")


def with_findings(state: CustomerState, findings: list[Finding]) -> CustomerState:
    """The customer's open exceptions after these findings."""
    if not findings:
        return state
    opened = dict(load(state.open))
    for f in findings:
        if f.status == "open":
            opened[f.exception_id] = {"rule": f.rule, "status": "open", "subject": dict(f.subject)}
        else:
            opened.pop(f.exception_id, None)
    return state._replace(open=dict(list(opened.items())[-OPEN_MAX:]))


def without_open(state: CustomerState, exception_id: str) -> CustomerState:
    """The state once a handler resolved one of the customer's exceptions."""
    opened = load(state.open)
    if exception_id not in opened:
        return state
    return state._replace(open={k: v for k, v in opened.items() if k != exception_id})


def _recent(
    recent: tuple[tuple[float, str, str], ...], event: Mapping[str, Any]
) -> tuple[tuple[float, str, str], ...]:
    t = epoch(event["occurred_at"])
    detail = ""
    for k in _DETAIL:
        if event.get(k):
            detail = str(event[k])[:64]
            break
    entry = (t, str(event["type"]), detail)
    if not recent or recent[-1][0] <= t:  # in order, as almost always: appended
        entries = (*recent, entry)
    else:  # after those of its time or earlier (a stable sort's place)
        at = bisect_right([e[0] for e in recent], t)
        entries = (*recent[:at], entry, *recent[at:])
    horizon = entries[-1][0] - RECENT_WINDOW
    first = 0
    while entries[first][0] <= horizon:
        first += 1
    return entries[max(first, len(entries) - RECENT_MAX) :]


def _orders(orders: Section, event: Mapping[str, Any]) -> Section:
    kind, order_id = str(event.get("type", "")), event.get("order_id")
    if not order_id or not kind.startswith("order."):
        return orders
    current: Mapping[str, Any] = load(orders)
    if kind in ("order.delivered", "order.cancelled"):
        return {k: v for k, v in current.items() if k != order_id}
    entry = dict(current.get(order_id, {}))
    entry["status"] = kind.removeprefix("order.")
    for name in ("value", "promised_by", "carrier", "tracking_id"):
        if event.get(name) is not None:
            entry[name] = _plain(event[name])
    updated = {k: v for k, v in current.items() if k != order_id}
    updated[order_id] = entry
    return dict(list(updated.items())[-ORDERS_MAX:])


def _newer(event: Mapping[str, Any], profile: Mapping[str, Any] | None) -> bool:
    if not profile or "occurred_at" not in profile:
        return True
    return epoch(event["occurred_at"]) >= epoch(profile["occurred_at"])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)  # Decimal and friends


@dataclass
class DeadlineIndex:
    """Which customers of a partition have a deadline due: a heap with lazy deletion.

    Only the latest deadline pushed per customer is live; older heap entries are skipped when
    popped. Held in memory and rebuilt from the table after a rebalance or restart.
    """

    heaps: dict[int, list[tuple[float, bytes]]] = field(default_factory=dict)
    live: dict[bytes, float] = field(default_factory=dict)

    def set(self, partition: int, customer: bytes, deadline: float | None) -> None:
        """Record a customer's next deadline (None: nothing pending)."""
        if deadline is None:
            self.live.pop(customer, None)
            return
        if self.live.get(customer) == deadline:
            return
        self.live[customer] = deadline
        heapq.heappush(self.heaps.setdefault(partition, []), (deadline, customer))

    def next(self, customer: bytes) -> float | None:
        """The customer's next deadline as recorded (None: nothing pending)."""
        return self.live.get(customer)

    def has_due(self, partition: int, clock: float) -> bool:
        """Whether `due` may yield a customer (an entry left by a later deadline may be all)."""
        heap = self.heaps.get(partition)
        if not heap:
            return False
        return heap[0][0] <= clock

    def due(self, partition: int, clock: float) -> Iterator[bytes]:
        """Customers of `partition` whose deadline is at or before `clock`, earliest first."""
        heap = self.heaps.get(partition)
        while heap and heap[0][0] <= clock:
            deadline, customer = heapq.heappop(heap)
            if self.live.get(customer) == deadline:
                del self.live[customer]
                yield customer

    def clear(self) -> None:
        self.heaps.clear()
        self.live.clear()

    def __len__(self) -> int:
        return len(self.live)


def event_dict(event: Any) -> dict[str, Any]:
    """A validated event as the detectors read it: its fields, defaults applied."""
    data: dict[str, Any] = event.model_dump()
    return data


def occurred(event: Mapping[str, Any]) -> float:
    """An event's time in seconds since the epoch."""
    return epoch(event["occurred_at"])


def _keep(rules: dict[str, Any], r: _Compiled, state: Any) -> None:
    """A rule's state goes in the customer's state unless it is the initial one, which reads
    back the same when absent (about 35 bytes saved per idle rule and customer)."""
    if state == r.initial:
        rules.pop(r.name, None)
    else:
        rules[r.name] = [r.version, state]
