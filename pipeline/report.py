"""`casewatch report`: what recurs in the exception log, and how fast it gets resolved.

Recurring exceptions reveal process gaps: one rule firing again and again for the same asset,
category or customer, an exception reopened after it was resolved, a handler missing its SLA.

    casewatch report                              the config's topics.exceptions, on Kafka
    casewatch report --topic casewatch.handler.vip --topic casewatch.handler.logistics
    casewatch report replayed.jsonl --html report.html --top 5

Files are JSON lines of exception records (what `casewatch replay` writes); an invalid line is
reported as FILE:LINE and skipped. Topics are read from their beginning up to the end offsets
taken at start, with no consumer group (nothing is committed). Delivery is at least once, so a
record may come twice: records are de-duplicated by exception_id and status (and handler: a
reassignment republishes an exception, its status unchanged, to another handler).

`--html FILE` also writes a self-contained page: inline CSS and SVG, no scripts, every value
taken from records escaped. Exit codes: 0 done, 1 the input cannot be read or holds no
exception records, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from html import escape
from typing import IO, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.config import Runtime, load_config
from pipeline.errors import CasewatchError
from pipeline.handle import age_text
from pipeline.models import ExceptionRecord

EXIT_FAILED, EXIT_USAGE = 1, 2
PLAIN_WIDTH = 200  # piped output
_CATEGORY_TYPES = ("interaction.contact", "interaction.complaint")  # their `detail` is a category
_BREACHED = re.compile(r"resolve_within of (\S+) \(")  # in an escalation's route.reason
Key: TypeAlias = tuple[str, str, str]  # rule, customer, subject without event_id
Bar: TypeAlias = tuple[str, tuple[float, ...], str]  # label, values drawn in order, text
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


class ReportError(CasewatchError):
    """The input cannot be read: a topic that is not there."""


# ---- input ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """The exception records read, in input order, and what they were read from."""

    records: list[ExceptionRecord]
    source: str
    invalid: int = 0


def parse(data: bytes) -> ExceptionRecord:
    """One exception record; a `ValueError` saying what is wrong otherwise."""
    try:
        return ExceptionRecord.model_validate(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise ValueError(f"not an exception record: {where}: {first['msg']}") from None


def read_files(paths: Sequence[str], errors: IO[str]) -> Loaded:
    """Every record in the files; an invalid line is reported as FILE:LINE and counted."""
    records: list[ExceptionRecord] = []
    invalid, described = 0, []
    for path in paths:
        with open(path, "rb") as file:
            number = 0
            for number, line in enumerate(file, start=1):
                try:
                    if line.strip():
                        records.append(parse(line))
                except ValueError as exc:
                    invalid += 1
                    print(f"{path}:{number}: skipped: {exc}", file=errors)
        described.append(f"{path} ({number} lines)")
    return Loaded(records, "file " + ", ".join(described), invalid)


async def read_topics(bootstrap: str, topics: Sequence[str], errors: IO[str]) -> Loaded:
    """Every record on the topics up to their end offsets at start, with no consumer group."""
    parts = await _partitions(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await consumer.start()
    records: list[ExceptionRecord] = []
    invalid = messages = 0
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        while pending := [p for p in parts if await consumer.position(p) < ends[p]]:
            for tp, batch in (await consumer.getmany(*pending, timeout_ms=500)).items():
                for m in (m for m in batch if m.offset < ends[tp]):
                    messages += 1
                    try:
                        records.append(parse(m.value or b"null"))
                    except ValueError as exc:
                        invalid += 1
                        print(f"{tp.topic}:{tp.partition}:{m.offset}: skipped: {exc}", file=errors)
    finally:
        await consumer.stop()
    return Loaded(
        records, f"Kafka {', '.join(topics)} at {bootstrap} ({messages} messages)", invalid
    )


async def _partitions(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="casewatch-report",
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = {d["topic"]: d["partitions"] for d in described if d["error_code"] == 0}
    if missing := [t for t in topics if not found.get(t)]:
        raise ReportError(f"topic {', '.join(missing)} does not exist on Kafka at {bootstrap}")
    return [TopicPartition(t, p["partition"]) for t in topics for p in found[t]]


# ---- analysis (pure) -----------------------------------------------------------------------


def dedupe(records: Iterable[ExceptionRecord]) -> tuple[list[ExceptionRecord], int]:
    """The records without repeats of (exception_id, status, handler), keeping the one with the
    earliest `detected_at`; and how many were dropped."""
    kept: dict[tuple[str, str, str], ExceptionRecord] = {}
    records = list(records)
    for r in records:
        key = (r.exception_id, r.status, _handler(r))
        if key not in kept or r.detected_at < kept[key].detected_at:
            kept[key] = r
    return list(kept.values()), len(records) - len(kept)


@dataclass(frozen=True)
class Case:
    """One exception: its records in `detected_at` order, duplicates removed."""

    records: tuple[ExceptionRecord, ...]

    @property
    def first(self) -> ExceptionRecord:
        return self.records[0]

    @property
    def opened(self) -> datetime:
        """`detected_at` of its first open record (of its first record, if none was read)."""
        return next((r for r in self.records if r.status == "open"), self.first).detected_at

    @property
    def resolved(self) -> ExceptionRecord | None:
        return next((r for r in self.records if r.status == "resolved"), None)

    @property
    def current(self) -> ExceptionRecord:
        """Resolved once a record says so (resolution is final); otherwise the latest."""
        return self.resolved or self.records[-1]

    @property
    def key(self) -> Key:
        """What recurs: rule, customer and subject (without a match rule's event_id)."""
        subject = sorted((k, v) for k, v in self.first.subject.items() if k != "event_id")
        return self.first.rule, self.first.customer_id, ",".join(f"{k}={v}" for k, v in subject)


def cases(records: Iterable[ExceptionRecord]) -> list[Case]:
    """The (de-duplicated) records grouped by exception_id."""
    grouped: dict[str, list[ExceptionRecord]] = defaultdict(list)
    for r in records:
        grouped[r.exception_id].append(r)
    return [Case(tuple(sorted(rs, key=lambda r: r.detected_at))) for rs in grouped.values()]


def category(case: Case) -> tuple[str, bool] | None:
    """The category and whether it was inferred: subject.category, else the category of the
    customer's newest recent contact or complaint in the exception's context."""
    if found := case.first.subject.get("category"):
        return found, False
    recent = case.first.context.get("recent_events")
    entries = [e for e in recent if isinstance(e, dict)] if isinstance(recent, list) else []
    usable = [e for e in entries if e.get("type") in _CATEGORY_TYPES and e.get("detail")]
    if not usable:
        return None
    return str(max(usable, key=lambda e: str(e.get("occurred_at", "")))["detail"]), True


@dataclass(frozen=True)
class Ranked:
    """One row of a top-N table."""

    name: str
    exceptions: int
    spread: int  # how many customers (how many rules, for a customer)
    still_open: int
    detail: str


def rank(
    all_cases: Sequence[Case],
    key: Callable[[Case], str | None],
    detail: Callable[[list[Case]], str],
    top: int,
    spread: Callable[[Case], str] = lambda c: c.first.customer_id,
) -> list[Ranked]:
    """The `top` values of `key` by number of exceptions, ties by name; a None key is left out."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for c in all_cases:
        if (k := key(c)) is not None:
            groups[k].append(c)
    rows = [
        Ranked(
            name,
            len(cs),
            len({spread(c) for c in cs}),
            sum(c.current.status != "resolved" for c in cs),
            detail(cs),
        )
        for name, cs in groups.items()
    ]
    return sorted(rows, key=lambda r: (-r.exceptions, r.name))[:top]


def most(field: Callable[[Case], str]) -> Callable[[list[Case]], str]:
    """A detail column: the most frequent value of `field`, with its count."""
    return lambda cs: "{} ({})".format(*Counter(map(field, cs)).most_common(1)[0])


@dataclass(frozen=True)
class Recurrence:
    """Per (rule, customer, subject) key: repeats, and reopens (an exception opened for the key
    after an earlier one for it was resolved)."""

    keys: int
    repeated: int  # keys with more than one exception
    resolved_keys: int  # keys resolved at least once
    reopens: int
    worst: list[tuple[Key, int, int]]  # repeated keys, most reopens first: key, exceptions, reopens

    @property
    def reopen_rate(self) -> float:
        return self.reopens / self.resolved_keys if self.resolved_keys else 0.0

    @property
    def repeat_rate(self) -> float:
        return self.repeated / self.keys if self.keys else 0.0


def recurrence(all_cases: Sequence[Case], top: int) -> Recurrence:
    """Reopens and repeats over every key."""
    by_key: dict[Key, list[Case]] = defaultdict(list)
    for c in all_cases:
        by_key[c.key].append(c)
    rows: list[tuple[Key, int, int]] = []
    for key, cs in by_key.items():
        reopens, first_resolved = 0, None
        for c in sorted(cs, key=lambda c: c.opened):
            reopens += first_resolved is not None and first_resolved <= c.opened
            if (done := c.resolved) and (
                first_resolved is None or done.detected_at < first_resolved
            ):
                first_resolved = done.detected_at
        rows.append((key, len(cs), reopens if first_resolved else -1))  # -1: never resolved
    worst = sorted((r for r in rows if r[1] > 1), key=lambda r: (-r[2], -r[1], r[0]))
    return Recurrence(
        keys=len(rows),
        repeated=sum(r[1] > 1 for r in rows),
        resolved_keys=sum(r[2] >= 0 for r in rows),
        reopens=sum(max(0, r[2]) for r in rows),
        worst=[(k, n, max(0, reopens)) for k, n, reopens in worst[:top]],
    )


@dataclass(frozen=True)
class HandlerRow:
    """Per handler: resolution times, SLA escalations, what it holds open now."""

    handler: str
    times: list[timedelta]  # first open -> resolved, for the exceptions it resolved
    breached: int  # escalated away from it: open past its resolve_within
    received: int  # escalated to it
    still_open: int  # held now, escalated ones included
    escalated_open: int

    def stat(self, q: float) -> timedelta | None:
        """Of the resolution times: the median for q=0.5, else the q-quantile (nearest rank)."""
        t, n = sorted(self.times), len(self.times)
        if not t:
            return None
        if q == 0.5 and n % 2 == 0:
            return (t[n // 2 - 1] + t[n // 2]) / 2
        return t[max(0, math.ceil(q * n) - 1)]

    def cells(self) -> list[str]:
        took = [_took(self.stat(q)) for q in (0.5, 0.9, 1)]
        held = f"{self.still_open} ({self.escalated_open} escalated)"
        return [
            self.handler,
            str(len(self.times)),
            *took,
            str(self.breached),
            str(self.received),
            held,
        ]

    def bar(self) -> Bar:
        """p90 (drawn first, light) and median."""
        median, p90 = self.stat(0.5), self.stat(0.9)
        return (
            self.handler,
            (_hours(p90), _hours(median)),
            f"median {_took(median)}, p90 {_took(p90)}",
        )


def handlers(all_cases: Sequence[Case]) -> list[HandlerRow]:
    """One row per handler seen, the slowest median resolution first."""
    times: dict[str, list[timedelta]] = defaultdict(list)
    n: dict[str, Counter[str]] = defaultdict(Counter)
    for c in all_cases:
        # Resolution time needs the open record: the input may start after it.
        if (done := c.resolved) and c.first.status == "open":
            times[_handler(done)].append(done.detected_at - c.opened)
        for before, r in zip(c.records, c.records[1:], strict=False):
            if r.status == "escalated":
                missed = _BREACHED.search(r.route.reason if r.route else "")
                n[missed.group(1) if missed else _handler(before)]["breached"] += 1
                n[_handler(r)]["received"] += 1
        if (now := c.current).status != "resolved":
            n[_handler(now)]["open"] += 1
            n[_handler(now)]["escalated"] += now.status == "escalated"
    fields = ("breached", "received", "open", "escalated")
    rows = [HandlerRow(h, times[h], *(n[h][f] for f in fields)) for h in sorted({*times, *n})]
    return sorted(rows, key=lambda r: -(r.stat(0.5) or timedelta(-1)).total_seconds())


def _handler(r: ExceptionRecord) -> str:
    return r.route.handler if r.route else "-"


@dataclass(frozen=True)
class Report:
    """Everything the report shows, computed when first asked for."""

    loaded: Loaded
    records: list[ExceptionRecord]  # de-duplicated
    duplicates: int
    cases: list[Case]
    top: int

    @cached_property
    def span(self) -> str:
        """The date range covered (detected_at), in UTC."""
        times = [r.detected_at.astimezone(UTC) for r in self.records]
        return f"{min(times):%Y-%m-%d %H:%M} to {max(times):%Y-%m-%d %H:%M} UTC"

    @cached_property
    def rules(self) -> list[Ranked]:
        return rank(self.cases, lambda c: c.first.rule, most(lambda c: _handler(c.first)), self.top)

    @cached_property
    def assets(self) -> list[Ranked]:
        return rank(self.cases, lambda c: c.first.subject.get("asset_id"), _top_rule, self.top)

    @cached_property
    def categories(self) -> list[Ranked]:
        def detail(cs: list[Case]) -> str:
            inferred = sum(bool((found := category(c)) and found[1]) for c in cs)
            return _top_rule(cs) + (f"; {inferred} from recent events" if inferred else "")

        return rank(self.cases, lambda c: (found := category(c)) and found[0], detail, self.top)

    @cached_property
    def customers(self) -> list[Ranked]:
        def detail(cs: list[Case]) -> str:
            records = sorted((r for c in cs for r in c.records), key=lambda r: r.detected_at)
            profiles = [p for r in records if isinstance(p := r.context.get("profile"), dict)]
            known = [str(v) for k in ("tier", "name") if profiles and (v := profiles[-1].get(k))]
            return "; ".join([", ".join(known), _top_rule(cs)] if known else [_top_rule(cs)])

        by_customer, by_rule = (lambda c: c.first.customer_id), (lambda c: c.first.rule)
        return rank(self.cases, by_customer, detail, self.top, by_rule)

    @cached_property
    def recurrence(self) -> Recurrence:
        return recurrence(self.cases, self.top)

    @cached_property
    def handlers(self) -> list[HandlerRow]:
        return handlers(self.cases)


_top_rule = most(lambda c: c.first.rule)


def analyse(loaded: Loaded, top: int = 10) -> Report:
    """The report on what was loaded (at least one record)."""
    records, duplicates = dedupe(loaded.records)
    return Report(loaded, records, duplicates, cases(records), top)


# ---- output --------------------------------------------------------------------------------


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


def _took(t: timedelta | None) -> str:
    return "-" if t is None else age_text(t)


def _hours(t: timedelta | None) -> float:
    return 0.0 if t is None else t.total_seconds() / 3600


# ---- the command ---------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `casewatch report`."""
    p = sub.add_parser(
        "report",
        help="recurring exceptions, reopens, resolution times and SLA by handler",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="JSON lines of exception records")
    p.add_argument(
        "--topic",
        action="append",
        help="a topic to read (repeatable; default when "
        "no FILE is given: the config's topics.exceptions)",
    )
    p.add_argument("--config", help="config file (default: CASEWATCH_CONFIG or built-in)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    p.add_argument("--top", type=_positive, default=10, help="rows per top table (default 10)")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows, 1 or more")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """`casewatch report`; returns the exit code (see the module docstring)."""
    if args.files and args.topic:
        return _fail("give FILEs or --topic, not both", EXIT_USAGE)
    bootstrap = Runtime.from_env().bootstrap_servers
    # aiokafka logs each failed connection; with no logging configured, Python's last-resort
    # handler would print them above our one line. A configured root still gets them.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        if args.files:
            loaded = read_files(args.files, sys.stderr)
        else:
            topics = args.topic or [_config_topic(args.config)]
            loaded = asyncio.run(read_topics(bootstrap, topics, sys.stderr))
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}", EXIT_FAILED)
    except ReportError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KafkaConnectionError:
        fix = (
            "start the local broker (deploy/kafka/local-kafka start) or set KAFKA_BOOTSTRAP_SERVERS"
        )
        return _fail(f"cannot reach Kafka at {bootstrap}: {fix}", EXIT_FAILED)
    except KafkaError as exc:
        return _fail(f"Kafka at {bootstrap}: {exc}", EXIT_FAILED)
    if not loaded.records:
        return _fail(f"no exception records in {loaded.source}", EXIT_FAILED)
    report = analyse(loaded, args.top)
    print_report(report, Console(width=None if sys.stdout.isatty() else PLAIN_WIDTH))
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as out:
                out.write(render_html(report))
        except OSError as exc:
            return _fail(f"{args.html}: {exc.strerror}", EXIT_FAILED)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _config_topic(path: str | None) -> str:
    return load_config(path or Runtime.from_env().config_path).topics.exceptions


def _fail(message: str, code: int) -> int:
    print(f"casewatch: report: {message}", file=sys.stderr)
    return code
