"""A customer's case book: every exception of one customer folded from the exception log
(`casewatch.exceptions`) and the handlers' resolutions (`casewatch.resolutions`) into cases with
a timeline. Pure and deterministic: no clock is read, a book is never changed in place.

One step per real step: an open record gives `detected` (at its `event_time`) and `routed` or
`overflow` (at its `detected_at`, to `route.handler`); an escalated record `escalated`; a
`reassigned by H` record `reassigned`; a resolved record `resolved`, once however many handlers
it was published to. From the resolutions topic only `acknowledged` adds a step (a resolved or
reassigned resolution is also a log record): such a resolution only adds its note to the log's
step. A resolution that arrives before what it refers to waits in the book (`pending`) and is
attached when it can be.

Repeats change nothing: each applied step's 64-bit digest is kept with its case (at most
MAX_SEEN), so a redelivered record or resolution is recognised even when its step was left out
of the timeline. The context stored is the first record's (the customer as the exception fired,
what its first handler saw); later records of the same exception carry that same context.

Bounds, all on the records' own times (the book's `clock` is the newest log time it has seen):
- a closed case is dropped `retention_s` after its last step (and, for a customer no record
  comes for, by `expire` on the wall clock: the case API and the worker's sweep);
- at most `max_cases` cases: the oldest closed go first, open ones only when all are open;
- at most MAX_STEPS steps per case (the first HEAD and the last MAX_STEPS - HEAD), MAX_EVIDENCE
  evidence ids, a context of at most MAX_CONTEXT bytes (its lists cut from the end), notes of
  MAX_NOTE and reasons of MAX_REASON characters, MAX_PENDING waiting resolutions;
- at most MAX_BYTES serialised, whatever the fields' lengths: over it, cases go as above.
A typical case takes about 1 KB, so 50 of them about 50 KB (docs/cases.md, "Bounds").

Serialised (`dumps`) as one version byte and MessagePack, each struct as an array.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
import orjson

from pipeline.core.durations import parse_duration

VERSION = 1
MAX_STEPS = 12
HEAD = 4
MAX_SEEN = 64
MAX_EVIDENCE = 20
MAX_CONTEXT = 4096
MAX_NOTE = 500
MAX_REASON = 300
MAX_PENDING = 16
MAX_BYTES = 128 * 1024
OPEN = frozenset({"open", "escalated"})
_DETECTOR = "detector"  # `resolved_by` of an auto-resolve ("resolved by the detector")


class Step(msgspec.Struct, frozen=True, array_like=True):
    """One step of a case's timeline."""

    at: float
    step: str  # detected, routed, overflow, escalated, acknowledged, reassigned, resolved
    handler: str | None = None
    from_: str | None = None
    reason: str = ""
    by: str | None = None
    note: str | None = None


class Case(msgspec.Struct, frozen=True, array_like=True):
    """One exception as the case view shows it."""

    exception_id: str
    customer_id: str
    rule: str
    kind: str
    severity: str
    subject: dict[str, str]
    event_time: float
    detected_at: float  # its first record's
    evidence: tuple[str, ...]
    context: dict[str, Any]
    status: str  # open, escalated, resolved: the latest record's
    handler: str | None  # the holder (the last one, once resolved)
    handler_since: float | None
    held: tuple[str, ...]  # every handler that held it
    resolved_at: float | None
    resolved_by: str | None
    timeline: tuple[Step, ...]
    elided: int = 0  # steps left out of the timeline's middle
    seen: bytes = b""  # digests of the steps applied

    @property
    def last(self) -> float:
        return self.timeline[-1].at if self.timeline else self.detected_at

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


class Pending(msgspec.Struct, frozen=True, array_like=True):
    """A resolution waiting for its case, or for the step it belongs to."""

    exception_id: str
    handler: str
    status: str
    at: float
    note: str | None


class Book(msgspec.Struct, frozen=True, array_like=True):
    """One customer's cases."""

    cases: dict[str, Case] = {}
    pending: tuple[Pending, ...] = ()
    clock: float = float("-inf")  # the newest log record time applied
    forgotten: float = float("-inf")  # the newest first-seen time of a dropped case


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Book).decode


def loads(data: bytes | None) -> Book:
    """A book from `dumps`' bytes; None (no entry yet) is an empty book."""
    if not data:
        return Book()
    if data[0] != VERSION:
        raise ValueError(f"case book version {data[0]} is not one this version reads")
    return _decode(data[1:])


def dumps(book: Book) -> bytes:
    return bytes([VERSION]) + _encode(book)


def cases(book: Book, status: str | None = None) -> list[Case]:
    """Open (and escalated) cases first, then the rest, each newest first; `status` keeps only
    open, escalated or resolved ones."""
    kept = [c for c in book.cases.values() if status is None or c.status == status]
    kept.sort(key=lambda c: (c.detected_at, c.exception_id), reverse=True)
    kept.sort(key=lambda c: not c.is_open)
    return kept


def find(book: Book, exception_id: str) -> Case | None:
    return book.cases.get(exception_id)


def ids(book: Book) -> list[str]:
    return list(book.cases)


def expire(book: Book, now: float, *, retention_s: float, max_cases: int) -> Book:
    """The book as of wall time `now`: closed cases and waiting resolutions older than
    `retention_s` before `now` (or before the book's own clock, if later) left out. The book
    itself when nothing goes, so a caller can tell by identity; an empty book when nothing
    stays (`is_empty`). What a customer no record came for since would otherwise keep."""
    horizon = _horizon(book, retention_s, now)
    if not any(_outlived(c, horizon) for c in book.cases.values()) and all(
        p.at >= horizon for p in book.pending
    ):
        return book  # as almost always (the API reads every book through here)
    return _bounded(book, retention_s, max_cases, now)


def is_empty(book: Book) -> bool:
    """Nothing to show or to wait for: the table needs no entry for it."""
    return not book.cases and not book.pending


def apply_record(
    book: Book, record: Mapping[str, Any], *, retention_s: float, max_cases: int
) -> Book:
    """One routed record from the exception log. A `ValueError` if it is not one."""
    step, new_status = _step_of(record)
    exception_id = str(record["exception_id"])
    case = book.cases.get(exception_id)
    if case is None:
        if new_status == "open" and step.at <= book.forgotten:
            return book  # a repeat of a case dropped since
        case = _new_case(record)
    key = _key(step.step, step.at, step.handler if new_status != "resolved" else None, step.reason)
    if _digest(key) in _seen(case):
        return book
    case = _advance(case, step, new_status, _digest(key))
    clock = max(book.clock, step.at)
    book = _with(book, case, clock=clock)
    book = _attach(book, exception_id)
    return _bounded(book, retention_s, max_cases)


def apply_resolution(
    book: Book, resolution: Mapping[str, Any], *, retention_s: float, max_cases: int
) -> Book:
    """One handler's resolution. Only `acknowledged` adds a step; a note goes on the step."""
    waiting = Pending(
        str(resolution["exception_id"])[:128],
        str(resolution["handler"])[:MAX_REASON],
        str(resolution["status"]),
        _epoch(resolution["at"]),
        _cut(resolution.get("note"), MAX_NOTE),
    )
    if waiting.status != "acknowledged" and waiting.note is None:
        return book  # the log's own record says all it says
    if waiting in book.pending:
        return book
    placed = _place(book, waiting)
    if placed is None:
        book = msgspec.structs.replace(book, pending=(*book.pending, waiting))
    elif placed is not book:
        book = placed
    else:
        return book
    return _bounded(book, retention_s, max_cases)


# -- records -----------------------------------------------------------------------------------

_REASSIGNED = re.compile(r"^reassigned by (.+?)(?:;|$)")
_ESCALATION = re.compile(r"resolve_within of (.+) \((\w+)\)$")
_OVERFLOW = re.compile(r"^overflow: (.+?) at capacity")


def _step_of(record: Mapping[str, Any]) -> tuple[Step, str]:
    """The step a log record makes, and the case's status after it."""
    try:
        status, route = str(record["status"]), record["route"]
        handler, reason = str(route["handler"]), _cut(str(route["reason"]), MAX_REASON) or ""
        at = _epoch(record["detected_at"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a routed exception record: {exc!r} is missing") from None
    if status == "resolved":
        by = reason.removeprefix("resolved by ")
        by = _DETECTOR if by == "the detector" else by
        return Step(at, "resolved", None, None, reason, by), status
    if status == "escalated":
        found = _ESCALATION.search(reason)
        return Step(at, "escalated", handler, found.group(1) if found else None, reason), status
    if (found := _REASSIGNED.match(reason)) is not None:
        by = found.group(1)
        return Step(at, "reassigned", handler, by, reason, by), status
    if (found := _OVERFLOW.match(reason)) is not None:
        return Step(at, "overflow", handler, found.group(1).split(",")[0], reason), status
    if status != "open":
        raise ValueError(f"not a routed exception record: status {status!r}")
    return Step(at, "routed", handler, None, reason), status


def _new_case(record: Mapping[str, Any]) -> Case:
    detected_at = _epoch(record["detected_at"])
    event_time = _epoch(record["event_time"])
    detected = Step(min(event_time, detected_at), "detected", reason=f"rule {record['rule']} fired")
    return Case(
        exception_id=str(record["exception_id"]),
        customer_id=str(record["customer_id"]),
        rule=str(record["rule"]),
        kind=str(record["kind"]),
        severity=str(record["severity"]),
        subject={str(k): str(v) for k, v in dict(record.get("subject") or {}).items()},
        event_time=event_time,
        detected_at=detected_at,
        evidence=tuple(str(e) for e in list(record.get("evidence") or [])[:MAX_EVIDENCE]),
        context=_fit(dict(record.get("context") or {})),
        status="open",
        handler=None,
        handler_since=None,
        held=(),
        resolved_at=None,
        resolved_by=None,
        timeline=(detected,),
    )


def _advance(case: Case, step: Step, status: str, digest: bytes) -> Case:
    """The case after a log record's step."""
    changes: dict[str, Any] = {"status": status}
    if step.handler is not None and step.handler not in case.held:
        changes["held"] = (*case.held, step.handler)
    takes = (
        case.handler is None
        or step.step == "escalated"
        or (step.step == "reassigned" and step.from_ == case.handler)
    )
    if step.step == "resolved":
        changes.update(resolved_at=step.at, resolved_by=step.by)
        step = msgspec.structs.replace(step, handler=case.handler)
    elif takes and step.handler is not None:
        if step.step == "escalated" and step.from_ is None:
            step = msgspec.structs.replace(step, from_=case.handler)
        changes.update(handler=step.handler, handler_since=_since(case, step))
    return _with_step(msgspec.structs.replace(case, **changes), step, digest)


def _since(case: Case, step: Step) -> float:
    """When the new holder's SLA starts, as dispatch counts it: the event time the exception
    fired at; for an escalation, the moment the previous holder's resolve_within ran out (the
    reason names it); for a reassignment, when it was decided."""
    if case.handler is None and step.step in ("routed", "overflow"):
        return case.event_time
    found = _ESCALATION.search(step.reason)
    if step.step == "escalated" and found and case.handler_since is not None:
        try:
            return case.handler_since + parse_duration(found.group(2)).total_seconds()
        except ValueError:
            pass
    return step.at


def _with_step(case: Case, step: Step, digest: bytes) -> Case:
    timeline = list(case.timeline)
    timeline.insert(bisect_right([s.at for s in timeline], step.at), step)
    elided = case.elided
    if len(timeline) > MAX_STEPS:
        del timeline[HEAD]
        elided += 1
    seen = (case.seen + digest)[-8 * MAX_SEEN :]
    return msgspec.structs.replace(case, timeline=tuple(timeline), elided=elided, seen=seen)


# -- resolutions -------------------------------------------------------------------------------


def _place(book: Book, r: Pending) -> Book | None:
    """The book with the resolution in its case: unchanged when it is a repeat or moot, None
    when it must wait."""
    case = book.cases.get(r.exception_id)
    if case is None:
        return None
    if r.status == "acknowledged":
        if case.resolved_at is not None and r.at >= case.resolved_at:
            return book  # closed first: dispatch ignores it too
        if r.handler not in case.held:
            return None  # it may reach this handler later (an escalation, a reassignment)
        digest = _digest(_key("acknowledged", r.at, r.handler, ""))
        if digest in _seen(case):
            return book
        step = Step(
            r.at, "acknowledged", r.handler, None, f"acknowledged by {r.handler}", r.handler, r.note
        )
        return _with(book, _with_step(case, step, digest))
    kind = "resolved" if r.status == "resolved" else "reassigned"
    mine = [i for i, s in enumerate(case.timeline) if s.step == kind and s.by == r.handler]
    if any(case.timeline[i].note == r.note for i in mine):
        return book
    free = [i for i in mine if case.timeline[i].note is None]
    if not free:
        return None
    timeline = list(case.timeline)
    timeline[free[0]] = msgspec.structs.replace(timeline[free[0]], note=r.note)
    return _with(book, msgspec.structs.replace(case, timeline=tuple(timeline)))


def _attach(book: Book, exception_id: str) -> Book:
    """Resolutions that waited for this case, placed where they now fit."""
    for waiting in [p for p in book.pending if p.exception_id == exception_id]:
        placed = _place(book, waiting)
        if placed is not None:
            left = tuple(p for p in placed.pending if p != waiting)
            book = msgspec.structs.replace(placed, pending=left)
    return book


# -- bounds ------------------------------------------------------------------------------------


def _horizon(book: Book, retention_s: float, now: float | None) -> float:
    """What is older than this has outlived the retention: on the book's own clock, or on
    the wall clock `now` when that is later."""
    return (book.clock if now is None else max(book.clock, now)) - retention_s


def _outlived(case: Case, horizon: float) -> bool:
    return not case.is_open and case.last < horizon


def _bounded(book: Book, retention_s: float, max_cases: int, now: float | None = None) -> Book:
    horizon = _horizon(book, retention_s, now)
    drop = [c for c in book.cases.values() if _outlived(c, horizon)]
    expired = {c.exception_id for c in drop}
    pending = tuple(p for p in book.pending if p.at >= horizon)[-MAX_PENDING:]
    ranked = sorted(
        (c for c in book.cases.values() if c.exception_id not in expired),
        key=lambda c: (c.is_open, c.last if not c.is_open else c.detected_at, c.exception_id),
    )
    # Each case's bytes with its key in the map; the rest (pending, times, headers) apart.
    sizes = {c.exception_id: len(_encode(c)) + len(c.exception_id) + 5 for c in ranked}
    budget = MAX_BYTES - len(_encode(pending)) - 64
    total = sum(sizes.values())
    while ranked and (len(ranked) > max_cases or total > budget):
        gone = ranked.pop(0)
        drop.append(gone)
        total -= sizes[gone.exception_id]
    if not drop and pending == book.pending:
        return book
    dropped = {c.exception_id for c in drop}
    return Book(
        cases={k: c for k, c in book.cases.items() if k not in dropped},
        pending=tuple(p for p in pending if p.exception_id not in dropped),
        clock=book.clock,
        forgotten=max([book.forgotten, *(c.detected_at for c in drop)]),
    )


def _fit(context: dict[str, Any]) -> dict[str, Any]:
    """The context within MAX_CONTEXT bytes: its longest list cut from the end (the lists are
    newest first) until it fits; a context that still does not fit is left out."""
    context = dict(context)
    while len(orjson.dumps(context, default=str)) > MAX_CONTEXT:
        lists = [k for k, v in context.items() if isinstance(v, list) and v]
        if not lists:
            return {"omitted": f"larger than {MAX_CONTEXT} bytes"}
        longest = max(lists, key=lambda k: len(context[k]))
        context[longest] = context[longest][:-1]
    return context


# -- helpers -----------------------------------------------------------------------------------


def _with(book: Book, case: Case, clock: float | None = None) -> Book:
    return msgspec.structs.replace(
        book,
        cases={**book.cases, case.exception_id: case},
        clock=book.clock if clock is None else clock,
    )


def _key(step: str, at: float, handler: str | None, reason: str) -> str:
    return f"{step}|{at!r}|{handler or ''}|{reason}"


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def _seen(case: Case) -> set[bytes]:
    return {case.seen[i : i + 8] for i in range(0, len(case.seen), 8)}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {value!r}") from None


def _cut(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
