"""`casewatch replay EVENTS --config NEW --against OLD`: what a config change does, before it ships.

The same events are replayed under both configs (`Replay`, the live pipeline's logic), and the
exceptions found are compared (pipeline/tools/backtest/cases.py says when two are the same): which
appear, which disappear, and which go to another handler, get another severity, end in another
status or escalate differently; per rule and per handler, with a few examples of each.

The tables go to stdout; `--json` prints the diff as JSON instead, `--out FILE` writes it there.
Exit codes: 0 done, changes or not; 3 with `--fail-on-change` when anything changed (to gate a
rules repository in CI); 1 when the events file has invalid lines (reported as FILE:LINE once,
skipped under both configs); 2 bad input (either config, a path), before anything runs.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import IO

import orjson
from rich.console import Console

from pipeline.config import Config
from pipeline.tools.backtest.cases import Diff, compare, replay, rule_changes
from pipeline.tools.backtest.output import Names, headline, print_diff

EXIT_INVALID, EXIT_CHANGED = 1, 3
PLAIN_WIDTH = 200  # piped output


def backtest(
    path: str, new: Config, old: Config, until: datetime | None, errors: IO[str] = sys.stderr
) -> Diff:
    """Replay `path` under both configs and compare. Invalid lines are reported once: they are
    the same lines under both."""
    end = until.timestamp() if until else None
    new_run = replay(new, path, end, errors)
    with open(os.devnull, "w") as quiet:
        old_run = replay(old, path, end, quiet)
    diff = compare(old_run, new_run)
    diff.rules = rule_changes(old, new)
    return diff


def command(
    names: Names,
    new: Config,
    old: Config,
    until: datetime | None,
    out: str | None = None,
    as_json: bool = False,
    fail_on_change: bool = False,
) -> int:
    """`casewatch replay --against`: print (or write) the diff; the exit code."""
    diff = backtest(names.events, new, old, until)
    data = orjson.dumps(
        {"events": names.events, "new": names.new, "old": names.old, **diff.json()},
        option=orjson.OPT_INDENT_2,
    )
    if out:
        with open(out, "wb") as file:
            file.write(data + b"\n")
    if as_json:
        sys.stdout.buffer.write(data + b"\n")
        print(f"backtest: {headline(diff)}", file=sys.stderr)
    else:
        print_diff(diff, names, _Console(width=None if sys.stdout.isatty() else PLAIN_WIDTH))
    if diff.new.summary.invalid:
        return EXIT_INVALID
    return EXIT_CHANGED if fail_on_change and diff.changed else 0


class _Console(Console):
    """Leaves a closed stdout (`| head`) to `casewatch`'s own handling, exit 141 as for every
    command: rich's default exits 1, the code of an environment failure."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
