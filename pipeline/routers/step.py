"""The dispatch agent's step: the single dispatch partition's records (exceptions found by the
workers, handlers' resolutions, partition clocks) routed by `Dispatcher` to the handler topics
and the exception log, each decision's records acknowledged before its table entries are
written. Never raises: a record it cannot read goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pipeline.config import Config
from pipeline.core.clock import PipelineClock
from pipeline.core.models import DeadLetter
from pipeline.core.state import kept_json
from pipeline.detectors.base import epoch
from pipeline.routers.dispatch import Dispatcher, Routed, stamp
from pipeline.routers.tree import redact
from pipeline.sinks.base import Sink
from pipeline.sinks.kafka import DeadLetterSink

if TYPE_CHECKING:
    # The runtime's Prometheus metrics, passed in by build_app: a type only, so that routers
    # import nothing from pipeline.runtime (the layout's direction, runtime -> routers).
    from pipeline.runtime.metrics import Metrics

log = logging.getLogger(__name__)

_DELETED = object()


class Table(Protocol):
    """The dispatch table as DispatchStep writes it (`durable.StateTable`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...

    async def put(self, key: bytes, value: bytes, partition: int) -> None: ...

    async def delete(self, key: bytes, partition: int) -> None: ...


class _Buffered(MutableMapping[str, dict[str, Any]]):
    """The dispatch table as the dispatcher sees it: reads through, writes held back until
    `flush()`, so a decision's records are acknowledged before its state is written."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key in self.pending:
            value = self.pending[key]
            if value is _DELETED:
                raise KeyError(key)
            return value  # type: ignore[no-any-return]
        raw = self.table.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return orjson.loads(raw)  # type: ignore[no-any-return]

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        self.pending[key] = _DELETED

    def __iter__(self) -> Iterator[str]:
        raise TypeError("the dispatch table is not iterated live; see Dispatcher.rebuild")

    def __len__(self) -> int:
        raise TypeError("the dispatch table is not sized live")

    async def flush(self) -> None:
        for key, value in self.pending.items():
            if value is _DELETED:
                if self.table.get(key.encode()) is not None:
                    await self.table.delete(key.encode(), 0)
            else:
                await self.table.put(key.encode(), kept_json(value), 0)
        self.pending.clear()


async def _in_order(key: bytes, sends: list[tuple[Sink, bytes]]) -> None:
    """Send records with one key, each acknowledged before the next."""
    for sink, value in sends:
        await sink.send(key, value)


def decide(dispatcher: Dispatcher, clock: PipelineClock, message: dict[str, Any]) -> list[Routed]:
    """One message of the dispatch topic, as the worker and `casewatch replay` both take it:
    an exception record (with its partition's clock when it was found), a handler's
    resolution, or a partition's clock. SLA deadlines the pipeline's clock has passed fire
    first. Pure: the dispatcher's table writes are held by its store."""
    out: list[Routed] = []
    if "clock" in message:
        clock.report(message["clock"]["p"], message["clock"]["t"])
    out += dispatcher.fire(clock.mark)
    if "exception" in message:
        record = message["exception"]
        out += dispatcher.on_exception(record, epoch(record["event_time"]))
    elif "resolution" in message:
        resolution = message["resolution"]
        out += dispatcher.on_resolution(resolution, epoch(resolution["at"]))
    return out


def in_order(out: list[Routed], at: datetime | None = None) -> list[Routed]:
    """Routed records in the order they go out: new exceptions first, then updates
    (escalations, resolutions, reassignments) stamped with the time they were decided."""
    updates = [r for r in out if r.reason in ("escalation", "update", "reassigned", "handed_on")]
    return [r for r in out if r.reason in ("normal", "overflow")] + stamp(updates, at)


@dataclass
class DispatchStep:
    """The single dispatch partition: exceptions and resolutions in, routed records out to the
    handler topics and the exception log, within each handler's capacity; SLA escalations on
    the same two clocks as deadlines (event time, wall clock when idle). Never raises."""

    config: Config
    metrics: Metrics
    table: Table  # exception id bytes -> entry JSON
    handler_sink: Any  # (topic name) -> Sink
    log_sink: Sink  # casewatch.exceptions: every routed record
    dlq: DeadLetterSink
    topic: str  # the dispatch topic's name (for dead letters)
    dispatcher: Dispatcher = field(init=False)
    store: _Buffered = field(init=False)
    clock: PipelineClock = field(init=False)

    def __post_init__(self) -> None:
        self.store = _Buffered(self.table)
        self.dispatcher = Dispatcher(self.config, self.store)
        self.clock = PipelineClock()

    def recovered(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        self.dispatcher.rebuild((k.decode(), orjson.loads(v)) for k, v in items)
        self._gauges()
        log.info("dispatch recovered: %s", self._counts())

    async def handle(self, value: bytes | None, offset: int = -1) -> None:
        try:
            message = orjson.loads(value or b"{}")
            out = decide(self.dispatcher, self.clock, message)
            if "resolution" in message:
                resolution = message["resolution"]
                self.metrics.resolutions.labels(resolution["handler"], resolution["status"]).inc()
            await self._publish(out)
            await self.store.flush()
            self._gauges()
        except Exception as exc:
            log.exception("internal error in dispatch")
            # The decision's table writes are dropped: the dispatcher's counts, changed with
            # them, go back to what the table holds.
            self.store.pending.clear()
            self.dispatcher.rebuild((k.decode(), orjson.loads(v)) for k, v in self.table.items())
            letter = DeadLetter(
                reason=(
                    f"Casewatch failed to route this record ({type(exc).__name__}: {exc}): "
                    "report it with this record, then replay it onto the dispatch topic"
                ),
                error_class="dispatch_failed",
                topic=self.topic,
                partition=0,
                offset=offset,
            )
            await self.dlq.send(None, value, letter)
            self.metrics.dead_letters.labels(self.topic, "dispatch_failed").inc()

    async def _publish(self, out: list[Routed]) -> None:
        routed = in_order(out)
        # Every record is sent at once and all are acknowledged before the caller writes the
        # table. Records with the same topic and key (one customer's records on one topic, e.g.
        # an escalation then the update closing it) go one after the other, each acknowledged
        # before the next is sent, as before: a retried send never lands after a later one.
        chains: dict[tuple[str | None, bytes], list[tuple[Sink, bytes]]] = {}
        for r in routed:
            key = str(r.record["customer_id"]).encode()
            private = redact(r.record, self.config.handlers[r.handler].redact)
            topic = self.config.handler_topic(r.handler)
            chains.setdefault((topic, key), []).append(
                (self.handler_sink(topic), orjson.dumps(private))
            )
            if not r.notice:
                chains.setdefault((None, key), []).append((self.log_sink, orjson.dumps(r.record)))
        sent = await asyncio.gather(
            *(_in_order(key, sends) for (_, key), sends in chains.items()),
            return_exceptions=True,
        )
        for result in sent:  # raised only once every send has settled
            if isinstance(result, BaseException):
                raise result
        for r in routed:
            if r.reason != "update" and not r.notice:
                self.metrics.routed.labels(r.handler, r.reason).inc()
            log.info(
                "routed: %s %s %s -> %s (%s)",
                r.record["status"],
                r.record["rule"],
                r.record["exception_id"],
                r.handler,
                r.record["route"]["reason"],
            )
        for handler in self.dispatcher.breaches:
            self.metrics.sla_breaches.labels(handler).inc()
        self.dispatcher.breaches.clear()
        for handler, seconds in self.dispatcher.resolved:
            self.metrics.resolution_time.labels(handler).observe(seconds)
        self.dispatcher.resolved.clear()

    def _gauges(self) -> None:
        wall = time.time()
        self.metrics.table_entries.labels("dispatch").set(self.dispatcher.entries)
        for name, handler in self.config.handlers.items():
            count = self.dispatcher.open_count(name)
            self.metrics.open_exceptions.labels(name).set(count)
            self.metrics.capacity.labels(name).set(handler.capacity)
            self.metrics.utilization.labels(name).set(count / handler.capacity)
            oldest = self.dispatcher.oldest_open(name)
            self.metrics.oldest_open_age.labels(name).set(
                0.0 if oldest is None else max(0.0, wall - oldest)
            )

    def forget_gauges(self) -> None:
        """This worker no longer owns dispatch: drop its per-handler gauges (no stale series)."""
        for gauge in (
            self.metrics.open_exceptions,
            self.metrics.capacity,
            self.metrics.utilization,
            self.metrics.oldest_open_age,
        ):
            gauge.clear()
        self.metrics.table_entries.labels("dispatch").set(0)

    def _counts(self) -> str:
        return " ".join(f"{h}={self.dispatcher.open_count(h)}" for h in self.config.handlers)
