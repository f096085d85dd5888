"""The `casewatch` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline import __version__, demo, handle, report
from pipeline.access import check_access, explain
from pipeline.config import Config, Runtime, load_config
from pipeline.errors import ConfigError, KafkaAccessError

EXIT_CONFIG = 2


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
        return code
    except ConfigError as exc:
        print(f"casewatch: invalid config {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KafkaAccessError as exc:
        print(f"casewatch: {exc}", file=sys.stderr)
        return 1
    except KafkaConnectionError as exc:
        if why := _explain(exc):  # connected, then refused: credentials or TLS
            print(f"casewatch: {why}", file=sys.stderr)
            return 1
        servers = Runtime.from_env().bootstrap_servers
        print(
            f"casewatch: cannot reach Kafka at {servers}: start the local broker "
            "(deploy/kafka/local-kafka start) or set KAFKA_BOOTSTRAP_SERVERS to your brokers",
            file=sys.stderr,
        )
        return 1
    except KafkaError as exc:
        if why := _explain(exc):  # an ACL missing: one line; anything else stays a traceback
            print(f"casewatch: {why}", file=sys.stderr)
            return 1
        raise


def _explain(exc: KafkaError) -> str | None:
    runtime = Runtime.from_env()
    return explain(exc, runtime.bootstrap_servers, runtime.security)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casewatch", description=__doc__)
    p.add_argument("--version", action="version", version=f"casewatch {__version__}")
    sub = p.add_subparsers(title="commands")

    s = sub.add_parser("schemas", help="write the contract's JSON Schema files")
    s.add_argument("--out", default=None, help="folder (default: the repo's schemas/)")
    s.set_defaults(func=_schemas)

    c = sub.add_parser("check", help="validate a config file and report every problem")
    c.add_argument(
        "--config", default=None, help="config file (default: CASEWATCH_CONFIG or built-in)"
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

    t = sub.add_parser("topics", help="create or verify the contract's topics")
    t.add_argument("--config", default=None)
    t.set_defaults(func=_topics)
    return p


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time: write e.g. 2026-11-23T18:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset: add one, e.g. {text}Z or {text}+01:00"
        )
    return value


def _config(path: str | None) -> Config:
    return load_config(path or Runtime.from_env().config_path)


def _schemas(args: argparse.Namespace) -> int:
    from pipeline import schemas

    paths = schemas.write(Path(args.out)) if args.out else schemas.write()
    for path in paths:
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(f"ok: {config.pipeline.partitions} partitions, app id {config.pipeline.app_id}")
    for name, rule in config.rules.items():
        print(f"  rule {name:24} {rule.kind:10} {rule.severity:8} version {rule.version()}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from pipeline.topics import ensure

    config = _config(args.config)
    bootstrap = Runtime.from_env().bootstrap_servers
    report = asyncio.run(ensure(config, bootstrap))
    bad = 0
    for spec, state in report:
        print(f"{spec.name:40} {spec.partitions:>3} partitions  {state}")
        bad += state not in ("ok", "created")
    return 1 if bad else 0


def _worker(args: argparse.Namespace) -> int:
    from pipeline.versions import untested  # before the imports of what the worker patches

    if why := untested():
        print(f"casewatch: {why}", file=sys.stderr)
        return 1
    from faust.worker import Worker

    from pipeline.app import build_app
    from pipeline.durable import local_state_guard
    from pipeline.metrics import Metrics

    runtime = Runtime.from_env()
    config = load_config(args.config or runtime.config_path)
    metrics = Metrics.create()
    if runtime.metrics_port:
        metrics.serve(runtime.metrics_port)
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
    with local_state_guard(app, runtime.store):
        Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def _routes_test(args: argparse.Namespace) -> int:
    from pipeline.routers.tree import parse_assignments

    config = _config(args.config)
    try:
        view = parse_assignments(args.fields)
    except ValueError as exc:
        print(f"casewatch: routes test: {exc}", file=sys.stderr)
        return 2
    for route in config.router().match(view):
        h = config.handlers[route.handler]
        print(
            f"{route.path}  ->  {route.handler}  (topic {config.handler_topic(route.handler)}, "
            f"capacity {h.capacity}, overflow {h.overflow or '-'}, "
            f"escalate_to {h.escalate_to or '-'})"
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pipeline.replay import run

    config = _config(args.config)
    if not Path(args.file).is_file():
        print(f"casewatch: replay: {args.file}: no such file", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "wb") as out:
            summary = run(args.file, config, out, args.until, sys.stderr.isatty())
    else:
        summary = run(args.file, config, sys.stdout.buffer, args.until, sys.stderr.isatty())
    print(summary.text(), file=sys.stderr)
    return 1 if summary.invalid else 0


def _produce(args: argparse.Namespace) -> int:
    from pipeline.produce import produce_file

    config = _config(args.config)
    return asyncio.run(produce_file(args.file, config, Runtime.from_env().bootstrap_servers))
