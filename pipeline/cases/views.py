"""What staff and customers see of a case (JSON-ready dicts, times RFC 3339 UTC with Z).

`staff_view`: everything the log knows, with the holder's `redact` paths applied as its handler
topic applies them (a resolved case: its last holder's). `customer_view`: the state in plain
words and the rule's message; never evidence, context, notes, handler names or internal reasons.
Both take `now` (seconds since the epoch) from the caller: no clock is read here. The response
models and the OpenAPI document are in pipeline/cases/api.py, re-exported here.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pipeline.cases.api import (
    CustomerCase,
    CustomerCaseList,
    ErrorBody,
    StaffCase,
    StaffCaseList,
    openapi,
)
from pipeline.cases.book import Case, Step
from pipeline.cases.messages import day, fill, when
from pipeline.config import Config
from pipeline.routers.tree import redact

__all__ = [
    "CustomerCase",
    "CustomerCaseList",
    "ErrorBody",
    "StaffCase",
    "StaffCaseList",
    "customer_view",
    "openapi",
    "staff_view",
    "valid_customer_id",
    "valid_exception_id",
]

_EXCEPTION_ID = re.compile(r"[0-9a-f]{32}")
_ROUTED = ("routed", "overflow")
_ACTED = ("acknowledged", "reassigned")


def valid_customer_id(text: str) -> bool:
    """1..128 characters, none of them a control character (the contract's customer ids)."""
    return 1 <= len(text) <= 128 and not any(unicodedata.category(c) == "Cc" for c in text)


def valid_exception_id(text: str) -> bool:
    """32 lower-case hexadecimal digits, as the detectors make them."""
    return _EXCEPTION_ID.fullmatch(text) is not None


# A case's times are asked for again with every request about it: a view has about seven
# per case, and formatting them was a third of a request's own CPU.
@lru_cache(maxsize=8192)
def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def due(case: Case, config: Config) -> float | None:
    """The holder's SLA deadline: when the case reached it plus its `resolve_within`."""
    holder = config.handlers.get(case.handler) if case.handler else None
    if holder is None or case.handler_since is None:
        return None
    return case.handler_since + holder.resolve_within.total_seconds()


def sla_missed(case: Case, config: Config, now: float) -> bool:
    """Escalated at some point, or its due time passed before it was resolved (or before now)."""
    deadline = due(case, config)
    end = case.resolved_at if case.resolved_at is not None else now
    return any(s.step == "escalated" for s in case.timeline) or (
        deadline is not None and deadline < end
    )


def staff_view(case: Case, config: Config, now: float) -> dict[str, Any]:
    """The case as staff see it (StaffCase)."""
    holder = config.handlers.get(case.handler) if case.handler else None
    shown = redact(
        {
            "customer_id": case.customer_id,
            "subject": dict(case.subject),
            "evidence": list(case.evidence),
            "context": case.context,
        },
        holder.redact if holder else [],
    )
    is_open = case.is_open
    return {
        "exception_id": case.exception_id,
        "customer_id": shown["customer_id"],
        "rule": case.rule,
        "kind": case.kind,
        "severity": case.severity,
        "subject": shown["subject"],
        "status": case.status,
        "handler": case.handler if is_open else None,
        "handler_since": rfc3339(case.handler_since) if is_open else None,
        "detected_at": rfc3339(case.detected_at),
        "event_time": rfc3339(case.event_time),
        "due": rfc3339(due(case, config)),
        "sla_missed": sla_missed(case, config, now),
        "resolved_at": rfc3339(case.resolved_at),
        "resolved_by": case.resolved_by,
        "age_s": max(0.0, now - case.detected_at),
        "evidence": shown["evidence"],
        "context": shown["context"],
        "timeline": [_step(s) for s in case.timeline],
    }


def _step(s: Step) -> dict[str, Any]:
    return {
        "at": rfc3339(s.at),
        "step": s.step,
        "handler": s.handler,
        "from": s.from_,
        "reason": s.reason,
        "by": s.by,
        "note": s.note,
    }


def state(case: Case) -> str:
    """noticed, on_it, escalated or resolved: what the customer is told."""
    if case.status == "resolved":
        return "resolved"
    if case.status == "escalated":
        return "escalated"
    return "on_it" if any(s.step in _ACTED for s in case.timeline) else "noticed"


def customer_view(case: Case, config: Config, now: float) -> dict[str, Any]:
    """The case as its customer sees it (CustomerCase). `now` is taken for symmetry with
    `staff_view`; nothing a customer sees depends on it."""
    timeline = _told(case, config)
    resolved = case.status == "resolved"
    return {
        "exception_id": case.exception_id,
        "customer_id": case.customer_id,
        "status": "resolved" if resolved else "open",
        "state": state(case),
        "state_text": _words(config, state(case), case),
        "message": message(case, config),
        "opened_at": rfc3339(case.detected_at),
        "updated_at": timeline[-1]["at"],
        "due": None if resolved else rfc3339(due(case, config)),
        "resolved_at": rfc3339(case.resolved_at),
        "timeline": timeline,
    }


def message(case: Case, config: Config) -> str:
    """The rule's template (or the default one) filled in for people."""
    template = config.cases.messages.get(case.rule, config.cases.default_message)
    routed = next((s.at for s in case.timeline if s.step in _ROUTED), None)
    deadline = due(case, config)
    values = {
        **case.subject,
        "rule": case.rule,
        "detected_at": when(case.detected_at),
        "routed_at": when(routed) if routed is not None else "",
        "due": when(deadline) if deadline is not None else "",
        "resolved_at": when(case.resolved_at) if case.resolved_at is not None else "",
    }
    return fill(template, values)


def _words(config: Config, name: str, case: Case) -> str:
    resolved_on = day(case.resolved_at) if case.resolved_at is not None else ""
    return fill(getattr(config.cases.states, name), {"resolved_on": resolved_on})


def _told(case: Case, config: Config) -> list[dict[str, str]]:
    """The steps a customer is told of, in words: noticed, the first time someone acted,
    each escalation, the resolution."""
    told = [{"at": rfc3339(case.detected_at) or "", "text": _words(config, "noticed", case)}]
    acted = False
    for s in case.timeline:
        if s.step in _ACTED and not acted:
            acted = True
            told.append({"at": rfc3339(s.at) or "", "text": _words(config, "on_it", case)})
        elif s.step in ("escalated", "resolved"):
            name = "escalated" if s.step == "escalated" else "resolved"
            told.append({"at": rfc3339(s.at) or "", "text": _words(config, name, case)})
    return told
