"""What `casewatch report` shows: its sections as tables (rich, for the terminal or a pipe)
and as a self-contained HTML page (inline CSS and SVG bars, no scripts, every value taken from
records escaped). The analysis: pipeline/tools/report/cases.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.tools.report.cases import Bar, Ranked, Report

HANDLER_COLUMNS = [
    "handler",
    "resolved",
    "median",
    "p90",
    "max",
    "missed SLA",
    "escalated to it",
    "open now",
]
HANDLER_NOTE = (
    "resolution time: from the first open record to the resolved record, whose handler it "
    "counts for; missed SLA: escalated away from it. Chart: median (dark), p90 (light)."
)
REOPEN_COLUMNS = ["rule", "customer", "subject", "exceptions", "reopens"]
REOPEN_NOTE = (
    "a reopen: an exception opened for the same rule, customer and subject (a match rule's "
    "event_id aside) after an earlier one for them was resolved"
)
CATEGORY_NOTE = (
    "subject.category; when the subject has none, the category of the customer's newest recent "
    "contact or complaint in the exception's context (counted as 'from recent events')"
)


@dataclass(frozen=True)
class Section:
    """A table of the report, and the bars of its chart."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    bars: Sequence[Bar] = ()


def figures(report: Report) -> list[tuple[str, str]]:
    """The key figures, as (what, value)."""
    rec = report.recurrence
    return [
        ("exceptions", str(len(report.cases))),
        ("records", str(len(report.records))),
        ("duplicates dropped", str(report.duplicates)),
        ("invalid skipped", str(report.loaded.invalid)),
        ("open now", str(sum(h.still_open for h in report.handlers))),
        (
            f"reopen rate ({rec.reopens} / {rec.resolved_keys} keys resolved)",
            f"{rec.reopen_rate:.0%}",
        ),
        (f"repeat rate ({rec.repeated} / {rec.keys} keys)", f"{rec.repeat_rate:.0%}"),
    ]


def sections(report: Report) -> list[Section]:
    """The report's tables, in the order shown."""
    hs, worst = report.handlers, report.recurrence.worst
    return [
        _top("Top recurring rules", "rule|customers|mostly routed to", report.rules),
        _top("Top assets", "asset|customers|top rule", report.assets, "from subject.asset_id"),
        _top("Top categories", "category|customers|top rule", report.categories, CATEGORY_NOTE),
        _top("Top customers", "customer|rules|profile; top rule", report.customers),
        Section(
            "Reopened and repeated",
            REOPEN_COLUMNS,
            [[*k, str(n), str(r)] for k, n, r in worst],
            REOPEN_NOTE,
        ),
        Section(
            "Handlers",
            HANDLER_COLUMNS,
            [h.cells() for h in hs],
            HANDLER_NOTE,
            [h.bar() for h in hs if h.times],
        ),
    ]


def _top(title: str, columns: str, rows: list[Ranked], note: str = "") -> Section:
    """A top-N table; `columns` names the key, spread and detail columns: `rule|customers|..`."""
    what, spread, detail = columns.split("|")
    cells = [[r.name, str(r.exceptions), str(r.spread), str(r.still_open), r.detail] for r in rows]
    bars = [(r.name, (float(r.exceptions),), str(r.exceptions)) for r in rows]
    return Section(title, [what, "exceptions", spread, "open now", detail], cells, note, bars)


def print_report(report: Report, console: Console) -> None:
    """The report as rich tables on a terminal, plain aligned text otherwise."""
    console.print(Text(f"Casewatch report: {report.span}", style="bold"))
    console.print(Text(f"input: {report.loaded.source}"))
    console.print(Text(", ".join(f"{k}: {v}" for k, v in figures(report))))
    for s in sections(report):
        frame = box.SIMPLE_HEAD if console.is_terminal else None
        t = Table(*s.headers, title=s.title, caption=s.note or None, box=frame)
        t.title_justify = t.caption_justify = "left"
        for row in s.rows or [["none", *[""] * (len(s.headers) - 1)]]:
            t.add_row(*map(Text, row))
        console.line()
        console.print(t)


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
.meta,.note{color:#555}.figs{display:flex;flex-wrap:wrap;gap:.6em}
.fig{border:1px solid #ddd;border-radius:6px;padding:.4em .8em}.fig b{display:block;font-size:1.4em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .7em;text-align:left;
border-bottom:1px solid #eee}svg text{font-size:12px}.s0{fill:#b9cde5}.s1{fill:#35609a}"""


def render_html(report: Report) -> str:
    """A self-contained page: inline CSS and SVG, no scripts; every value escaped."""
    figs = "".join(
        f'<div class="fig"><b>{escape(v)}</b>{escape(k)}</div>' for k, v in figures(report)
    )
    body = "".join(_section_html(s) for s in sections(report))
    span, source = escape(report.span), escape(report.loaded.source)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Casewatch report: '
        f"{span}</title><style>{_CSS}</style></head><body><h1>Casewatch report</h1>"
        f'<p class="meta">{span}<br>input: {source}</p><div class="figs">{figs}</div>{body}'
        "</body></html>\n"
    )


def _section_html(s: Section) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in s.headers)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in s.rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    note = f'<p class="note">{escape(s.note)}</p>' if s.note else ""
    chart = _svg(s.title, s.bars) if s.bars else ""
    table = table if s.rows else "<p>none</p>"
    return f"<section><h2>{escape(s.title)}</h2>{chart}{table}{note}</section>"


def _svg(title: str, bars: Sequence[Bar]) -> str:
    """Horizontal bars, a row per label; a row's values are drawn over each other, the last
    darkest (so the larger goes first)."""
    label_w, bar_w, row_h = 230, 420, 22
    scale = bar_w / (max(v for _, values, _ in bars for v in values) or 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 190}" '
        f'height="{row_h * len(bars)}" role="img" aria-label="{escape(title)}">'
    ]
    for i, (label, values, text) in enumerate(bars):
        y, short = i * row_h, label if len(label) <= 32 else label[:31] + "\u2026"
        out.append(
            f"<g><title>{escape(label)}: {escape(text)}</title>"
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(short)}</text>'
        )
        for j, v in enumerate(values):
            out.append(
                f'<rect class="s{int(j == len(values) - 1)}" x="{label_w}" y="{y + 3}" '
                f'width="{v * scale:.1f}" height="16"/>'
            )
        end = label_w + max(values) * scale + 6
        out.append(f'<text x="{end:.1f}" y="{y + 15}">{escape(text)}</text></g>')
    return "".join(out) + "</svg>"
