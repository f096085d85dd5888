"""`casewatch handle HANDLER`: the reference handler app, the one handler teams copy.

It reads the handler's topic from the beginning with no consumer group (nothing is committed,
so every run sees every exception), folds each exception's updates into its current state and
shows the exceptions newest first. The handler answers with a `Resolution` on the resolutions
topic, keyed by the exception's customer like everything else about that customer.

    casewatch handle logistics                live view; type a command and Enter (below)
    casewatch handle logistics --once         print the table once and exit (plain when piped)
    casewatch handle logistics --resolve 3f2a9c --note "refund sent"

Live commands: `a N` acknowledge, `r N [note]` resolve, `x N [note]` reassign, `q` quit (so
does the end of input or Ctrl-C). N is a row number (the # column) or an exception_id prefix.
A row keeps the number it got when first seen, so a row arriving as you type cannot change what
`r 3` points at; commands typed before the first read has caught up wait for it.

Resolved exceptions are left out of the table by default; `--all` shows them, dimmed.
Exit codes: 0 done, 1 an unknown or ambiguous id (or Kafka trouble), 2 an unknown handler or
bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from pipeline.config import Config, Runtime, load_config
from pipeline.core import models
from pipeline.core.errors import HandleError
from pipeline.core.models import ExceptionRecord, ResolutionStatus
from pipeline.runtime.access import explain
from pipeline.tools.handle.cases import (
    Case,
    customer,
    encode,
    fold,
    lookup,
    newest_first,
    parse_command,
    resolution,
    table,
)
from pipeline.tools.handle.kafka import collect, follow, publish, resolutions_producer

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
USAGE = "type a N (acknowledge), r N [note] (resolve), x N [note] (reassign) or q (quit)"
PLAIN_WIDTH = 320  # piped output: one line per row, for grep
REFRESH_SECONDS = 15.0  # ages move on even when nothing arrives
_NOTE = TypeAdapter(models.Text)  # a Resolution's note


# ---- the live view -------------------------------------------------------------------------

# What the live view waits on: a batch read (with whether it has caught up), a typed line, or
# the reader's failure.
_Item: TypeAlias = tuple[list[ExceptionRecord], bool] | str | Exception


class Desk:
    """The live view's state: the exceptions read so far and the lines waiting for them."""

    def __init__(self, config: Config, handler: str, show_resolved: bool) -> None:
        self.handler, self.show_resolved = handler, show_resolved
        self.topic = config.handler_topic(handler)
        self.resolutions = config.topics.resolutions
        self.within = config.handlers[handler].resolve_within
        self.cases: dict[str, Case] = {}
        self.ready = False
        self.waiting: list[str] = []
        self.status = f"reading {self.topic} ..."

    def view(self, now: datetime) -> Group:
        """The table, the last thing that happened, and the commands."""
        title = f"{self.handler} · {self.topic}"
        rows = newest_first(self.cases, self.show_resolved, self.handler)
        shown = table(rows, now, title, self.within, self.handler)
        return Group(shown, Text(self.status), Text(USAGE, "dim"))

    def take(self, item: _Item) -> list[str]:
        """Fold in what arrived; return the typed lines that can run now (none before the
        first read has caught up, so `r 3` cannot point at a row not yet read)."""
        if isinstance(item, Exception):
            raise item
        if isinstance(item, str):
            self.waiting.append(item)
        else:
            self.cases = fold(item[0], self.cases)
            if item[1] and not self.ready:
                self.ready, self.status = True, f"caught up with {self.topic}"
        if not self.ready:
            return []
        lines, self.waiting = self.waiting, []
        return lines

    async def command(self, line: str, producer: Any, console: Console) -> bool:
        """Run one typed line; False when it says quit."""
        if not line.strip():
            return True
        try:
            command = parse_command(line)
            if command.status is None:
                return False
            shown = newest_first(self.cases, self.show_resolved, self.handler)
            case = lookup(self.cases, command.ref, self.topic, shown)
            answer = resolution(case.record, self.handler, command.status, _now(), command.note)
        except (ValueError, HandleError) as exc:  # a pydantic ValidationError is a ValueError
            self.status = str(exc)
            console.print(Text(self.status, "red"))
            return True
        await publish(producer, self.resolutions, case.record, answer)
        self.status = f"{answer.status} #{case.number} {case.record.exception_id[:8]}"
        console.print(
            Text(f"{self.status} for {customer(case.record)}: published {encode(answer).decode()}")
        )
        return True

    async def run(self, inbox: asyncio.Queue[_Item], producer: Any, screen: Live) -> int:
        """Until `q`: fold in records, run commands, redraw."""
        going = True
        while going:
            try:
                lines = self.take(await asyncio.wait_for(inbox.get(), REFRESH_SECONDS))
            except TimeoutError:
                lines = []
            for line in lines:
                if not await self.command(line, producer, screen.console):
                    going = False
                    break
            screen.update(self.view(_now()), refresh=True)  # the last one stays on screen
        return 0


def _read_stdin(loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[_Item]) -> None:
    # A daemon thread, not run_in_executor: a blocked read must not hold up the exit.
    def read() -> None:
        for line in itertools.chain(sys.stdin, ["q"]):  # the end of input quits
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, line)
            except RuntimeError:  # the loop has closed: the app is gone
                return

    threading.Thread(target=read, name="casewatch-stdin", daemon=True).start()


async def _pump(bootstrap: str, topic: str, inbox: asyncio.Queue[_Item]) -> None:
    try:
        async for batch in follow(bootstrap, topic):
            inbox.put_nowait(batch)
    except Exception as exc:  # the view raises it: a reader that died must not look idle
        inbox.put_nowait(exc)


async def live(config: Config, handler: str, bootstrap: str, show_resolved: bool) -> int:
    """The live view: the table redrawn as records arrive, commands read from stdin."""
    desk = Desk(config, handler, show_resolved)
    inbox: asyncio.Queue[_Item] = asyncio.Queue()
    _read_stdin(asyncio.get_running_loop(), inbox)
    producer = resolutions_producer(bootstrap)
    await producer.start()
    reader = asyncio.create_task(_pump(bootstrap, desk.topic, inbox))
    screen = Live(desk.view(_now()), console=_console(), auto_refresh=False)
    try:
        with screen:
            return await desk.run(inbox, producer, screen)
    finally:
        if not screen.console.is_terminal:
            screen.console.line()  # rich ends the last line on a terminal only
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()


# ---- one-shot ------------------------------------------------------------------------------


async def print_once(config: Config, handler: str, bootstrap: str, show_resolved: bool) -> int:
    """Print the table of everything on the handler's topic now, once."""
    topic = config.handler_topic(handler)
    cases = await collect(bootstrap, topic)
    resolved = sum(c.record.status == "resolved" for c in cases.values())
    passed = sum(c.handed_on(handler) is not None for c in cases.values())
    title = (
        f"{handler} · {topic} · {len(cases) - resolved - passed} open, {passed} handed on, "
        f"{resolved} resolved"
    )
    if resolved + passed and not show_resolved:
        title += " (hidden: --all shows them)"
    shown = newest_first(cases, show_resolved, handler)
    within = config.handlers[handler].resolve_within
    _console().print(table(shown, _now(), title, within, handler))
    return 0


async def one_shot(
    config: Config,
    handler: str,
    bootstrap: str,
    status: ResolutionStatus,
    ref: str,
    note: str | None,
) -> int:
    """Publish one Resolution for the exception `ref` names, and print it."""
    topic = config.handler_topic(handler)
    case = lookup(await collect(bootstrap, topic), ref, topic)
    reply = resolution(case.record, handler, status, _now(), note)
    producer = resolutions_producer(bootstrap)
    await producer.start()
    try:
        await publish(producer, config.topics.resolutions, case.record, reply)
    finally:
        await producer.stop()
    key = case.record.customer_id
    print(f"published to {config.topics.resolutions} (key {key}): {encode(reply).decode()}")
    return 0


# ---- the command ---------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `casewatch handle`."""
    p = sub.add_parser(
        "handle",
        help="the reference handler app: see a handler's exceptions and answer them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("handler", help="a handler named in the config's `handlers`")
    p.add_argument(
        "--config", default=None, help="config file (default: CASEWATCH_CONFIG or built-in)"
    )
    p.add_argument(
        "--all", dest="show_resolved", action="store_true", help="show resolved ones, dimmed"
    )
    one = p.add_mutually_exclusive_group()
    one.add_argument("--once", action="store_true", help="print the table once and exit")
    for flag, verb in (
        ("--ack", "acknowledge"),
        ("--resolve", "resolve"),
        ("--reassign", "reassign"),
    ):
        one.add_argument(flag, metavar="ID", help=f"{verb} ID (an exception_id or a unique prefix)")
    p.add_argument(
        "--note", type=_note, default=None, help="a note with --ack/--resolve/--reassign"
    )
    p.set_defaults(func=run)


def _note(text: str) -> str:
    try:
        return _NOTE.validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"is {len(text)} characters: keep it shorter") from None


def run(args: argparse.Namespace) -> int:
    """`casewatch handle`; returns the exit code (see the module docstring)."""
    runtime = Runtime.from_env()
    config = load_config(args.config or runtime.config_path)
    if args.handler not in config.handlers:
        names = ", ".join(config.handlers)
        return _fail(
            f"unknown handler {args.handler!r}: the configured ones are {names}", EXIT_USAGE
        )
    acts: list[tuple[ResolutionStatus, str | None]] = [
        ("acknowledged", args.ack),
        ("resolved", args.resolve),
        ("reassigned", args.reassign),
    ]
    act: tuple[ResolutionStatus, str] | None = next(
        ((status, ref) for status, ref in acts if ref is not None), None
    )
    if args.note is not None and act is None:
        return _fail("--note goes with --ack, --resolve or --reassign", EXIT_USAGE)
    try:
        return asyncio.run(_main(args, config, runtime.bootstrap_servers, act))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except HandleError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KafkaError as exc:
        why = explain(exc, runtime.bootstrap_servers, runtime.security)
        return _fail(why or f"Kafka at {runtime.bootstrap_servers}: {exc}", EXIT_FAILED)


async def _main(
    args: argparse.Namespace,
    config: Config,
    bootstrap: str,
    act: tuple[ResolutionStatus, str] | None,
) -> int:
    if act is not None:
        return await one_shot(config, args.handler, bootstrap, *act, args.note)
    mode = print_once if args.once else live
    return await mode(config, args.handler, bootstrap, args.show_resolved)


def _fail(message: str, code: int) -> int:
    print(f"casewatch: handle: {message}", file=sys.stderr)
    return code


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else PLAIN_WIDTH)


def _now() -> datetime:
    return datetime.now(UTC)
