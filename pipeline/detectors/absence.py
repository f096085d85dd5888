"""`absence`: an expected event that never came (e.g. a shipped order never delivered).

Per correlation key (e.g. `order_id`): any event carrying `deadline_field` records the latest
promise; a `start` event arms the deadline = latest promise + grace, or start time + `delay`
when there is no promise. An `expect` or `cancel` event disarms it. When the clock passes the
deadline the exception fires (trigger = the deadline); if the expected event arrives after
that, the same exception is found again as `resolved`. A closing event later than the deadline
that arrives before the clock fired it yields both records at once (it was missing at the
deadline), so the outcome depends on event time only, not on when the clock moved.

Bound: one entry per correlation key; closed keys are kept `keep_closed` (the rule's
`forget_after`, 30 days by default) of event time after closing, so a late start cannot re-arm
them, then dropped; so are keys that fired and never closed, that long after their deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.detectors.base import Finding, Instant, Step, epoch
from pipeline.detectors.matchers import Matcher, field_text, predicate, types_of

# Per key: {"c": customer, "p": promise|None, "d": deadline|None, "f": fired,
# "ev": [[start event id, its time], ...]}; once closed, only {"x": closed at}. A state stored
# by an earlier version may also keep "c" in closed keys, and ids alone (time unknown) in "ev".
State = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class AbsenceDetector:
    """Deadlines per correlation key, armed, moved, disarmed and fired on event time."""

    kind: ClassVar[str] = "absence"
    timed: ClassVar[bool] = True
    rule: str
    key: str
    start: Sequence[Sequence[Matcher]]
    expect: Sequence[Sequence[Matcher]]
    cancel: Sequence[Sequence[Matcher]]
    grace: float
    delay: float
    deadline_field: str | None = None
    keep_closed: float = 30 * 86400.0  # remember closed keys this long, so late starts stay closed
    # the sets as functions of the event (`predicate`), chosen once
    _starts: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)
    _expected: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)
    _cancels: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", predicate(self.start))
        object.__setattr__(self, "_expected", predicate(self.expect))
        object.__setattr__(self, "_cancels", predicate(self.cancel))

    def initial(self) -> State:
        return {}

    def types(self) -> frozenset[str] | None:
        return None  # any event with the key records its promise and prunes closed keys

    def evidence_types(self) -> frozenset[str] | None:
        # Its evidence is start and closing events, though it observes every type.
        found: set[str] = set()
        for sets in (self.start, self.expect, self.cancel):
            named = types_of(sets) if sets else frozenset()
            if named is None:
                return None
            found |= named
        return frozenset(found)

    def observe(self, state: State, event: Mapping[str, Any], now: Instant) -> Step[State]:
        k = field_text(event, self.key)
        if not k:
            return Step(state)
        entry = dict(
            state.get(k, {"c": event["customer_id"], "p": None, "d": None, "f": False, "ev": []})
        )
        if entry.get("x") is not None:
            return Step(state)  # closed already: a late start must not re-arm it
        t = epoch(event["occurred_at"])
        if self.deadline_field and event.get(self.deadline_field):
            entry["p"] = epoch(event[self.deadline_field])
        if self._starts(event):
            entry["s"] = t
            entry["ev"] = [*entry["ev"], [event["event_id"], t]]
        if entry.get("s") is not None and not entry["f"]:
            entry["d"] = (
                entry["p"] + self.grace if entry["p"] is not None else entry["s"] + self.delay
            )
        closing = (self.expect and self._expected(event)) or (self.cancel and self._cancels(event))
        findings: tuple[Finding, ...] = ()
        if closing:
            if not entry["f"] and entry["d"] is not None and t > entry["d"]:
                # Closed after its deadline before the clock got there (within the allowed
                # lateness): it was missing at the deadline all the same.
                findings = (self._finding(k, entry, "open", entry["d"], None),)
                entry["f"] = True
            if entry["f"]:
                findings += (self._finding(k, entry, "resolved", t, (event["event_id"], t)),)
            entry = {"x": t}
        pruned = {key: v for key, v in state.items() if not self._forgotten(v, t)}
        return Step({**pruned, k: entry}, findings)

    def _forgotten(self, v: Mapping[str, Any], t: float) -> bool:
        if v.get("x") is not None:  # closed
            return bool(v["x"] <= t - self.keep_closed)
        return bool(v["f"] and v["d"] is not None and v["d"] <= t - self.keep_closed)

    def fire(self, state: State, now: Instant) -> Step[State]:
        due = [
            k for k, v in state.items() if v.get("d") is not None and not v["f"] and v["d"] <= now
        ]
        if not due:
            return Step(state)
        new = dict(state)
        findings = []
        for k in sorted(due, key=lambda key: (state[key]["d"], key)):
            new[k] = {**state[k], "f": True}
            findings.append(self._finding(k, state[k], "open", state[k]["d"], None))
        return Step(new, tuple(findings))

    def next_deadline(self, state: State) -> Instant | None:
        return min(
            (v["d"] for v in state.values() if v.get("d") is not None and not v["f"]), default=None
        )

    def _finding(
        self,
        k: str,
        entry: Mapping[str, Any],
        status: str,
        t: float,
        extra: tuple[str, float] | None,
    ) -> Finding:
        # An entry stored by an earlier version is the id alone: its time is unknown.
        evidence: list[tuple[str, float | None]] = [
            (e, None) if isinstance(e, str) else (e[0], e[1]) for e in entry["ev"]
        ]
        if extra:
            evidence.append(extra)
        return Finding(
            rule=self.rule,
            kind=self.kind,
            status=status,
            customer_id=entry["c"],
            subject={self.key: k},
            trigger=entry["d"],
            event_time=t,
            evidence=tuple(e[0] for e in evidence),
            evidence_at=tuple(e[1] for e in evidence),
        )
