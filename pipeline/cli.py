"""The `casewatch` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline import __version__
from pipeline.config import DEFAULT_CONFIG, Config, Runtime, load_config, review
from pipeline.core.errors import ConfigError, KafkaAccessError, Unavailable
from pipeline.core.ingest import TIME_FORMAT
from pipeline.runtime.access import check_access, check_reachable, explain, unreachable
from pipeline.runtime.security import SOURCE
from pipeline.tools import status
from pipeline.tools.demo import demo
from pipeline.tools.handle import handle
from pipeline.tools.report import report

if TYPE_CHECKING:
    from pipeline.runtime.metrics import Metrics

# Exit codes (docs/operations.md, "Exit codes")
EXIT_FAILURE = 1  # the environment: Kafka unreachable or refusing us, a port taken
EXIT_CONFIG = 2  # bad input: the config file, an environment variable, an argument, a path
EXIT_PIPE = 141  # the reader of stdout went away (| head): 128 + SIGPIPE, as `cat` reports it


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `casewatch` and `python -m pipeline`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # aiokafka logs each failed connection; unconfigured, Python would print that above our line.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is caught below
        return code
    except BrokenPipeError:
        # Quietly, as Unix tools do; stdout goes to /dev/null so that the interpreter's own
        # flush at exit does not complain about the same closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except ConfigError as exc:
        print(f"casewatch: {_config_problems(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except (KafkaAccessError, Unavailable) as exc:
        print(f"casewatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KafkaConnectionError as exc:
        if why := _explain(exc):  # connected, then refused: credentials or TLS
            print(f"casewatch: {why}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"casewatch: {unreachable(Runtime.from_env().bootstrap_servers)}", file=sys.stderr)
        return EXIT_FAILURE
    except KafkaError as exc:
        if why := _explain(exc):  # an ACL missing: one line; anything else stays a traceback
            print(f"casewatch: {why}", file=sys.stderr)
            return 1
        raise


def _config_problems(exc: ConfigError) -> str:
    """One problem on one line; several as a list under a line that counts them."""
    what = "invalid environment" if exc.file == SOURCE else f"invalid config {exc.file}"
    if len(exc.problems) == 1:
        return f"{what}: {exc.problems[0]}"
    return f"{what}: {len(exc.problems)} problems:\n" + "\n".join(f"  - {p}" for p in exc.problems)


def _explain(exc: KafkaError) -> str | None:
    runtime = Runtime.from_env()
    return explain(exc, runtime.bootstrap_servers, runtime.security)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casewatch", description=__doc__)
    p.add_argument("--version", action="version", version=f"casewatch {__version__}")
    sub = p.add_subparsers(title="commands")

    s = sub.add_parser(
        "schemas", help="write the contract's JSON Schema files and the case API's OpenAPI document"
    )
    s.add_argument("--out", default=None, help="folder (default: the repo's schemas/)")
    s.set_defaults(func=_schemas)

    c = sub.add_parser("check", help="validate a config file and report every problem")
    c.add_argument(
        "--config", default=None, help="config file (default: CASEWATCH_CONFIG or built-in)"
    )
    c.add_argument(
        "--strict", action="store_true", help="exit 2 on warnings too (e.g. a rule no route takes)"
    )
    c.set_defaults(func=_check)

    w = sub.add_parser("worker", help="run a worker (scale out: run more with the same config)")
    w.add_argument("--config", default=None)
    w.add_argument("--loglevel", default="info")
    w.set_defaults(func=_worker)

    pr = sub.add_parser("produce", help="publish a JSON-lines file of events to their topics")
    pr.add_argument("file", help="one event per line, as it would appear on its topic")
    pr.add_argument("--config", default=None)
    pr.set_defaults(func=_produce)

    r = sub.add_parser(
        "replay",
        help="run a JSON-lines file of events through the detectors offline, on event time",
    )
    r.add_argument("file", help="one event per line, as it would appear on its topic")
    r.add_argument("--config", default=None)
    r.add_argument("--out", default=None, help="write exception records here (default: stdout)")
    r.add_argument(
        "--until",
        default=None,
        type=_instant,
        help="RFC 3339 time the clock advances to at the end (default: the last event's time)",
    )
    r.add_argument(
        "--against",
        default=None,
        metavar="OLD",
        help="backtest: replay under OLD too and print what --config changes (--out: as JSON)",
    )
    r.add_argument("--json", action="store_true", help="with --against: print the diff as JSON")
    r.add_argument(
        "--fail-on-change", action="store_true", help="with --against: exit 3 if anything changed"
    )
    r.set_defaults(func=_replay)

    ro = sub.add_parser("routes", help="the routing tree: test where an exception would go")
    rsub = ro.add_subparsers(title="routes commands")
    rt = rsub.add_parser(
        "test", help="print the matched route path(s) and handler for some exception fields"
    )
    rt.add_argument("fields", nargs="*", help="field=value, e.g. rule=missing_delivery tier=gold")
    rt.add_argument("--config", default=None)
    rt.set_defaults(func=_routes_test)

    handle.add_parser(sub)
    demo.add_parser(sub)
    report.add_parser(sub)
    status.add_parser(sub)

    t = sub.add_parser("topics", help="create or verify the contract's topics")
    t.add_argument("--config", default=None)
    t.set_defaults(func=_topics)
    return p


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time: write it as {TIME_FORMAT}"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one, e.g. {text}Z or {text}+01:00"
        )
    return value


def _config(path: str | None, runtime: Runtime | None = None) -> Config:
    """The config file, valid and fit to run (a config without rules watches nothing)."""
    file = path or (runtime or Runtime.from_env()).config_path
    config = load_config(file)
    errors, _ = review(config)
    if errors:
        raise ConfigError(str(file or DEFAULT_CONFIG), errors)
    return config


def _schemas(args: argparse.Namespace) -> int:
    from pipeline.core import schemas

    paths = schemas.write(Path(args.out)) if args.out else schemas.write()
    for path in paths:
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(f"ok: {config.pipeline.partitions} partitions, app id {config.pipeline.app_id}")
    for name, rule in config.rules.items():
        print(f"  rule {name:24} {rule.kind:10} {rule.severity:8} version {rule.version()}")
    _, warnings = review(config)
    for warning in warnings:
        print(f"casewatch: warning: {warning}", file=sys.stderr)
    return EXIT_CONFIG if warnings and args.strict else 0


def _topics(args: argparse.Namespace) -> int:
    from pipeline.runtime.topics import ensure

    config = _config(args.config)
    bootstrap = Runtime.from_env().bootstrap_servers
    report = asyncio.run(ensure(config, bootstrap))
    bad = 0
    for spec, state in report:
        print(f"{spec.name:40} {spec.partitions:>3} partitions  {state}")
        bad += state not in ("ok", "created")
    return 1 if bad else 0


def _worker(args: argparse.Namespace) -> int:
    from pipeline.runtime.versions import untested  # before the imports of what the worker patches

    if why := untested():
        print(f"casewatch: {why}", file=sys.stderr)
        return 1
    from faust.worker import Worker

    from pipeline.runtime.app import build_app
    from pipeline.runtime.durable import local_state_guard
    from pipeline.runtime.logs import logging_config
    from pipeline.runtime.metrics import Metrics
    from pipeline.runtime.pauses import quiet

    runtime = Runtime.from_env()
    config = _config(args.config, runtime)
    metrics = Metrics.create()
    if runtime.metrics_port:
        _serve(metrics, runtime.metrics_port)
    if runtime.api_port:
        _bindable(runtime.api_bind, runtime.api_port)
    asyncio.run(check_reachable(runtime.bootstrap_servers))  # before Faust retries and raises
    # Sign in once first: Faust reports rejected credentials as a traceback ending in
    # "Unable to bootstrap", which names neither the user nor the variable to fix.
    asyncio.run(check_access(runtime.bootstrap_servers, runtime.security))
    if runtime.guarantee == "exactly_once":
        print(
            "casewatch: warning: CASEWATCH_PROCESSING_GUARANTEE=exactly_once uses Faust's Kafka "
            "transactions, which committed nothing in our tests (faust-streaming 0.15.3): no "
            "exception reached a read_committed consumer. For evaluation only; see "
            "docs/reliability.md, 'Exactly-once mode'.",
            file=sys.stderr,
        )
    app = build_app(config, runtime, metrics)
    quiet(metrics.gc_pause)
    with local_state_guard(app, runtime.store):
        plain = None if sys.stderr.isatty() else logging_config(args.loglevel)
        Worker(app, loglevel=args.loglevel, logging_config=plain).execute_from_commandline()
    return 0


def _serve(metrics: Metrics, port: int) -> None:
    try:
        metrics.serve(port)
    except OSError as exc:
        raise Unavailable(
            f"cannot serve metrics on port {port} ({exc.strerror}): stop what holds it, or set "
            "CASEWATCH_METRICS_PORT to a free port (0: no metrics server)"
        ) from None


def _bindable(address: str, port: int) -> None:
    """Faust's web server reports a taken port as a traceback: say it first, in one line."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
    except OSError as exc:
        raise Unavailable(
            f"cannot serve the case API on {address}:{port} ({exc.strerror}): stop what holds "
            "it, or set CASEWATCH_API_PORT to a free port (0: no case API)"
        ) from None


def _routes_test(args: argparse.Namespace) -> int:
    from pipeline.core.models import DetectorKind, ExceptionStatus, Severity
    from pipeline.routers.tree import check_assignments, parse_assignments

    config = _config(args.config)
    known = {
        "rule": sorted(config.rules),
        "kind": get_args(DetectorKind),
        "severity": get_args(Severity),
        "status": get_args(ExceptionStatus),
    }
    try:
        view = parse_assignments(args.fields)
        check_assignments(view, known)
    except ValueError as exc:
        print(f"casewatch: routes test: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for route in config.router().match(view):
        h = config.handlers[route.handler]
        print(
            f"{route.path}  ->  {route.handler}  (topic {config.handler_topic(route.handler)}, "
            f"capacity {h.capacity}, overflow {h.overflow or '-'}, "
            f"escalate_to {h.escalate_to or '-'})"
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pipeline.tools.replay import run

    config = _config(args.config)
    if (args.json or args.fail_on_change) and not args.against:
        print(
            "casewatch: replay: --json and --fail-on-change compare two configs: add "
            "--against OLD.yaml",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    old = _config(args.against) if args.against else None
    if not Path(args.file).is_file():
        print(f"casewatch: replay: {args.file}: no such file: check the path", file=sys.stderr)
        return EXIT_CONFIG
    if args.out:
        folder = Path(args.out).parent
        if not folder.is_dir():
            print(
                f"casewatch: replay: --out {args.out}: there is no folder {folder}: create it, "
                "or write elsewhere",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    if old is not None:
        return _backtest(args, config, old)
    if args.out:
        with open(args.out, "wb") as out:
            summary = run(args.file, config, out, args.until, sys.stderr.isatty())
    else:
        summary = run(args.file, config, sys.stdout.buffer, args.until, sys.stderr.isatty())
    print(summary.text(), file=sys.stderr)
    return 1 if summary.invalid else 0


def _backtest(args: argparse.Namespace, config: Config, old: Config) -> int:
    from pipeline.tools.backtest.backtest import command
    from pipeline.tools.backtest.output import Names

    new = str(args.config or Runtime.from_env().config_path or DEFAULT_CONFIG)
    names = Names(args.file, new, args.against)
    return command(names, config, old, args.until, args.out, args.json, args.fail_on_change)


def _produce(args: argparse.Namespace) -> int:
    from pipeline.tools.produce import produce_file

    config = _config(args.config)
    return asyncio.run(produce_file(args.file, config, Runtime.from_env().bootstrap_servers))
