"""The CSR page (pipeline/cases/page.py): what an agent reads about a customer's cases, checked
on the HTML itself and, with the `browser` marker, in Debian's Chromium run headless: the page
served over HTTP, a screenshot taken and the DOM Chromium built read back."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.cases.page import error_page, login_page, render_customer_page, span_text
from tests.browser import (
    HEADER_RGB,
    WINDOW,
    Node,
    chromium_or_skip,
    layout,
    only,
    png_top,
    run_chromium,
    sections,
    tree,
)

T0 = datetime(2026, 3, 2, 22, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


def step(minutes: float, name: str, **fields: Any) -> dict[str, Any]:
    base = {"handler": None, "from": None, "reason": "", "by": None, "note": None}
    return {"at": at(minutes), "step": name, **base, **fields}


def missing_delivery() -> dict[str, Any]:
    """Order o-1 of customer c-1 shipped, promised by 18:00, not delivered by 22:00: routed to
    logistics, acknowledged with a note, escalated to supervisors past logistics' 2h."""
    return {
        "exception_id": "ex-md-o1",
        "customer_id": "c-1",
        "rule": "missing_delivery",
        "kind": "absence",
        "severity": "high",
        "subject": {"order_id": "o-1"},
        "status": "escalated",
        "handler": "supervisors",
        "handler_since": at(121),
        "detected_at": at(0.1),
        "event_time": at(0),
        "due": at(361),
        "sla_missed": True,
        "resolved_at": None,
        "resolved_by": None,
        "age_s": 400 * 60.0,
        "evidence": ["e-ship-o1"],
        "context": {
            "profile": {"name": "Bea Ortiz", "tier": "standard", "region": "north"},
            "recent_events": [
                {"occurred_at": at(-2880), "type": "order.placed", "detail": "o-1, 129.90 EUR",
                 "event_id": "e-place-o1"},
                {"occurred_at": at(-1440), "type": "order.shipped", "detail": "o-1 via DHL",
                 "event_id": "e-ship-o1"},
                {"occurred_at": at(-30), "type": "interaction.contact", "detail": "where is my parcel"},
            ],
            "open_orders": [
                {"order_id": "o-1", "status": "shipped", "value": 129.9, "promised_by": at(-240)}
            ],
            "open_exceptions": [],
        },
        "timeline": [
            step(0.1, "detected", reason="no order.delivered or order.cancelled for o-1 by 4h past promised_by"),
            step(0.2, "routed", handler="logistics", reason="normal"),
            step(70, "acknowledged", by="logistics", note="carrier says the parcel is at the depot"),
            step(121, "escalated", handler="supervisors", **{"from": "logistics"},
                 reason="escalation: open past the resolve_within of logistics (2h)"),
        ],
    }  # fmt: skip


def resolved_contact() -> dict[str, Any]:
    return {
        **missing_delivery(),
        "exception_id": "ex-rc-billing",
        "rule": "repeated_contact",
        "kind": "threshold",
        "severity": "medium",
        "subject": {"category": "billing"},
        "status": "resolved",
        "handler": "service",
        "handler_since": at(-4000),
        "detected_at": at(-4000),
        "event_time": at(-4000),
        "due": at(-3760),
        "sla_missed": False,
        "resolved_at": at(-3900),
        "resolved_by": "service",
        "age_s": 4400 * 60.0,
        "evidence": ["e-c1", "e-c2", "e-c3", "e-c4"],
        "timeline": [
            step(-4000, "detected", reason="4th interaction.contact for billing within 24h"),
            step(-4000, "routed", handler="service", reason="normal"),
            step(-3900, "resolved", by="service", note="refund issued"),
        ],
    }


NOW = epoch(400)
CASES = [resolved_contact(), missing_delivery()]


CASE_LAYOUT = [
    "h3",
    "dl.facts",
    "h4",
    "ol.timeline",
    "p.evidence-ids",
    "details.profile",
    "details.recent-events",
    "details.open-orders",
    "details.open-exceptions",
]


def facts_pair_up(case: Node) -> bool:
    """Each fact a term and its value: an extra or missing <dd> shifts every row after it."""
    tags = [c.tag for c in only(case, "dl", "facts").children if isinstance(c, Node)]
    return len(tags) > 0 and tags == ["dt", "dd"] * (len(tags) // 2)


# -- the HTML ----------------------------------------------------------------------------------


def test_open_cases_come_first_the_one_due_soonest_on_top() -> None:
    later = {**missing_delivery(), "exception_id": "ex-later", "status": "open", "due": at(900)}
    page = tree(render_customer_page("c-1", [*CASES, later], NOW))
    shown = [(s.attrs["id"], s.classes[1]) for s in sections(page)]
    assert shown == [
        ("case-ex-md-o1", "open"),
        ("case-ex-later", "open"),
        ("case-ex-rc-billing", "closed"),
    ]
    headings = [h.text() for h in page.find("h2")]
    assert headings == ["Open cases (2)", "Closed cases (1)"]


def test_a_case_shows_rule_subject_severity_status_handler_age_and_timeline() -> None:
    case = only(tree(render_customer_page("c-1", [missing_delivery()], NOW)), "section")
    assert only(case, cls="rule").text() == "missing_delivery"
    assert only(case, cls="subject").text() == "order_id o-1"
    assert only(case, cls="severity").text() == "high"
    assert only(case, cls="status").text() == "escalated"
    assert only(case, "dd", "handler").text() == "supervisors"
    assert only(case, cls="age").text() == "6 h 40 min"
    assert facts_pair_up(case)
    assert layout(case) == CASE_LAYOUT
    assert [li.attrs["class"] for li in case.find("li")] == [
        "step-detected",
        "step-routed",
        "step-acknowledged",
        "step-escalated",
    ]
    routed, acked, escalated = case.find("li")[1:]
    assert "to logistics" in routed.text()
    assert "carrier says the parcel is at the depot" in only(acked, cls="note").text()
    assert "from logistics to supervisors" in escalated.text()


def test_the_header_names_the_customer_with_the_newest_cases_profile() -> None:
    older = {**resolved_contact(), "context": {"profile": {"name": "Old Name", "tier": "gold"}}}
    page = tree(render_customer_page("c-1", [older, missing_delivery()], NOW))
    header = only(page, "header")
    assert only(header, cls="customer-id").text() == "c-1"
    assert only(header, cls="name").text() == "Bea Ortiz"
    assert only(header, cls="tier").text() == "standard"


@pytest.mark.parametrize(
    ("changes", "words", "cls"),
    [
        ({"due": at(400 + 130)}, "due in 2 h 10 min", "due"),
        ({"due": at(400 - 40)}, "overdue by 40 min", "overdue"),
        ({"due": None}, "no SLA", "none"),
        ({"status": "resolved", "sla_missed": False}, "met", "met"),
        ({"status": "resolved", "sla_missed": True}, "missed", "missed"),
    ],
)
def test_the_sla_clock(changes: dict[str, Any], words: str, cls: str) -> None:
    page = tree(render_customer_page("c-1", [{**missing_delivery(), **changes}], NOW))
    sla = only(page, "dd", "sla")
    assert (sla.text(), sla.classes) == (words, ["sla", cls])


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0, "0 s"), (45, "45 s"), (12 * 60 + 5, "12 min"), (12000, "3 h 20 min"), (187200, "2 d 4 h")],
)
def test_durations_read_as_an_agent_says_them(seconds: float, words: str) -> None:
    assert span_text(seconds) == words


def test_evidence_is_listed_and_marked_in_the_recent_events() -> None:
    case = only(tree(render_customer_page("c-1", [missing_delivery()], NOW)), "section")
    assert [c.text() for c in only(case, cls="evidence-ids").find("code")] == ["e-ship-o1"]
    rows = only(case, "details", "recent-events").find("tr")
    marked = [r.text() for r in rows if "evidence" in r.classes]
    assert len(rows) == 3
    assert len(marked) == 1
    assert "order.shipped" in marked[0]
    assert "evidence" in marked[0]


def test_evidence_events_from_the_view_get_a_block_of_their_own() -> None:
    case = missing_delivery()
    case["context"]["evidence"] = [
        {"event_id": "e-ship-o1", "occurred_at": at(-1440), "type": "order.shipped", "detail": "x"}
    ]
    block = only(tree(render_customer_page("c-1", [case], NOW)), "details", "evidence-events")
    assert only(block, "summary").text() == "Evidence events (1)"
    assert "evidence" in only(block, "tr").classes


def test_every_value_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    case = missing_delivery()
    case["context"]["profile"]["name"] = evil
    case["subject"] = {"order_id": '"><img src=x onerror=alert(1)>'}
    case["exception_id"] = 'x" onmouseover="alert(1)'
    case["timeline"][2]["note"] = "<b>bold</b> & co"
    case["context"]["recent_events"][0]["detail"] = evil
    html = render_customer_page("<c-1>", [case], NOW)
    page = tree(html)
    assert page.find("script") == page.find("img") == page.find("b") == []
    assert "<script>" not in html
    assert only(page, cls="name").text() == evil
    assert only(page, cls="note").text() == "<b>bold</b> & co"
    assert only(page, cls="customer-id").text() == "<c-1>"
    assert "onmouseover" not in only(page, "section").attrs


def test_no_cases_says_so() -> None:
    page = tree(render_customer_page("c-9", [], NOW, days=30))
    assert only(page, "p", "empty").text() == "No cases in the last 30 days."
    assert sections(page) == []
    assert only(page, cls="customer-id").text() == "c-9"
    unspanned = tree(render_customer_page("c-9", [], NOW))
    assert only(unspanned, "p", "empty").text() == "No cases on record."


def test_redacted_values_render_as_redacted() -> None:
    r = "[redacted]"
    case = {**missing_delivery(), "handler": r, "due": r, "evidence": r, "context": r}
    case["timeline"] = [{**case["timeline"][1], "handler": r}, r]
    section = only(tree(render_customer_page("c-1", [case], NOW)), "section")
    assert only(section, "dd", "handler").text() == r
    assert only(section, "dd", "sla").text() == r
    assert only(section, cls="evidence-ids").text() == f"Evidence: {r}"
    assert only(section, cls="context").text() == f"Context: {r}"
    assert "to [redacted]" in section.find("li")[0].text()
    resolved = {**resolved_contact(), "sla_missed": r, "resolved_by": r}
    closed = only(tree(render_customer_page("c-1", [resolved], NOW)), "section")
    assert only(closed, "dd", "sla").text() == r
    assert only(closed, "dd", "resolved").text().endswith(f"by {r}")


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"exception_id": "x", "status": "open"},
        {"status": "resolved", "timeline": [{}], "context": {"recent_events": [{}, "odd"]}},
        {"status": "open", "detected_at": "yesterday", "due": "soon", "age_s": None},
    ],
)
def test_missing_or_odd_fields_do_not_raise(case: dict[str, Any]) -> None:
    assert len(sections(tree(render_customer_page("c-1", [case], NOW)))) == 1


def test_error_page_escapes_its_message() -> None:
    page = tree(error_page(404, "no customer <c-1>"))
    assert only(page, "h1").text() == "404 Not Found"
    assert only(page, "p").text() == "no customer <c-1>"
    assert only(tree(error_page(599, "odd")), "h1").text() == "599 Error"


def test_the_page_module_imports_no_faust_kafka_runtime_or_tools() -> None:
    code = (
        "import sys, pipeline.cases.page; print(sorted(m for m in sys.modules if "
        "m.split('.')[0] in ('faust', 'aiokafka', 'mode', 'jinja2') "
        "or m.startswith(('pipeline.runtime', 'pipeline.tools'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- in Chromium -------------------------------------------------------------------------------


def test_a_missing_chromium_skips_outside_ci_and_fails_in_ci() -> None:
    with pytest.raises(pytest.skip.Exception):
        chromium_or_skip("/nonexistent/chromium", {})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        chromium_or_skip("/nonexistent/chromium", {"CI": "true"})


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page for CASES served over HTTP on 127.0.0.1, on a free port, from a thread."""
    root = tmp_path_factory.mktemp("csr-page")
    (root / "c-1.html").write_text(render_customer_page("c-1", CASES, NOW), encoding="utf-8")
    handler = functools.partial(QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/c-1.html"
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.browser
def test_chromium_screenshot_shows_the_styled_page(page_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    run_chromium(page_url, f"--screenshot={shot}")
    size, rows = png_top(shot.read_bytes(), 240)
    assert size == WINDOW
    pixels = {pixel for row in rows for pixel in row}
    # The header band is drawn (the stylesheet applied) and text is drawn on it and below it:
    # a blank or unstyled page has one or two colours here.
    assert rows[5][0] == bytes(HEADER_RGB)
    assert len(pixels) > 40, f"{len(pixels)} colours in the top {len(rows)} rows"


@pytest.mark.browser
def test_chromium_builds_the_cases_as_written(page_url: str) -> None:
    dom = tree(run_chromium(page_url, "--dump-dom").stdout.decode())
    assert layout(only(dom, "body")) == ["header", "main"]
    assert layout(only(dom, "header")) == ["h1", "p.profile", "p.meta"]
    main = only(dom, "main")
    cases = sections(dom)
    # Chromium repairs broken markup by nesting what follows an unclosed tag: the case
    # sections stay siblings directly under <main> only if the page closes what it opens.
    assert [c.parent for c in cases] == [main, main]
    assert [(c.attrs["id"], c.classes[:2]) for c in cases] == [
        ("case-ex-md-o1", ["case", "open"]),
        ("case-ex-rc-billing", ["case", "closed"]),
    ]
    # Inside a case, an unclosed tag is closed by </section> and swallows its later siblings.
    assert [layout(c) for c in cases] == [CASE_LAYOUT, CASE_LAYOUT]
    assert all(facts_pair_up(c) for c in cases)
    assert all(
        n.tag == "li"
        for c in cases
        for ol in c.find("ol")
        for n in ol.children
        if isinstance(n, Node)
    )
    md = cases[0]
    assert only(md, "dd", "handler").text() == "supervisors"
    assert only(md, "dd", "sla").text() == "overdue by 39 min"
    steps = [(li.attrs["class"], li.text()) for li in only(md, "ol", "timeline").find("li")]
    assert [s for s, _ in steps] == ["step-detected", "step-routed", "step-acknowledged", "step-escalated"]  # fmt: skip
    assert "routed to logistics" in steps[1][1]
    assert "acknowledged by logistics" in steps[2][1]
    assert "carrier says the parcel is at the depot" in steps[2][1]
    assert "escalated from logistics to supervisors" in steps[3][1]
    assert only(dom, "header").find(cls="name")[0].text() == "Bea Ortiz"


def test_the_sign_in_form_posts_the_token_and_escapes_where_it_returns() -> None:
    html = login_page('/cases/customer/"><script>x</script>', failed=True)
    assert '<form method="post" action="/cases/login">' in html
    assert 'name="token"' in html
    assert "<script>x" not in html
    assert "not a staff token" in html


def test_a_closed_case_names_who_held_it_last() -> None:
    case = {
        "exception_id": "a" * 32,
        "status": "resolved",
        "handler": None,
        "timeline": [
            {"step": "routed", "handler": "vip"},
            {"step": "escalated", "handler": "supervisors", "from": "vip"},
            {"step": "resolved", "handler": None, "by": "supervisors"},
        ],
    }
    page = tree(render_customer_page("c-1", [case], NOW))
    assert only(page, "dd", "handler").text() == "supervisors (until it closed)"


def test_a_resolution_reads_once() -> None:
    case = {
        "exception_id": "b" * 32,
        "status": "resolved",
        "timeline": [
            {"at": at(1), "step": "routed", "handler": "vip", "reason": "normal"},
            {
                "at": at(2),
                "step": "resolved",
                "handler": "vip",
                "by": "vip",
                "reason": "resolved by vip",
                "note": "done",
            },
        ],
    }
    page = tree(render_customer_page("c-1", [case], NOW))
    steps = [li.text() for li in only(page, "ol", "timeline").find("li")]
    assert steps[0].endswith("routed to vip (normal)")
    assert steps[1].endswith("resolved by vip done")
