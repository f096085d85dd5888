"""The CSR page: a customer's cases as one HTML document, for a contact-centre agent.

Input is a list of staff views (pipeline/cases/views.py), one dict a case. Open and escalated
cases come first, the one due soonest on top; closed ones follow, newest first. Each case shows
its rule, subject, severity, status, handler, age, SLA clock, timeline, evidence and the context
the handler saw. Plain server-rendered HTML with inline CSS: no scripts, no external resources,
no template engine. Every value from a view goes through `html.escape`; a value may be
"[redacted]" (handler redaction) or missing, and renders as such.

Stable hooks for tests and stylesheets: `<main>` holds one `<section class="case open|closed"
id="case-<exception_id>">` per case as direct children; inside, `.status`, `.handler`, `.age`,
`.sla`, `ol.timeline li`, `.evidence-ids code`, and `tr.evidence` in the recent events for those
that are evidence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from html import escape
from http import HTTPStatus
from typing import Any

from pipeline.core.durations import age_text

REDACTED = "[redacted]"
OPEN = ("open", "escalated")

_CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#1f3b5a;color:#fff;padding:.8em 1.5em}header h1{margin:0;font-size:1.5em}
header p{margin:.2em 0}main{padding:.5em 1.5em 2em;max-width:1100px}
h2{font-size:1.15em;margin:1.2em 0 .4em;color:#34495e}
.case{background:#fff;border:1px solid #d5dbe1;border-left:6px solid #3b73b9;border-radius:6px;
padding:.6em 1em;margin:.7em 0}.case.closed{border-left-color:#9aa5b1;opacity:.92}
.case.escalated{border-left-color:#c0392b}.case h3{margin:.1em 0 .4em;font-size:1.1em}
.badge{display:inline-block;border-radius:3px;padding:0 .45em;font-size:.8em;
text-transform:uppercase;letter-spacing:.03em;vertical-align:middle;background:#e3e8ee}
.status.open{background:#d6e6fa;color:#1d4f91}.status.escalated{background:#c0392b;color:#fff}
.status.resolved{background:#dfe6dc;color:#355e2b}.sev-critical,.sev-high{background:#f6d5d1}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:.3em 0}
dt{color:#5d6d7e}dd{margin:0}.sla.overdue,.sla.missed{color:#c0392b;font-weight:600}
.sla.due,.sla.met{color:#2e7d32}ol.timeline{margin:.3em 0;padding-left:1.6em}
ol.timeline .step{font-weight:600}.note{font-style:italic}time{color:#5d6d7e}
code{background:#eef1f4;padding:0 .25em;border-radius:3px}details{margin:.25em 0}
summary{cursor:pointer;color:#1d4f91}table{border-collapse:collapse;margin:.3em 0}
th,td{padding:.15em .6em;text-align:left;border-bottom:1px solid #eee;vertical-align:top}
tr.evidence{background:#fff4d6}.mark{font-weight:600;color:#8a5a00}.redacted{color:#7f8c8d}
.empty{font-size:1.1em;color:#5d6d7e}"""


def render_customer_page(
    customer_id: str,
    cases: list[dict[str, Any]],
    now: float,
    *,
    title: str = "Casewatch",
    days: int | None = None,
) -> str:
    """The whole page for one customer; `now` (epoch seconds) sets the SLA clocks. `days` is
    the span the list covers, named when the list is empty."""
    open_ = sorted((c for c in cases if c.get("status") in OPEN), key=_urgency)
    closed = sorted((c for c in cases if c.get("status") not in OPEN), key=_recency)
    if not cases:
        span = f"in the last {days} days" if days is not None else "on record"
        body = f'<p class="empty" id="no-cases">No cases {escape(span)}.</p>'
    else:
        body = (
            f'<h2 id="open-cases">Open cases ({len(open_)})</h2>'
            + ("".join(_case(c, now) for c in open_) or '<p class="empty">None open.</p>')
            + f'<h2 id="closed-cases">Closed cases ({len(closed)})</h2>'
            + ("".join(_case(c, now) for c in closed) or '<p class="empty">None closed.</p>')
        )
    head = f"{title}: customer {customer_id}"
    return _document(head, _header(customer_id, cases, now) + f"<main>{body}</main>")


def error_page(status: int, message: str) -> str:
    """A small page for an HTTP error: the status, its phrase and the message."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    head = f"{status} {phrase}"
    return _document(
        head, f'<main class="error"><h1>{escape(head)}</h1><p>{escape(message)}</p></main>'
    )


def login_page(back: str, *, failed: bool = False) -> str:
    """The CSR page's sign-in: a form that posts a staff token to /cases/login, which keeps it
    in a cookie and returns to `back` (a browser cannot send a bearer header by itself)."""
    note = '<p class="failed">That token is not a staff token.</p>' if failed else ""
    form = (
        '<form method="post" action="/cases/login">'
        f'<input type="hidden" name="next" value="{escape(back)}">'
        '<label>Staff token <input type="password" name="token" autocomplete="current-password"'
        " required></label> <button>Sign in</button></form>"
    )
    return _document(
        "Sign in",
        f'<main class="error"><h1>Sign in to see cases</h1>{note}{form}</main>',
    )


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _header(customer_id: str, cases: list[dict[str, Any]], now: float) -> str:
    profile = _profile(cases)
    about = []
    if isinstance(profile, Mapping):
        if "name" in profile:
            about.append(f'<span class="name">{_val(profile["name"])}</span>')
        if "tier" in profile:
            about.append(f'tier <span class="tier">{_val(profile["tier"])}</span>')
    elif profile == REDACTED:
        about.append(f"profile {_val(profile)}")
    counts = f"{sum(c.get('status') in OPEN for c in cases)} open, {len(cases)} in all"
    return (
        f'<header id="customer"><h1>Customer <span class="customer-id">{escape(customer_id)}'
        f'</span></h1><p class="profile">{" &middot; ".join(about) or "no profile"}</p>'
        f'<p class="meta">{escape(counts)} &middot; as of {escape(_clock(now))}</p></header>'
    )


def _profile(cases: list[dict[str, Any]]) -> Any:
    """The profile in the newest case's context (newest by detection time)."""
    newest = max(cases, key=lambda c: _ts(c.get("detected_at")) or 0.0, default=None)
    context = newest.get("context") if newest else None
    return context.get("profile") if isinstance(context, Mapping) else context


def _urgency(case: dict[str, Any]) -> tuple[float, float]:
    due = _ts(case.get("due"))
    return (due if due is not None else float("inf"), _ts(case.get("detected_at")) or 0.0)


def _recency(case: dict[str, Any]) -> float:
    return -(_ts(case.get("resolved_at")) or _ts(case.get("detected_at")) or 0.0)


def _case(case: dict[str, Any], now: float) -> str:
    status = case.get("status")
    state = "open" if status in OPEN else "closed"
    cls = f"case {state} {_token(status)}"
    ident = _token(case.get("exception_id"))
    title = (
        f'<span class="rule">{_val(case.get("rule"))}</span> '
        f'<span class="subject">{_val(case.get("subject"))}</span> '
        f'<span class="badge severity sev-{_token(case.get("severity"))}">'
        f"{_val(case.get('severity'))}</span> "
        f'<span class="badge status {_token(status)}">{_val(status)}</span>'
    )
    return (
        f'<section class="{cls}" id="case-{ident}"><h3>{title}</h3>{_facts(case, now)}'
        f"{_timeline(case.get('timeline'))}{_evidence_ids(case.get('evidence'))}"
        f"{_context(case.get('context'), case.get('evidence'))}</section>"
    )


def _facts(case: dict[str, Any], now: float) -> str:
    since = case.get("handler_since")
    holder = case.get("handler")
    if holder is None:  # closed: who held it last, from its timeline
        steps = case.get("timeline")
        held = [
            s["handler"]
            for s in (steps if isinstance(steps, list) else [])
            if isinstance(s, Mapping) and isinstance(s.get("handler"), str)
        ]
        if held:
            holder = f"{held[-1]} (until it closed)"
    rows = [("handler", f'<dd class="handler">{_val(holder)}</dd>')]
    if since is not None:
        rows.append(("since", f'<dd class="handler-since">{_time(since)}</dd>'))
    rows += [
        ("age", f'<dd class="age">{_age(case, now)}</dd>'),
        ("SLA", _sla(case, now)),
        ("detected", f"<dd>{_time(case.get('detected_at'))}</dd>"),
        (
            "exception",
            f'<dd class="exception-id"><code>{_val(case.get("exception_id"))}</code></dd>',
        ),
    ]
    if case.get("status") not in OPEN:
        resolved = f"{_time(case.get('resolved_at'))} by {_val(case.get('resolved_by'))}"
        rows.append(("resolved", f'<dd class="resolved">{resolved}</dd>'))
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt>{v}" for k, v in rows) + "</dl>"


def _age(case: dict[str, Any], now: float) -> str:
    age = case.get("age_s")
    if age == REDACTED:
        return _val(age)
    if not isinstance(age, int | float) or isinstance(age, bool):
        detected = _ts(case.get("detected_at"))
        age = None if detected is None else now - detected
    return "&mdash;" if age is None else escape(span_text(age))


def _sla(case: dict[str, Any], now: float) -> str:
    """The SLA clock: for an open case the time left or past, for a closed one met or missed."""
    if case.get("status") in OPEN:
        due = case.get("due")
        stamp = _ts(due)
        if due == REDACTED or (due is not None and stamp is None):
            cls, words = "sla", _val(due)
        elif stamp is None:
            cls, words = "sla none", "no SLA"
        elif stamp >= now:
            cls, words = "sla due", f"due in {escape(span_text(stamp - now))}"
        else:
            cls, words = "sla overdue", f"overdue by {escape(span_text(now - stamp))}"
    else:
        missed = case.get("sla_missed")
        if missed == REDACTED:
            cls, words = "sla", _val(missed)
        else:
            cls, words = ("sla missed", "missed") if missed else ("sla met", "met")
    return f'<dd class="{cls}">{words}</dd>'


def _timeline(steps: Any) -> str:
    if not isinstance(steps, list):
        return f'<p class="timeline">Timeline: {_val(steps)}</p>'
    items = "".join(_step(s) for s in steps if isinstance(s, Mapping))
    return f'<h4>Timeline</h4><ol class="timeline">{items}</ol>'


def _step(step: Mapping[str, Any]) -> str:
    name = step.get("step")
    parts = [_time(step.get("at")), f'<span class="step">{_val(name)}</span>']
    moved = name not in ("resolved", "acknowledged") or step.get("by") is None
    for key, word in (("from", "from"), ("handler", "to"), ("by", "by")):
        if step.get(key) is not None and (key != "handler" or moved):
            parts.append(f'{word} <span class="{key}">{_val(step[key])}</span>')
    reason = step.get("reason")
    if reason and reason != f"{name} by {step.get('by')}":  # said already
        parts.append(f'<span class="reason">({_val(reason)})</span>')
    if step.get("note"):
        parts.append(f'<q class="note">{_val(step["note"])}</q>')
    return f'<li class="step-{_token(step.get("step"))}">{" ".join(parts)}</li>'


def _evidence_ids(ids: Any) -> str:
    if isinstance(ids, list):
        shown = " ".join(f"<code>{_val(i)}</code>" for i in ids) or "none"
    else:
        shown = _val(ids)
    return f'<p class="evidence-ids">Evidence: {shown}</p>'


def _context(context: Any, evidence: Any) -> str:
    if not isinstance(context, Mapping):
        return f'<p class="context">Context: {_val(context)}</p>'
    marked = {str(i) for i in evidence} if isinstance(evidence, list) else set()
    event_row = partial(_event_row, evidence=marked)
    blocks = [
        ("profile", "Profile", context.get("profile"), None),
        ("evidence-events", "Evidence events", context.get("evidence"), event_row),
        ("recent-events", "Recent events", context.get("recent_events"), event_row),
        ("open-orders", "Open orders", context.get("open_orders"), _mapping_row),
        ("open-exceptions", "Other open exceptions", context.get("open_exceptions"), _mapping_row),
    ]
    return "".join(
        _block(cls, label, value, row)
        for cls, label, value, row in blocks
        if not (cls == "evidence-events" and value is None)
    )


def _block(cls: str, label: str, value: Any, row: Callable[[Any], str] | None) -> str:
    """A collapsible block: a list as a table (a row per item), anything else as one value."""
    if isinstance(value, list) and row is not None:
        inner = "<table>" + "".join(row(v) for v in value) + "</table>" if value else "none"
        label = f"{label} ({len(value)})"
    elif isinstance(value, Mapping):
        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{_val(v)}</td></tr>" for k, v in value.items()
        )
        inner = f'<table class="fields">{rows}</table>'
    else:
        inner = _val(value)
    return f'<details class="{cls}"><summary>{escape(label)}</summary>{inner}</details>'


def _event_row(event: Any, evidence: set[str]) -> str:
    if not isinstance(event, Mapping):
        return f"<tr><td>{_val(event)}</td></tr>"
    is_evidence = "event_id" in event and str(event["event_id"]) in evidence
    mark = '<span class="mark">evidence</span>' if is_evidence else ""
    row = '<tr class="evidence">' if is_evidence else "<tr>"
    return (
        f"{row}<td>{_time(event.get('occurred_at'))}</td>"
        f"<td>{_val(event.get('type'))}</td><td>{_val(event.get('detail'))}</td>"
        f"<td>{_val(event.get('event_id', ''))}</td><td>{mark}</td></tr>"
    )


def _mapping_row(item: Any) -> str:
    if not isinstance(item, Mapping):
        return f"<tr><td>{_val(item)}</td></tr>"
    return (
        "<tr>" + "".join(f"<td>{escape(str(k))}: {_val(v)}</td>" for k, v in item.items()) + "</tr>"
    )


def span_text(seconds: float) -> str:
    """A duration as an agent says it: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    return age_text(timedelta(seconds=seconds), spoken=True)


def _dt(value: Any) -> datetime | None:
    """An RFC 3339 time in UTC; None when missing, redacted or unreadable."""
    if not isinstance(value, str) or value == REDACTED:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ts(value: Any) -> float | None:
    parsed = _dt(value)
    return parsed.timestamp() if parsed else None


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _time(value: Any) -> str:
    if isinstance(value, str):
        return _time_text(value)
    return _val(value) if value is not None else "&mdash;"


@lru_cache(maxsize=8192)  # a case's times come again with every page that shows it
def _time_text(value: str) -> str:
    parsed = _dt(value)
    if parsed is None:
        return _val(value)
    shown = parsed.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{escape(value)}">{shown}</time>'


def _val(value: Any) -> str:
    """Any view value as escaped text; a redaction is marked, a mapping reads `key value`."""
    if value is None:
        return "&mdash;"
    if value == REDACTED:
        return f'<span class="redacted">{escape(REDACTED)}</span>'
    if isinstance(value, Mapping):
        return ", ".join(f"{escape(str(k))} {_val(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_val(v) for v in value)
    return escape(str(value))


def _token(value: Any) -> str:
    """A value made safe for a class name or an id: no spaces, no markup."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", str(value)) if value is not None else "none"
