"""The detector contract: pure logic, no I/O, time passed in.

A detector never reads a clock, a topic or a table: the live worker and the offline replay call
it through one processor (pipeline/core/processor.py), so live and replay cannot disagree. State
is immutable and serialisable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

S = TypeVar("S")
Instant = float  # seconds since the epoch, event time


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's verdict, before routing and context turn it into an exception record."""

    rule: str
    kind: str
    status: str  # open or resolved
    customer_id: str
    subject: Mapping[str, str]
    trigger: Instant  # window start or deadline: part of the id
    event_time: Instant
    evidence: tuple[str, ...]
    # The event time of each evidence id, in the same order, so the context can show which
    # recent events they are. None where the detector does not know it (an absence entry
    # stored by an earlier version kept its ids only); a detector that gives no times leaves
    # it empty.
    evidence_at: tuple[float | None, ...] = ()

    @property
    def exception_id(self) -> str:
        """Deterministic: rule, customer, subject and trigger, so replay and restarts agree."""
        return exception_id(self.rule, self.customer_id, self.subject, self.trigger)


def exception_id(rule: str, customer_id: str, subject: Mapping[str, str], trigger: Instant) -> str:
    """A stable id: the same inputs give the same id, in every process and in replay."""
    parts = [
        rule,
        customer_id,
        *(f"{k}={subject[k]}" for k in sorted(subject)),
        repr(float(trigger)),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Step(NamedTuple, Generic[S]):
    """What one call returns: the new state and what it found (a named tuple: made for
    every rule an event reaches)."""

    state: S
    findings: tuple[Finding, ...] = ()


class Detector(Protocol[S]):
    """One rule's logic. `observe` sees each event of a customer; `fire` runs when the clock
    passes `next_deadline`."""

    kind: ClassVar[str]
    # Whether `next_deadline` can ever be a time: the engine asks only those that say so (a
    # detector without the attribute is asked).
    timed: ClassVar[bool]

    def initial(self) -> S:
        """The state of a customer never seen before."""
        ...

    def types(self) -> frozenset[str] | None:
        """The event types `observe` can change the state or find something for; None when
        it can for any type. The engine does not call `observe` for the others."""
        ...

    def evidence_types(self) -> frozenset[str] | None:
        """The event types a finding's evidence can have; None when any type can be. The
        context tells evidence events apart from others of the same time by it."""
        ...

    def observe(self, state: S, event: Mapping[str, Any], now: Instant) -> Step[S]:
        """Take one event (as a dict of its fields); return the new state and findings."""
        ...

    def fire(self, state: S, now: Instant) -> Step[S]:
        """Deadlines that passed by `now`."""
        ...

    def next_deadline(self, state: S) -> Instant | None:
        """When `fire` next has something to do, or None."""
        ...


_last: tuple[Any, Instant] = (None, 0.0)


def epoch(value: Any) -> Instant:
    """An event time (datetime or RFC 3339 text) as seconds since the epoch."""
    global _last
    # Every rule that sees an event reads its time: the last datetime converted is kept (a
    # datetime is immutable; one tuple, so a reader never pairs a value with another's time).
    last = _last
    if value is last[0]:
        return last[1]
    if isinstance(value, datetime):
        t = value.timestamp()
        _last = (value, t)
        return t
    return datetime.fromisoformat(value).timestamp()
