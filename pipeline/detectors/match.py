"""`match`: one event that matches the conditions is an exception (e.g. a failed delivery)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.detectors.base import Finding, Instant, Step, epoch
from pipeline.detectors.matchers import Matcher, field_text, predicate, types_of


@dataclass(frozen=True)
class MatchDetector:
    """Stateless: each matching event is its own finding, its subject taken from `subject`."""

    kind: ClassVar[str] = "match"
    timed: ClassVar[bool] = False
    rule: str
    when: Sequence[Sequence[Matcher]]
    subject: tuple[str, ...] = ()
    # the sets as one function of the event (`predicate`), chosen once
    _matches: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matches", predicate(self.when))

    def initial(self) -> None:
        return None

    def types(self) -> frozenset[str] | None:
        return types_of(self.when) if self.when else frozenset()  # no `when`: never matches

    def evidence_types(self) -> frozenset[str] | None:
        return self.types()

    def observe(self, state: None, event: Mapping[str, Any], now: Instant) -> Step[None]:
        if not self.when or not self._matches(event):
            return Step(state)
        t = epoch(event["occurred_at"])
        finding = Finding(
            rule=self.rule,
            kind=self.kind,
            status="open",
            customer_id=event["customer_id"],
            # The event id keeps two matching events on one subject apart.
            subject={
                **{f: field_text(event, f) for f in self.subject},
                "event_id": event["event_id"],
            },
            trigger=t,
            event_time=t,
            evidence=(event["event_id"],),
            evidence_at=(t,),
        )
        return Step(state, (finding,))

    def fire(self, state: None, now: Instant) -> Step[None]:
        return Step(state)

    def next_deadline(self, state: None) -> Instant | None:
        return None
