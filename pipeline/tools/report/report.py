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
import sys
from collections.abc import Sequence
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError
from rich.console import Console

from pipeline.config import Runtime, load_config
from pipeline.core.errors import ReportError
from pipeline.core.models import ExceptionRecord
from pipeline.runtime.access import explain
from pipeline.runtime.topics import partitions_of
from pipeline.tools.report.cases import Loaded, analyse
from pipeline.tools.report.output import print_report, render_html

EXIT_FAILED, EXIT_USAGE = 1, 2
PLAIN_WIDTH = 200  # piped output


# ---- input ---------------------------------------------------------------------------------


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
    found = await partitions_of(bootstrap, topics, "casewatch-report")
    if missing := [t for t in topics if t not in found]:
        raise ReportError(f"topic {', '.join(missing)} does not exist on Kafka at {bootstrap}")
    return [tp for t in topics for tp in found[t]]


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
        why = explain(exc, bootstrap, Runtime.from_env().security)  # e.g. no ACL for a topic
        return _fail(why or f"Kafka at {bootstrap}: {exc}", EXIT_FAILED)
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
