"""`threshold`: the count of matching events per customer (and group fields) within a sliding
window reaches N.

The window ending at an event's time t is (t - window, t]: an event exactly `window` older is
out. A rule fires once when the count reaches N, then stays quiet for that customer and group
until every event that made it fire has left the window (quiet until newest evidence + window).
Out-of-order events count in the window of their own time.

Bound: per group at most `max(2 * count, 32)` events (the newest); a group whose newest event is
two windows older than the event being observed is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.detectors.base import Finding, Instant, Step, epoch
from pipeline.detectors.matchers import Matcher, field_text, predicate, types_of

# Per group key: {"e": [[time, event_id], ...] sorted by time, "q": quiet until}
State = Mapping[str, Mapping[str, Any]]
_NEW: Mapping[str, Any] = {"e": (), "q": None}  # a group not seen before (never changed)


@dataclass(frozen=True)
class ThresholdDetector:
    """Counts matching events per group in a sliding window of event time."""

    kind: ClassVar[str] = "threshold"
    timed: ClassVar[bool] = False
    rule: str
    when: Sequence[Sequence[Matcher]]
    count: int
    window: float
    group_by: tuple[str, ...] = ()
    # the sets as one function of the event (`predicate`), chosen once
    _matches: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matches", predicate(self.when))

    def initial(self) -> State:
        return {}

    def types(self) -> frozenset[str] | None:
        return types_of(self.when)  # an event that does not match changes nothing

    def evidence_types(self) -> frozenset[str] | None:
        return self.types()

    def observe(self, state: State, event: Mapping[str, Any], now: Instant) -> Step[State]:
        if not self._matches(event):
            return Step(state)
        t = epoch(event["occurred_at"])
        by = self.group_by
        key = (
            field_text(event, by[0])
            if len(by) == 1
            else "\x1f".join(field_text(event, f) for f in by)
        )
        group = state.get(key, _NEW)
        entry = [t, event["event_id"]]
        before = group["e"]
        # In order, as almost always: appended; else in its place, as sorted() would put it.
        in_order = not before or before[-1] <= entry
        events = [*before, entry] if in_order else sorted([*before, entry])
        horizon = events[-1][0] - self.window
        first, n = 0, len(events)
        while first < n and events[first][0] <= horizon:  # sorted by time: old ones first
            first += 1
        kept = events[first:][-max(2 * self.count, 32) :]
        quiet = group["q"]  # None: not fired yet (JSON has no -inf)
        findings: tuple[Finding, ...] = ()
        if in_order:  # the newest: its window holds every event kept, and no later window
            if len(kept) >= self.count and (quiet is None or t >= quiet):
                findings = (self._finding(event, kept, t),)
                quiet = kept[-1][0] + self.window
        else:  # a late event also counts in the windows of the events after it
            for end in [t, *(e[0] for e in kept if t < e[0] < t + self.window)]:
                inside = [e for e in kept if end - self.window < e[0] <= end]
                if len(inside) >= self.count and (quiet is None or end >= quiet):
                    findings = (self._finding(event, inside, end),)
                    quiet = inside[-1][0] + self.window
                    break
        groups = {
            k: g
            for k, g in state.items()
            if k != key and g["e"] and g["e"][-1][0] > t - 2 * self.window
        }
        groups[key] = {"e": kept, "q": quiet}
        return Step(groups, findings)

    def fire(self, state: State, now: Instant) -> Step[State]:
        return Step(state)  # no deadlines: windows move with events

    def next_deadline(self, state: State) -> Instant | None:
        return None

    def _finding(self, event: Mapping[str, Any], inside: list[list[Any]], t: float) -> Finding:
        return Finding(
            rule=self.rule,
            kind=self.kind,
            status="open",
            customer_id=event["customer_id"],
            subject={f: field_text(event, f) for f in self.group_by},
            trigger=inside[0][0],
            event_time=t,
            evidence=tuple(str(e[1]) for e in inside),
            evidence_at=tuple(float(e[0]) for e in inside),
        )
