"""What `casewatch replay --against` shows: a config change's effect as tables (rich, as
`casewatch report` prints them). The comparison: pipeline/tools/backtest/cases.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.tools.backtest.cases import (
    APPEAR,
    DISAPPEAR,
    ESCALATION,
    HANDLER,
    KINDS,
    SEVERITY,
    STATUS,
    TIME,
    Change,
    Diff,
)

EXAMPLES = 3  # per kind of change
RULE_COLUMNS = ["rule", "old", "new", APPEAR, DISAPPEAR, HANDLER, SEVERITY, STATUS, TIME]
HANDLER_COLUMNS = ["handler", "old", "new", APPEAR, DISAPPEAR, "moved_in", "moved_out"]
ESCALATION_COLUMNS = ["handler", "escalated_old", "escalated_new"]
EXAMPLE_COLUMNS = ["change", "rule", "exception", "customer", "subject", "old -> new"]
RULE_NOTE = (
    "exceptions under each config, and what changes: the same exception is the same "
    "exception_id, or else the same rule, customer and subject in event-time order"
)
HANDLER_NOTE = (
    "by the handler(s) an exception's open record went to (overflow included); moved: to or "
    "from another handler"
)
ESCALATION_NOTE = (
    "SLA escalations, apart: they depend on timing, and a replay has no handler resolutions"
)


@dataclass(frozen=True)
class Names:
    """What was compared: the events file and the two configs, as the user named them."""

    events: str
    new: str
    old: str


def headline(diff: Diff) -> str:
    """One line: the totals."""
    counts = ", ".join(f"{diff.count(k)} {k}" for k in KINDS if k != ESCALATION)
    return (
        f"exceptions: {len(diff.old.cases)} old, {len(diff.new.cases)} new; changes: {counts}; "
        f"escalation changes (apart): {diff.count(ESCALATION)}"
    )


def print_diff(diff: Diff, names: Names, console: Console) -> None:
    """The diff as rich tables on a terminal, plain aligned text otherwise."""
    console.print(Text(f"Casewatch backtest: {names.new} against {names.old}", style="bold"))
    summary = diff.new.summary
    console.print(Text(f"input: {names.events} ({summary.lines} lines, {summary.events} events)"))
    rules = "; ".join(f"{k}: {', '.join(v)}" for k, v in diff.rules.items() if v)
    console.print(Text(f"rules {rules}" if rules else "rules: no rule's config differs"))
    console.print(Text(headline(diff)))
    if not diff.changed:
        console.print(Text("no change: every exception is the same under both configs"))
        return
    by_rule, by_handler = diff.by_rule(), diff.by_handler()
    _table(console, "Changes by rule", _rows(by_rule, RULE_COLUMNS), RULE_NOTE)
    _table(console, "Changes by handler", _rows(by_handler, HANDLER_COLUMNS), HANDLER_NOTE)
    _table(console, "Escalations", _rows(by_handler, ESCALATION_COLUMNS), ESCALATION_NOTE)
    _table(console, "Examples", [EXAMPLE_COLUMNS, *examples(diff.changes)])


def examples(changes: list[Change]) -> list[list[str]]:
    """A few changes of each kind, as table rows."""
    shown: Counter[str] = Counter()
    rows = []
    for change in changes:
        if shown[change.kind] >= EXAMPLES:
            continue
        shown[change.kind] += 1
        c = change.case
        subject = ", ".join(f"{k}={v}" for k, v in sorted(c.subject.items())) or "-"
        before, after = change.before_after()
        rows.append(
            [change.kind, c.rule, c.exception_id, c.customer_id, subject, f"{before} -> {after}"]
        )
    return rows


def _rows(counts: dict[str, Counter[str]], columns: list[str]) -> list[list[str]]:
    """The header (its labels with spaces), then a row per name with any count in `columns`."""
    rows = [[name, *(str(c[k]) for k in columns[1:])] for name, c in counts.items()]
    return [
        [label.replace("_", " ") for label in columns],
        *(row for row in rows if any(n != "0" for n in row[1:])),
    ]


def _table(console: Console, title: str, rows: list[list[str]], note: str = "") -> None:
    """A table under its title: `rows[0]` is the header; nothing when there are no rows."""
    if len(rows) < 2:
        return
    frame = box.SIMPLE_HEAD if console.is_terminal else None
    t = Table(*rows[0], title=title, caption=note or None, box=frame)
    t.title_justify = t.caption_justify = "left"
    for row in rows[1:]:
        t.add_row(*map(Text, row))
    console.line()
    console.print(t)
