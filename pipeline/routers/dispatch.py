"""Dispatch: route each exception to a handler within its capacity; overflow, resolutions,
reassignment and SLA escalation. Deterministic, no I/O, time passed in.

Capacity needs a global view per handler: how many exceptions each handler holds open, across
every customer and every worker. So all dispatch decisions are taken in one place: the single
partition of the internal topic `<app_id>-dispatch`, whose owner keeps every open exception in
a changelog-backed table (`store` here) and the per-handler counts in memory (rebuilt from the
table after a rebalance). Exceptions are rare next to events, so one partition keeps up; a
second worker takes over within the session timeout if the owner dies.

Decisions, for an exception routed to handler H by the tree:
- H holds fewer than its `capacity` open: H takes it (`route.reason` = "normal").
- H is full: it goes on along H's `overflow` chain to the first handler with room
  (reason "overflow: H at capacity (N open)"); if every one is full, the last takes it anyway
  (reason says so): an exception is never dropped.
- Open past its holder's `resolve_within` (event time): republished with status `escalated` to
  the holder's `escalate_to` handler (reason "escalation: ..."), which then holds it; an SLA
  breach with no `escalate_to` is counted only.
- A resolution (from the holder, or a detector's auto-resolve) closes it and frees the slot;
  the `resolved` record is published to the holder. `reassigned` moves it to the holder's
  overflow handler (the root's handler when there is none). `acknowledged` is recorded.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.config import Config
from pipeline.routers.tree import Route, routing_view

MAX_CHAIN = 10  # overflow/escalation hops at most


@dataclass(frozen=True)
class Routed:
    """One record to publish to one handler's topic."""

    handler: str
    record: dict[str, Any]
    # normal, overflow, escalation, reassigned, update; handed_on: a record for the handler an
    # exception left, naming the handler it went to (the record's route)
    reason: str
    # Only tells a handler that held the exception before what became of it (handed on, or
    # closed): it goes to that handler's topic, not to the exception log, the metrics or a
    # replay's output, which record each decision once.
    notice: bool = False


@dataclass
class Dispatcher:
    """All handlers' open exceptions, and the decisions on them."""

    config: Config
    store: MutableMapping[str, dict[str, Any]]  # exception id -> entry (the dispatch table)
    open: dict[str, set[str]] = field(default_factory=dict)  # handler -> open exception ids
    since: dict[str, float] = field(default_factory=dict)  # open id -> routed to its holder at
    # handler -> heap of (since, id) as they entered; entries of ids that left or moved on are
    # dropped when they reach the top (oldest_open) or when they outnumber the live ones
    _oldest: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _sla: list[tuple[float, str]] = field(default_factory=list)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    # drained by the caller: handlers whose SLA was breached; (handler, seconds held) resolved
    breaches: list[str] = field(default_factory=list)
    resolved: list[tuple[str, float]] = field(default_factory=list)
    entries: int = 0  # keys in the store (open and recently closed)

    def __post_init__(self) -> None:
        self.tree: Route = self.config.router()
        # Closed exceptions are remembered as long as event ids are (pipeline.dedupe_window), so
        # a late duplicate of their records is still ignored; then they are forgotten.
        self.keep_closed = self.config.pipeline.dedupe_window.total_seconds()
        for name in self.config.handlers:
            self.open.setdefault(name, set())

    def rebuild(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """After a rebalance or restart: counts and timers from the table's contents."""
        self.open = {name: set() for name in self.config.handlers}
        self.since = {}
        self._oldest = {}
        self._sla, self._expiry = [], []
        self.entries = 0
        for exception_id, entry in items:
            self._index(exception_id, entry)
            self.entries += 1

    def capacity(self, handler: str) -> int:
        return self.config.handlers[handler].capacity

    def on_exception(self, record: dict[str, Any], now: float) -> list[Routed]:
        """A detector's record (open or resolved) at event time `now`. Repeats are ignored."""
        exception_id = record["exception_id"]
        entry = self.store.get(exception_id)
        if record["status"] == "open":
            if entry is not None:
                return []  # a repeat (at-least-once upstream): already routed
            return self._route_new(record, now)
        if entry is None or entry.get("closed") is not None:
            return []  # nothing open to resolve (or already closed by its handler)
        out = self._catch_up(exception_id, now)
        entry = self.store[exception_id]
        return out + self._close(exception_id, entry, record, now, "resolved by the detector")

    def on_resolution(self, resolution: dict[str, Any], now: float) -> list[Routed]:
        """A handler's update (acknowledged, resolved or reassigned) at event time `now`, from a
        handler that holds or held the exception."""
        exception_id, handler = resolution["exception_id"], resolution["handler"]
        entry = self.store.get(exception_id)
        if entry is None or entry.get("closed") is not None or handler not in entry["held"]:
            return []
        status = resolution["status"]
        if status == "acknowledged":
            self.store[exception_id] = {**entry, "acked": resolution["at"]}
            return []
        out = self._catch_up(exception_id, now)
        entry = self.store[exception_id]
        if status == "resolved":
            record = {**entry["record"], "status": "resolved"}
            self.resolved.append((handler, max(0.0, now - entry["since"])))
            return out + self._close(exception_id, entry, record, now, f"resolved by {handler}")
        if handler not in entry["holders"]:
            return out  # escalated away from it already: nothing to hand on
        # reassigned: the holder hands it on
        handler_cfg = self.config.handlers[handler]
        target = handler_cfg.overflow or self.tree.handler
        self._leave(exception_id, handler)
        placed, why = self._place(target, exclude={handler})
        holders = [h for h in entry["holders"] if h != handler] + [placed]
        reason = f"reassigned by {handler}" + (f"; {why}" if why != "normal" else "")
        new = {
            **entry,
            "holders": holders,
            "held": sorted({*entry["held"], placed}),
            "deadline": self._deadline(placed, now),
        }
        self._enter(exception_id, placed, new)
        self.store[exception_id] = new
        routed = self._with_route(entry["record"], placed, entry["path"], reason)
        told = Routed(handler, routed, "handed_on", notice=True)
        return [*out, Routed(placed, routed, "reassigned"), told]

    def _catch_up(self, exception_id: str, t: float) -> list[Routed]:
        """An update at event time `t` on an exception whose SLA deadline passed before `t`:
        it was late, whatever the clock's progress, so it escalates first (as the clock would
        have). Live and replay then agree however partitions interleave."""
        out: list[Routed] = []
        for _ in range(MAX_CHAIN):
            entry = self.store[exception_id]
            deadline = entry.get("deadline")
            if deadline is None or deadline >= t:
                break
            out.extend(self._escalate(exception_id, entry, deadline))
        return out

    def fire(self, now: float) -> list[Routed]:
        """SLA breaches up to `now`; forget exceptions closed long ago."""
        out: list[Routed] = []
        while self._sla and self._sla[0][0] <= now:
            deadline, exception_id = heapq.heappop(self._sla)
            entry = self.store.get(exception_id)
            if entry is None or entry.get("closed") is not None or entry["deadline"] != deadline:
                continue  # stale timer
            out.extend(self._escalate(exception_id, entry, deadline))
        while self._expiry and self._expiry[0][0] <= now:
            expires, exception_id = heapq.heappop(self._expiry)
            entry = self.store.get(exception_id)
            if (
                entry is not None
                and entry.get("closed") is not None
                and (entry["closed"] + self.keep_closed == expires)
            ):
                del self.store[exception_id]
                self.entries -= 1
        return out

    def next_deadline(self) -> float | None:
        return self._sla[0][0] if self._sla else None

    def open_count(self, handler: str) -> int:
        return len(self.open.get(handler, ()))

    def oldest_open(self, handler: str) -> float | None:
        """Event time at which the oldest exception this handler holds was routed to it."""
        # The gauges ask on every dispatch message: from memory, and without a walk over every
        # open exception (thousands when a handler falls behind).
        heap = self._oldest.get(handler)
        if not heap:
            return None
        while heap and not self._holds(handler, heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _holds(self, handler: str, item: tuple[float, str]) -> bool:
        """Whether a heap item of `handler` is current: the exception is open with it, routed
        to it at that time (not an exception that left, or was routed to it again since)."""
        since, exception_id = item
        return exception_id in self.open.get(handler, ()) and self.since.get(exception_id) == since

    # -- internals -------------------------------------------------------------------------

    def _route_new(self, record: dict[str, Any], now: float) -> list[Routed]:
        exception_id = record["exception_id"]
        nodes = self.tree.match(routing_view(record))
        holders: list[str] = []
        out: list[Routed] = []
        for node in nodes:
            placed, reason = self._place(node.handler, exclude=set(holders))
            holders.append(placed)
            routed = self._with_route(record, placed, node.path, reason)
            out.append(Routed(placed, routed, "normal" if reason == "normal" else "overflow"))
        entry = {
            "record": {k: v for k, v in record.items() if k != "route"},
            "path": nodes[0].path,
            "holders": holders,
            "held": sorted(set(holders)),
            "since": now,
            "deadline": self._deadline(holders[0], now),
            "closed": None,
            "escalations": 0,
        }
        for h in holders:
            self._enter(exception_id, h, entry)
        self.store[exception_id] = entry
        self.entries += 1
        return out

    def _place(self, handler: str, exclude: set[str] | None = None) -> tuple[str, str]:
        """The handler that takes a new exception meant for `handler`, and why."""
        full: list[str] = []
        current = handler
        for _ in range(MAX_CHAIN):
            if current not in (exclude or set()) and self.open_count(current) < self.capacity(
                current
            ):
                break
            full.append(current)
            nxt = self.config.handlers[current].overflow
            if nxt is None or nxt in full:
                return current, (
                    f"overflow: {', '.join(full)} at capacity; over capacity at {current}"
                )
            current = nxt
        if not full:
            return current, "normal"
        counts = ", ".join(f"{h} at capacity ({self.open_count(h)} open)" for h in full)
        return current, f"overflow: {counts}"

    def _escalate(self, exception_id: str, entry: dict[str, Any], at: float) -> list[Routed]:
        """Escalate at event time `at` (the SLA deadline)."""
        holder = entry["holders"][0]
        cfg = self.config.handlers[holder]
        self.breaches.append(holder)
        target = cfg.escalate_to
        if target is None or entry["escalations"] >= MAX_CHAIN:
            self.store[exception_id] = {**entry, "deadline": None}
            return []
        within = _duration(cfg.resolve_within.total_seconds())
        reason = f"escalation: open past the resolve_within of {holder} ({within})"
        self._leave(exception_id, holder)
        holders = [target, *(h for h in entry["holders"][1:] if h != target)]
        new = {
            **entry,
            "holders": holders,
            "held": sorted({*entry["held"], target}),
            "since": at,
            "deadline": self._deadline(target, at),
            "escalations": entry["escalations"] + 1,
        }
        self._enter(exception_id, target, new)
        self.store[exception_id] = new
        record = self._with_route(
            {**entry["record"], "status": "escalated"}, target, entry["path"], reason
        )
        # The handler it left is told where it went: its view shows it handed on, not open.
        told = Routed(holder, record, "handed_on", notice=True)
        return [Routed(target, record, "escalation"), told]

    def _close(
        self,
        exception_id: str,
        entry: dict[str, Any],
        record: dict[str, Any],
        now: float,
        reason: str,
    ) -> list[Routed]:
        for h in entry["holders"]:
            self._leave(exception_id, h)
        self.since.pop(exception_id, None)
        closed = {**entry, "record": {}, "closed": now, "deadline": None}
        self.store[exception_id] = closed
        heapq.heappush(self._expiry, (now + self.keep_closed, exception_id))
        # Every handler that held it, not only those holding it now: a handler it was handed
        # on from sees it closed too.
        return [
            Routed(
                h,
                self._with_route(record, h, entry["path"], reason),
                "update",
                notice=h not in entry["holders"],
            )
            for h in entry["held"]
        ]

    def _deadline(self, handler: str, now: float) -> float:
        return now + self.config.handlers[handler].resolve_within.total_seconds()

    def _enter(self, exception_id: str, handler: str, entry: dict[str, Any]) -> None:
        self.open.setdefault(handler, set()).add(exception_id)
        self.since[exception_id] = entry["since"]
        self._held_since(handler, exception_id, entry["since"])
        if entry.get("deadline") is not None:
            heapq.heappush(self._sla, (entry["deadline"], exception_id))

    def _held_since(self, handler: str, exception_id: str, since: float) -> None:
        """`exception_id`, now open with `handler`, routed to its holder at `since`."""
        heap = self._oldest.setdefault(handler, [])
        heapq.heappush(heap, (since, exception_id))
        held = self.open.get(handler, ())
        if len(heap) > 2 * len(held) + 64:  # mostly ids that left: keep the live ones, once
            heap[:] = {item for item in heap if self._holds(handler, item)}
            heapq.heapify(heap)

    def _leave(self, exception_id: str, handler: str) -> None:
        self.open.get(handler, set()).discard(exception_id)

    def _index(self, exception_id: str, entry: dict[str, Any]) -> None:
        if entry.get("closed") is not None:
            heapq.heappush(self._expiry, (entry["closed"] + self.keep_closed, exception_id))
            return
        self.since[exception_id] = entry["since"]
        for h in entry["holders"]:
            if h in self.config.handlers:
                self.open.setdefault(h, set()).add(exception_id)
                self._held_since(h, exception_id, entry["since"])
        if entry.get("deadline") is not None:
            heapq.heappush(self._sla, (entry["deadline"], exception_id))

    @staticmethod
    def _with_route(record: dict[str, Any], handler: str, path: str, reason: str) -> dict[str, Any]:
        return {**record, "route": {"handler": handler, "path": path, "reason": reason}}


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def stamp(records: Iterator[Routed] | list[Routed], at: datetime | None = None) -> list[Routed]:
    """Set `detected_at` of updates to the wall clock (live) or the given time (replay)."""
    if not records:
        return []
    when = (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return [
        Routed(r.handler, {**r.record, "detected_at": when}, r.reason, r.notice) for r in records
    ]
