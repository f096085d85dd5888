"""What a handler sees about the customer when an exception fires: the record's `context`.

The customer's state keeps its recent events without their ids (an id per recent event would
make every customer's state much larger); a finding gives the time of each of its evidence
events, so the recent event of that time is found here and shown with its id.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import zip_longest
from typing import Any

from pipeline.core.state import CustomerState, load

Recent = tuple[tuple[float, str, str], ...]


def context_of(
    state: CustomerState,
    exception_id: str | None = None,
    evidence: Sequence[tuple[str, float | None]] = (),
    observed: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The latest profile; the record's `evidence` events (id and time, with the type and
    detail of the recent event of that time, null when it is no longer among them); recent
    events (newest first, at most 20 within 90 days; those that are evidence with their
    `event_id`); open orders; the customer's other open exceptions. `observed`: the event
    types the rule's evidence can have (None: any), preferred when recent events share a
    time. Bounded (docs/routing.md, "Context")."""
    recent = state.recent
    profile, orders, opened = load(state.profile), load(state.orders), load(state.open)
    places = _places(recent, evidence, observed)
    ids = {i: event_id for (event_id, _), i in zip(evidence, places, strict=True) if i is not None}
    return {
        "profile": dict(profile) if profile else None,
        "evidence": [
            {
                "event_id": event_id,
                "occurred_at": None if t is None else _iso(t),
                "type": None if i is None else recent[i][1],
                "detail": None if i is None else recent[i][2],
            }
            for (event_id, t), i in zip(evidence, places, strict=True)
        ],
        "recent_events": [
            _recent_event(recent[i], ids.get(i)) for i in reversed(range(len(recent)))
        ],
        "open_orders": [{"order_id": k, **v} for k, v in orders.items()],
        "open_exceptions": [
            {"exception_id": k, **v} for k, v in opened.items() if k != exception_id
        ],
    }


def evidence_of(
    ids: Sequence[str], times: Sequence[float | None]
) -> list[tuple[str, float | None]]:
    """Each evidence id with its time (None when unknown, or when `times` is shorter)."""
    return [(i, t) for i, t in zip_longest(ids, times[: len(ids)])]


def _places(
    recent: Recent, evidence: Sequence[tuple[str, float | None]], observed: frozenset[str] | None
) -> list[int | None]:
    """For each evidence event, the index of its recent event, or None when none is left of
    its time. Of several recent events of one time, the first not taken of a type in
    `observed`, else the first not taken."""
    times = [e[0] for e in recent]
    taken: set[int] = set()
    places: list[int | None] = []
    for _, t in evidence:
        free = (
            []
            if t is None
            else [i for i in range(bisect_left(times, t), bisect_right(times, t)) if i not in taken]
        )
        fits = [i for i in free if observed is None or recent[i][1] in observed] or free
        if fits:
            taken.add(fits[0])
        places.append(fits[0] if fits else None)
    return places


def _recent_event(entry: tuple[float, str, str], event_id: str | None) -> dict[str, Any]:
    t, kind, detail = entry
    shown = {"occurred_at": _iso(t), "type": kind, "detail": detail}
    return shown if event_id is None else {"event_id": event_id, **shown}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
