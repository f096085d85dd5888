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
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from pydantic import TypeAdapter, ValidationError
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline import models
from pipeline.config import Config, Runtime, load_config
from pipeline.errors import CasewatchError
from pipeline.models import ExceptionRecord, Resolution, ResolutionStatus
from pipeline.security import explain

log = logging.getLogger(__name__)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
ACTIONS: dict[str, ResolutionStatus] = {"a": "acknowledged", "r": "resolved", "x": "reassigned"}
USAGE = "type a N (acknowledge), r N [note] (resolve), x N [note] (reassign) or q (quit)"
PLAIN_WIDTH = 320  # piped output: one line per row, for grep
REFRESH_SECONDS = 15.0  # ages move on even when nothing arrives
_SEVERITY = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}
_STATUS = {"open": "bold", "escalated": "bold magenta", "resolved": "dim"}
_NOTE = TypeAdapter(models.Text)  # a Resolution's note


class HandleError(CasewatchError):
    """What the handler asked for is not there: an exception id, a row, or the topic itself."""


@dataclass(frozen=True)
class Case:
    """One exception as its handler sees it now."""

    number: int  # the row number: the order it was first seen in, fixed for the run
    first_seen: datetime  # `detected_at` of its first record
    record: ExceptionRecord  # its latest record


def fold(
    records: Iterable[ExceptionRecord], cases: Mapping[str, Case] | None = None
) -> dict[str, Case]:
    """The current state per `exception_id` of records in topic order: the latest record wins,
    the first-seen time and row number stay. (An exception's updates share its customer key,
    hence one partition, so topic order is the order they were written in.)"""
    folded = dict(cases or {})
    for record in records:
        seen = folded.get(record.exception_id)
        folded[record.exception_id] = (
            Case(len(folded) + 1, record.detected_at, record)
            if seen is None
            else replace(seen, record=record)
        )
    return folded


def newest_first(cases: Mapping[str, Case], show_resolved: bool = False) -> list[Case]:
    """The rows to show, newest first seen first; resolved ones only with `show_resolved`."""
    kept = [c for c in cases.values() if show_resolved or c.record.status != "resolved"]
    return sorted(kept, key=lambda c: (c.first_seen, c.number), reverse=True)


COLUMNS = [
    "#",
    "id",
    "age",
    "status",
    "severity",
    "rule",
    "customer",
    "subject",
    "route",
    "context",
]


def table(
    shown: Sequence[Case], now: datetime, title: str = "", within: timedelta | None = None
) -> Table:
    """The handler's table, rows in the order given. An age past `within` (the handler's
    resolve_within) says `late`. Text from records is never read as rich markup."""
    t = Table(
        *COLUMNS,
        title=title or None,
        title_justify="left",
        caption=None if shown else "nothing to do",
        box=box.SIMPLE_HEAD,
    )
    for case in shown:
        t.add_row(
            *_cells(case, now, within), style="dim" if case.record.status == "resolved" else None
        )
    return t


def _cells(case: Case, now: datetime, within: timedelta | None) -> list[Text]:
    r, age = case.record, now - case.first_seen
    late = within is not None and r.status != "resolved" and age > within
    return [
        Text(str(case.number)),
        Text(r.exception_id[:8]),
        Text(age_text(age) + (" late" if late else ""), "red" if late else ""),
        Text(r.status, _STATUS[r.status]),
        Text(r.severity, _SEVERITY[r.severity]),
        Text(r.rule),
        Text(customer(r)),
        Text(subject(r)),
        Text(r.route.reason if r.route else "-"),
        Text(glance(r)),
    ]


def age_text(age: timedelta) -> str:
    """How long ago, to the precision a handler needs: 45s, 12m, 5h07m, 3d04h."""
    s = max(0, int(age.total_seconds()))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def customer(record: ExceptionRecord) -> str:
    """The customer id with the profile's tier and name, e.g. `c-1 (gold, Ada Lovelace)`."""
    profile = _dict(record.context.get("profile"))
    known = [str(profile[k]) for k in ("tier", "name") if profile.get(k)]
    return f"{record.customer_id} ({', '.join(known)})" if known else record.customer_id


def subject(record: ExceptionRecord) -> str:
    """What the exception is about, e.g. `order_id=o-1`."""
    return ", ".join(f"{k}={v}" for k, v in record.subject.items()) or "-"


def glance(record: ExceptionRecord) -> str:
    """The context at a glance: `3 recent events, 1 open order 89.00 EUR, 2 other open`.
    Every context key may be missing or null; a malformed one counts as missing."""
    ctx, parts = record.context, []
    if events := _dicts(ctx.get("recent_events")):
        parts.append(_plural(len(events), "recent event"))
    if orders := _dicts(ctx.get("open_orders")):
        parts.append(f"{_plural(len(orders), 'open order')} {_totals(orders)}".rstrip())
    others = [
        e
        for e in _dicts(ctx.get("open_exceptions"))
        if e.get("exception_id") != record.exception_id and e.get("status") != "resolved"
    ]
    if others:
        parts.append(f"{len(others)} other open")
    return ", ".join(parts) or "-"


def _totals(orders: list[dict[str, Any]]) -> str:
    totals: dict[str, Decimal] = {}
    for order in orders:
        value = _dict(order.get("value"))
        try:
            amount = Decimal(str(value["amount"]))
        except (KeyError, InvalidOperation):
            continue
        currency = str(value.get("currency") or "?")
        totals[currency] = totals.get(currency, Decimal(0)) + amount
    return " + ".join(f"{amount} {currency}" for currency, amount in totals.items())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resolution(
    record: ExceptionRecord,
    handler: str,
    status: ResolutionStatus,
    at: datetime,
    note: str | None = None,
) -> Resolution:
    """The handler's answer on an exception (`at` is passed in: no clock is read here)."""
    return Resolution(
        exception_id=record.exception_id, handler=handler, status=status, at=at, note=note or None
    )


def encode(answer: Resolution) -> bytes:
    """The Resolution as it goes on the resolutions topic."""
    return orjson.dumps(answer.model_dump(mode="json", exclude_none=True))


def lookup(
    cases: Mapping[str, Case], ref: str, topic: str, rows: Sequence[Case] | None = None
) -> Case:
    """The exception `ref` names: a full exception_id or a unique prefix of one, or, when the
    `rows` on screen are given (the live view), a number from their # column. `HandleError`
    says why none fits; a row not on screen (a hidden resolved one) is not there."""
    if rows is not None and ref.isdigit():
        found = [c for c in rows if c.number == int(ref)]
        if not found:
            raise HandleError(f"no row {ref} on screen: use a number from the # column")
        return found[0]
    if ref in cases:
        return cases[ref]
    found = [c for key, c in cases.items() if ref and key.startswith(ref)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise HandleError(
            f"no exception {ref!r} on {topic} ({_plural(len(cases), 'exception')} there): "
            "check the id, and that it belongs to this handler"
        )
    ids = ", ".join(sorted(c.record.exception_id[:12] for c in found)[:5])
    raise HandleError(
        f"{ref!r} matches {len(found)} exceptions on {topic} ({ids}): give more of the id"
    )


@dataclass(frozen=True)
class Command:
    """A typed line of the live view; `status` None means quit."""

    status: ResolutionStatus | None
    ref: str = ""
    note: str | None = None


def parse_command(line: str) -> Command:
    """`a N`, `r N [note]`, `x N [note]` or `q`; a `ValueError` with the usage otherwise."""
    words = line.strip().split(maxsplit=2)
    if words in (["q"], ["quit"]):
        return Command(None)
    if len(words) >= 2 and words[0] in ACTIONS:
        return Command(ACTIONS[words[0]], words[1], words[2] if len(words) > 2 else None)
    raise ValueError(f"{line.strip()!r}: {USAGE}")


# ---- Kafka ---------------------------------------------------------------------------------


async def follow(
    bootstrap: str, topic: str, once: bool = False
) -> AsyncIterator[tuple[list[ExceptionRecord], bool]]:
    """Batches of the records on `topic` from its beginning, each with whether the reader has
    caught up with the end offsets taken at start. No consumer group: every partition is
    assigned and nothing is committed. With `once`, it stops when caught up."""
    parts = await _partitions(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        caught_up = False
        while not (once and caught_up):
            fetched = await consumer.getmany(timeout_ms=500)
            records = [
                r for msgs in fetched.values() for m in msgs if (r := _decode(m)) is not None
            ]
            reached = caught_up or all([await consumer.position(p) >= ends[p] for p in parts])
            if records or reached != caught_up:
                yield records, reached
            caught_up = reached
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="casewatch-handle",
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [
        TopicPartition(topic, p["partition"])
        for d in described
        if d["topic"] == topic and d["error_code"] == 0
        for p in d["partitions"]
    ]
    if any(d["error_code"] == TopicAuthorizationFailedError.errno for d in described):
        raise TopicAuthorizationFailedError(topic)  # not "does not exist": no ACL to see it
    if not found:
        raise HandleError(
            f"topic {topic} does not exist on Kafka at {bootstrap}: check the handler's topic "
            "in the config (topics.handler_prefix + name, or its `topic`)"
        )
    return found


def _decode(message: Any) -> ExceptionRecord | None:
    try:
        return ExceptionRecord.model_validate(orjson.loads(message.value or b"null"))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        log.warning(
            "skipped a record that is not an exception record: topic=%s partition=%s offset=%s error=%s",
            message.topic,
            message.partition,
            message.offset,
            str(exc).splitlines()[0],
        )
        return None


async def collect(bootstrap: str, topic: str) -> dict[str, Case]:
    """Every exception on `topic`, read up to the end offsets at start."""
    cases: dict[str, Case] = {}
    async for records, _ in follow(bootstrap, topic, once=True):
        cases = fold(records, cases)
    return cases


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )


async def publish(producer: Any, topic: str, record: ExceptionRecord, answer: Resolution) -> None:
    """Send a Resolution keyed by the exception's customer, and wait for the brokers' ack."""
    await producer.send_and_wait(topic, encode(answer), key=record.customer_id.encode())


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
        shown = table(newest_first(self.cases, self.show_resolved), now, title, self.within)
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
            shown = newest_first(self.cases, self.show_resolved)
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
    producer = _producer(bootstrap)
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
    done = sum(c.record.status == "resolved" for c in cases.values())
    title = f"{handler} · {topic} · {len(cases) - done} unresolved, {done} resolved"
    if done and not show_resolved:
        title += " (hidden: --all shows them)"
    shown = newest_first(cases, show_resolved)
    _console().print(table(shown, _now(), title, config.handlers[handler].resolve_within))
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
    producer = _producer(bootstrap)
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
