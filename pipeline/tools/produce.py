"""`casewatch produce`: publish a JSON-lines file of events as an upstream system would.

Each line goes, unchanged, to its topic (chosen by `type`), keyed by `customer_id`. Lines that
are not events are reported with their line number and skipped; the run goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from rich.progress import Progress

from pipeline.config import Config, Runtime
from pipeline.core.errors import InvalidEvent
from pipeline.core.ingest import parse_event, topic_for


def _read_lines(path: str) -> list[bytes]:
    # Read before the producer starts: a file that is not there fails fast.
    return Path(path).read_bytes().splitlines()


async def produce_file(path: str, config: Config, bootstrap: str) -> int:
    """Publish every valid line; return 0, or 1 when some lines were skipped."""
    lines = _read_lines(path)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    sent = skipped = 0
    try:
        await producer.start()  # inside: a start that fails (rejected credentials) still stops
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("publishing", total=len(lines))
            for number, line in enumerate(lines, start=1):
                progress.advance(task)
                if not line.strip():
                    continue
                try:
                    event = parse_event(line, config.pipeline.max_event_bytes)
                except InvalidEvent as exc:
                    print(f"{path}:{number}: skipped: {exc.reason}", file=sys.stderr)
                    skipped += 1
                    continue
                await producer.send(
                    topic_for(event.type, config), line, key=event.customer_id.encode()
                )
                sent += 1
            await producer.flush()
    finally:
        await producer.stop()
    print(
        f"published {sent} events from {path}"
        + (f", skipped {skipped} invalid lines" if skipped else "")
    )
    return 1 if skipped else 0
