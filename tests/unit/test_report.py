"""`casewatch report` without a broker: what recurs, what reopens, how fast handlers resolve,
and the terminal and HTML output a person reads."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from pipeline.core.models import ExceptionRecord
from pipeline.tools.report import cases as report_cases
from pipeline.tools.report import output as report_output
from pipeline.tools.report import report
from pipeline.tools.report.cases import Loaded, analyse
from tests.integration import scenario

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
ROUTES = {
    "missing_delivery": "logistics",
    "repeat_maintenance": "maintenance",
    "complaint_cluster": "retention",
    "delivery_failed": "logistics",
}
SUBJECTS = {
    "missing_delivery": {"order_id": "o-1"},
    "repeat_maintenance": {"asset_id": "unit-1/faucet"},
    "complaint_cluster": {},
    "delivery_failed": {"order_id": "o-1", "event_id": "e-1"},
}


def rec(
    exception_id: str,
    status: str = "open",
    hours: float = 0,
    rule: str = "missing_delivery",
    customer: str = "c-1",
    handler: str | None = None,
    reason: str = "normal",
    **fields: Any,
) -> ExceptionRecord:
    at = T0 + timedelta(hours=hours)
    return ExceptionRecord.model_validate(
        {
            "exception_id": exception_id,
            "rule": rule,
            "kind": "absence",
            "status": status,
            "severity": "high",
            "customer_id": customer,
            "subject": SUBJECTS[rule],
            "event_time": at,
            "detected_at": at,
            "evidence": ["e-1"],
            "route": {"handler": handler or ROUTES[rule], "path": "root", "reason": reason},
            "rule_version": "v1",
        }
        | fields
    )


def build(*records: ExceptionRecord, top: int = 10) -> report_cases.Report:
    return analyse(Loaded(list(records), "test input"), top)


def escalated(exception_id: str, hours: float, **fields: Any) -> ExceptionRecord:
    why = "escalation: open past the resolve_within of logistics (8h)"
    return rec(exception_id, "escalated", hours, handler="supervisors", reason=why, **fields)


def text(r: report_cases.Report, terminal: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=220, force_terminal=terminal, color_system=None)
    report_output.print_report(r, console)
    return out.getvalue()


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with `first_cell`."""
    found = [
        re.split(r"\s{2,}", line.strip())
        for line in output.splitlines()
        if line.strip().startswith(first_cell + " ")
    ]
    assert found, output
    return found[0]


# ---- analysis ------------------------------------------------------------------------------


def test_rules_assets_and_customers_are_ranked_by_exceptions_ties_by_name() -> None:
    r = build(
        *(rec(f"m{i}", customer=f"c-{i % 2}", rule="repeat_maintenance") for i in range(3)),
        rec("d1", customer="c-9"),
        rec("f1", customer="c-9", rule="delivery_failed"),
        rec("f2", customer="c-8", rule="delivery_failed"),
    )
    assert [(x.name, x.exceptions, x.spread) for x in r.rules] == [
        ("repeat_maintenance", 3, 2),
        ("delivery_failed", 2, 2),
        ("missing_delivery", 1, 1),
    ]
    assert [(x.name, x.exceptions, x.detail) for x in r.assets] == [
        ("unit-1/faucet", 3, "repeat_maintenance (3)")
    ]
    # c-9 has two exceptions of two rules; c-0 two of one
    assert [(x.name, x.exceptions, x.spread) for x in r.customers][:2] == [
        ("c-0", 2, 1),
        ("c-9", 2, 2),
    ]
    assert [
        x.name for x in build(*(rec(f"m{i}", customer=f"c-{i}") for i in range(5)), top=2).customers
    ] == ["c-0", "c-1"]


def test_category_comes_from_the_subject_else_the_newest_recent_contact() -> None:
    recent = [
        {
            "occurred_at": "2026-02-27T10:00:00Z",
            "type": "interaction.complaint",
            "detail": "billing",
        },
        {"occurred_at": "2026-02-28T10:00:00Z", "type": "interaction.contact", "detail": "noise"},
        # newer, but its detail is an asset, not a category
        {
            "occurred_at": "2026-03-01T08:00:00Z",
            "type": "interaction.maintenance_requested",
            "detail": "unit-1/boiler",
        },
    ]
    r = build(
        rec("k1", rule="complaint_cluster", context={"recent_events": recent}),
        rec("k2", rule="complaint_cluster", customer="c-2", context={"recent_events": recent}),
        rec("k3", rule="complaint_cluster", customer="c-3", subject={"category": "noise"}),
        rec("k4", rule="complaint_cluster", customer="c-4"),  # no context: no category
    )
    assert report_cases.category(report_cases.cases([r.records[0]])[0]) == ("noise", True)
    assert [(x.name, x.exceptions, x.detail) for x in r.categories] == [
        ("noise", 3, "complaint_cluster (3); 2 from recent events")
    ]


def test_a_reopen_is_an_exception_opened_after_an_earlier_one_for_the_same_key_was_resolved() -> (
    None
):
    r = build(
        # key 1: resolved at 2h, opened again at 3h and at 5h -> 2 reopens
        rec("a1", hours=0),
        rec("a1", "resolved", hours=2),
        rec("a2", hours=3),
        rec("a3", hours=5),
        # key 2 (a match rule: its event_id is not part of the key): the second opened before
        # the first was resolved -> repeated, not reopened
        rec("b1", hours=0, rule="delivery_failed", customer="c-2"),
        rec(
            "b2",
            hours=1,
            rule="delivery_failed",
            customer="c-2",
            subject={"order_id": "o-1", "event_id": "e-2"},
        ),
        rec("b1", "resolved", hours=2, rule="delivery_failed", customer="c-2"),
        # key 3: one exception, never resolved
        rec("c1", hours=0, customer="c-3"),
    )
    rec_ = r.recurrence
    assert (rec_.keys, rec_.repeated, rec_.resolved_keys, rec_.reopens) == (3, 2, 2, 2)
    assert (rec_.reopen_rate, round(rec_.repeat_rate, 2)) == (1.0, 0.67)
    assert rec_.worst == [
        (("missing_delivery", "c-1", "order_id=o-1"), 3, 2),
        (("delivery_failed", "c-2", "order_id=o-1"), 2, 0),
    ]


def test_resolution_time_by_handler_from_first_open_to_resolved() -> None:
    r = build(
        *(
            x
            for i, took in enumerate((1, 2, 10, 3, 2))
            for x in (rec(f"r{i}", hours=i), rec(f"r{i}", "resolved", hours=i + took))
        ),
        # escalated away from logistics, resolved by supervisors 9h after it opened
        rec("s1", hours=0, customer="c-2"),
        escalated("s1", 8, customer="c-2"),
        rec("s1", "resolved", 9, customer="c-2", handler="supervisors"),
        # still open: one escalated, one not
        rec("o1", hours=0, customer="c-3"),
        escalated("o1", 8, customer="c-3"),
        rec("o2", hours=0, customer="c-4"),
        # resolved, but its open record is not in the input: no time
        rec("x1", "resolved", hours=4, customer="c-5"),
    )
    rows = {h.handler: h for h in r.handlers}
    logistics, supervisors = rows["logistics"], rows["supervisors"]
    assert len(logistics.times) == 5
    assert [logistics.stat(q) for q in (0.5, 0.9, 1)] == [timedelta(hours=h) for h in (2, 10, 10)]
    assert (supervisors.times, supervisors.stat(0.5)) == ([timedelta(hours=9)], timedelta(hours=9))
    assert (logistics.breached, logistics.received, logistics.still_open) == (2, 0, 1)
    assert (supervisors.breached, supervisors.received) == (0, 2)
    assert (supervisors.still_open, supervisors.escalated_open) == (1, 1)
    assert [h.handler for h in r.handlers][:2] == ["supervisors", "logistics"]  # slowest first
    even = build(
        *(
            x
            for i, took in enumerate((1, 2))
            for x in (rec(f"e{i}"), rec(f"e{i}", "resolved", took))
        )
    )
    assert even.handlers[0].stat(0.5) == timedelta(hours=1.5)


def test_repeated_records_are_dropped_and_counted_the_earliest_kept() -> None:
    first = rec("a1", hours=0)
    again = rec("a1", hours=0.5)  # the same record re-emitted after a restart
    moved = rec("a1", hours=1, handler="supervisors", reason="reassigned by logistics")
    kept, dropped = report_cases.dedupe([first, again, first, moved])
    assert (kept, dropped) == ([first, moved], 2)
    r = build(first, again, first, moved)
    assert (len(r.cases), len(r.records), r.duplicates) == (1, 2, 2)
    assert ("duplicates dropped", "2") in report_output.figures(r)
    assert {h.handler: h.still_open for h in r.handlers} == {"supervisors": 1}


def test_invalid_lines_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    good = orjson.dumps(rec("a1").model_dump(mode="json"))
    file = tmp_path / "log.jsonl"
    file.write_bytes(b"\n".join([good, b"{not json", b"", b'{"exception_id": "x"}', good]) + b"\n")
    errors = io.StringIO()
    loaded = report.read_files([str(file)], errors)
    assert (len(loaded.records), loaded.invalid) == (2, 2)
    lines = errors.getvalue().splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{file}:2", f"{file}:4"]
    assert "not JSON" in lines[0]
    assert "rule: Field required" in lines[1]


# ---- output --------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>'


def sample() -> report_cases.Report:
    profile = {"tier": "gold", "name": HOSTILE}
    return build(
        rec("a1", hours=0, context={"profile": profile}),
        rec("a1", "resolved", hours=2),
        rec("a1", "resolved", hours=2.5),  # a duplicate
        rec("a2", hours=3),
        rec(
            "m1",
            hours=1,
            rule="repeat_maintenance",
            customer="c-2",
            subject={"asset_id": "<b>unit</b>"},
        ),
        rec(
            "m2",
            hours=1,
            rule="repeat_maintenance",
            customer="c-3",
            subject={"asset_id": "<b>unit</b>"},
        ),
        rec(
            "m3",
            hours=1,
            rule="repeat_maintenance",
            customer="c-3",
            subject={"asset_id": "<b>unit</b>"},
        ),
    )


def test_terminal_report_shows_the_key_figures_and_tables() -> None:
    out = text(sample())
    assert "Casewatch report: 2026-03-01 09:00 to 2026-03-01 12:00 UTC" in out
    assert "input: test input" in out
    for figure in (
        "exceptions: 5",
        "duplicates dropped: 1",
        "reopen rate (1 / 1 keys resolved): 100%",
    ):
        assert figure in out
    assert row(out, "repeat_maintenance") == [
        "repeat_maintenance",
        "3",
        "2",
        "3",
        "maintenance (3)",
    ]
    assert row(out, "<b>unit</b>")[:3] == ["<b>unit</b>", "3", "2"]
    assert row(out, "c-1") == ["c-1", "2", "1", "1", f"gold, {HOSTILE}; missing_delivery (2)"]
    assert row(out, "logistics")[:5] == ["logistics", "1", "2h00m", "2h00m", "2h00m"]
    assert "─" not in out  # piped: plain text, no box drawing


def test_on_a_terminal_the_tables_are_drawn_and_record_text_is_not_markup() -> None:
    r = build(rec("a1", context={"profile": {"name": "[bold red]Ana[/]"}}))
    out = text(r, terminal=True)
    assert "─" in out
    assert "[bold red]Ana[/]" in out


class Checker(HTMLParser):
    """Tags must nest and close; collects tags, attributes and text."""

    VOID = {"meta", "br", "rect"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1:] == [tag], f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_well_formed_escaped_and_has_charts() -> None:
    page = report_output.render_html(sample())
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert "script" not in checker.tags  # the customer's name stayed text
    assert HOSTILE in "".join(checker.text)
    assert "<b>unit</b>" in "".join(checker.text)
    assert "<b>unit" not in page
    assert not {name for name, _ in checker.attrs} & {"src", "href", "onload", "onclick"}
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * page.count(
        "<svg"
    )
    # bar charts: rules, assets, categories (none here), customers, handlers
    assert page.count("<svg") == 4
    assert "<title>repeat_maintenance: 3</title>" in page
    assert "<title>logistics: median 2h00m, p90 2h00m</title>" in page
    assert "2026-03-01 09:00 to 2026-03-01 12:00 UTC" in page


def test_the_longest_bar_is_the_top_row() -> None:
    page = report_output.render_html(sample())
    chart = page.split("<h2>Top recurring rules</h2>")[1].split("</svg>")[0]
    widths = [float(w) for w in re.findall(r'<rect class="s1" [^>]*width="([\d.]+)"', chart)]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] > widths[-1] > 0


# ---- the command ---------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="casewatch")
    report.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    code: int = args.func(args)
    return code


def test_the_command_prints_the_report_and_writes_the_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(
        b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in sample().records)
    )
    page = tmp_path / "report.html"
    assert cli(str(log), "--html", str(page), "--top", "1") == 0
    out, err = capsys.readouterr()
    assert f"input: file {log} (6 lines)" in out
    assert row(out, "repeat_maintenance")[1] == "3"
    rules = out.split("Top recurring rules")[1].split("Top assets")[0]
    assert "missing_delivery" not in rules  # --top 1
    assert err == f"wrote {page}\n"
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["{missing}"], 1, "casewatch: report: {missing}: No such file or directory\n"),
        (["{empty}"], 1, "casewatch: report: no exception records in file {empty} (1 lines)\n"),
        (["{empty}", "--topic", "t"], 2, "casewatch: report: give FILEs or --topic, not both\n"),
    ],
)
def test_unreadable_or_empty_input_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    paths = {"missing": tmp_path / "nope.jsonl", "empty": tmp_path / "empty.jsonl"}
    paths["empty"].write_text("\n")
    assert cli(*(a.format(**paths) for a in argv)) == code
    assert capsys.readouterr().err == message.format(**paths)


def test_top_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("x.jsonl", "--top", "0")
    assert exit_.value.code == 2
    assert "'0' is not a whole number of rows, 1 or more" in capsys.readouterr().err


# ---- end to end: replay's output is the report's input --------------------------------------


def test_the_report_on_a_replayed_scenario_names_what_the_scenario_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = scenario.now()
    events = scenario.write(tmp_path / "events.jsonl", scenario.build(now))
    log = tmp_path / "exceptions.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "replay",
            str(events),
            "--until",
            now.isoformat(),
            "--out",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert cli(str(log)) == 0
    out = capsys.readouterr().out
    # three lost or late parcels (c-lost, c-late, c-nopromise); one each of the other rules
    assert row(out, "missing_delivery") == ["missing_delivery", "3", "3", "2", "logistics (2)"]
    assert [
        row(out, rule)[1]
        for rule in (
            "complaint_cluster",
            "delivery_failed",
            "repeat_maintenance",
            "repeated_contact",
        )
    ] == ["1"] * 4
    assert row(out, "unit-12/kitchen-faucet") == [
        "unit-12/kitchen-faucet",
        "1",
        "1",
        "1",
        "repeat_maintenance (1)",
    ]
    assert row(out, "internet/no-service")[-1] == "repeated_contact (1)"
    assert row(out, "neighbours/noise")[-1] == "complaint_cluster (1); 1 from recent events"
    assert row(out, "c-lost")[-1] == "gold, Ana; missing_delivery (1)"
    # logistics missed its 8h on c-late, c-nopromise and c-failed, vip its 2h on c-lost; the
    # late delivery closed c-late while supervisors held it
    assert row(out, "logistics")[5:7] == ["3", "0"]
    assert row(out, "vip")[5:7] == ["1", "0"]
    assert row(out, "supervisors")[1] == "1"
    assert row(out, "supervisors")[5:] == [
        "0",
        "4",
        "3 (3 escalated)",
    ]
    assert (
        "exceptions: 7, records: 12, duplicates dropped: 0, invalid skipped: 0, open now: 6" in out
    )


def test_an_unreachable_broker_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # refused at once, locally
    assert cli("--topic", "casewatch.exceptions") == 1
    assert capsys.readouterr().err == (
        "casewatch: report: cannot reach Kafka at 127.0.0.1:1: start the local broker "
        "(deploy/kafka/local-kafka start) or set KAFKA_BOOTSTRAP_SERVERS\n"
    )
