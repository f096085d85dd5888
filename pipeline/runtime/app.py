"""build_app(config) -> faust.App: topics, tables and agents wired in one place."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any, cast

import faust
from faust.types import TP

from pipeline.config import Config, Runtime
from pipeline.routers.step import DispatchStep
from pipeline.runtime.api import CaseApi, FaustPeers, Tokens, install
from pipeline.runtime.cases import CaseKeeper
from pipeline.runtime.durable import App, StateTable
from pipeline.runtime.metrics import Metrics
from pipeline.runtime.offsets import SafeConsumer, wait_ms
from pipeline.runtime.topics import TICK_RETENTION, internal_name, partition_of_key
from pipeline.runtime.worker import TICK, Worker
from pipeline.sinks.kafka import DeadLetterSink, TopicSink

log = logging.getLogger(__name__)
FETCH_BYTES = 512 * 1024  # per partition and fetch (aiokafka's max_partition_fetch_bytes)
POLL_RECORDS = 2000  # records decoded and handed to Faust at a time (max_poll_records)
_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def build_app(config: Config, runtime: Runtime, metrics: Metrics) -> faust.App:
    """A Faust app consuming the source topics as raw bytes (we validate, not Faust)."""
    p, t = config.pipeline, config.topics
    # DurableBuffer: an offset commit waits until every table change before it is in its
    # changelog (Faust's own flush does not; see pipeline/runtime/durable.py).
    app = App(
        p.app_id,
        broker=[f"kafka://{h.strip()}" for h in runtime.bootstrap_servers.split(",")],
        broker_credentials=runtime.security.faust_credentials(),  # None: PLAINTEXT
        store=runtime.store,
        datadir=runtime.state_dir,
        autodiscover=False,
        # The case API (pipeline/runtime/api.py) is the only thing served: Faust's own pages
        # (its tables' contents among them) are off.
        web_enabled=bool(runtime.api_port),
        # In a thread with its own event loop: a request is answered while a batch of events
        # is being processed, not after it (the interpreter switches threads every few ms).
        web_in_thread=True,
        web_port=runtime.api_port or Runtime().api_port,  # Faust checks it even when off
        web_bind=runtime.api_bind,
        web_host=runtime.api_host or socket.gethostname(),
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        topic_partitions=p.partitions,
        topic_replication_factor=p.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        # We encode and decode ourselves; Faust's JSON default broke changelog recovery.
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        processing_guarantee=runtime.guarantee,
        # How long a crashed worker keeps its partitions before the others take them over.
        broker_session_timeout=p.session_timeout.total_seconds(),
        broker_heartbeat_interval=min(3.0, p.session_timeout.total_seconds() / 3),
        # Room for a dead letter that carries an oversized original unchanged.
        producer_max_request_size=4 * 1024 * 1024,
        # What a worker that falls behind holds in fetched records it has not processed yet:
        # at most this per partition as raw bytes, and this many decoded at a time (a larger
        # fetch let a lagging worker's memory grow with its lag: docs/performance.md). A record
        # larger than this still comes through: the broker returns a first record batch
        # whatever its size.
        consumer_max_fetch_size=FETCH_BYTES,
        broker_max_poll_records=POLL_RECORDS,
    )
    app.fetch_min_bytes = p.fetch_min_bytes
    app.fetch_max_wait_ms = wait_ms(p.fetch_max_wait)
    # Offsets the broker did not send: counted and logged (pipeline/runtime/offsets.py).
    app.on_offset_gap = lambda tp, first, last: metrics.offset_gaps.labels(tp.topic).inc()
    sources = app.topic(t.interactions, t.orders, partitions=p.partitions, **_RAW)
    rekey_name = internal_name(p.app_id, "rekey")
    rekey = app.topic(rekey_name, partitions=p.partitions, internal=True, **_RAW)
    # Clock ticks: same partition count as the sources, so Faust's assignor gives partition N
    # of every topic (and of the tables' changelogs) to the same worker.
    ticks = app.topic(
        internal_name(p.app_id, "tick"),
        partitions=p.partitions,
        internal=True,
        retention=TICK_RETENTION,
        **_RAW,
    )
    dlq = app.topic(t.dlq, **_RAW)
    exceptions = app.topic(t.exceptions, partitions=p.partitions, **_RAW)
    resolutions = app.topic(t.resolutions, partitions=p.partitions, **_RAW)
    # Routing needs a global view of each handler's open count: one partition decides.
    dispatch = app.topic(internal_name(p.app_id, "dispatch"), partitions=1, internal=True, **_RAW)
    handler_topics = {
        config.handler_topic(h): TopicSink(app.topic(config.handler_topic(h), **_RAW))
        for h in config.handlers
    }
    # Faust picks a table's serializers from key_type/value_type: bytes means raw.
    customers = _table(app, "customers", p.partitions)
    clocks = _table(app, "clocks", p.partitions)
    worker = Worker(
        config=config,
        metrics=metrics,
        dlq=DeadLetterSink(TopicSink(dlq)),
        rekey=TopicSink(rekey),
        rekey_topic=rekey_name,
        dispatch=TopicSink(dispatch),
        table=StateTable(app, customers),
        clocks_table=StateTable(app, clocks),
    )
    cases_table = _table(app, "cases", p.partitions)
    keeper = CaseKeeper(config=config, metrics=metrics, table=StateTable(app, cases_table))
    if runtime.api_port:
        install(
            app,
            CaseApi(
                config=config,
                keeper=keeper,
                tokens=Tokens.from_env(),
                peers=FaustPeers(app, cases_table.name, p.partitions),
                metrics=metrics,
            ),
        )
    entries = _table(app, "dispatch", 1)
    router = DispatchStep(
        config=config,
        metrics=metrics,
        table=StateTable(app, entries),
        handler_sink=handler_topics.__getitem__,
        log_sink=TopicSink(exceptions),
        dlq=DeadLetterSink(TopicSink(dlq)),
        topic=dispatch.get_topic_name(),
    )

    # The source and re-key topics are read in batches straight from the fetch loop, one
    # partition's fetched records at a time, and acknowledged in bulk (pipeline/runtime/offsets.py):
    # no agent, stream or per-message event (docs/architecture.md). Faust still subscribes
    # to them, assigns them, seeks and commits them.
    for topic in (sources, rekey):
        app.topics.add(topic)
    app.batch_topics = frozenset({t.interactions, t.orders, rekey_name})
    app.on_batch = worker.batch
    # What holds a partition's clock: an input partition with records not read yet. A record
    # on the re-key topic may be of either input.
    inputs: list[tuple[str, tuple[str, ...]]] = [
        (t.interactions, (t.interactions,)),
        (t.orders, (t.orders,)),
        (rekey_name, (t.interactions, t.orders)),
    ]

    def unread(partition: int) -> set[str]:
        consumer = cast(SafeConsumer, app.consumer)  # our App's
        return {
            name
            for topic, names in inputs
            if consumer.unread(TP(topic, partition))
            for name in names
        }

    worker.unread = unread

    async def tick(stream: Any) -> None:
        async for event in stream.events():
            await worker.tick(event.message.partition)

    app.agent(ticks, name="tick")(tick)

    async def resolve(stream: Any) -> None:
        async for event in stream.events():
            resolution = await worker.resolution(event.message)
            if resolution is not None:
                await keeper.resolution(event.message, resolution)

    async def logged(stream: Any) -> None:
        async for event in stream.events():
            await keeper.record(event.message)

    app.agent(exceptions, name="cases")(logged)

    async def route(stream: Any) -> None:
        async for event in stream.events():
            await router.handle(event.message.value, event.message.offset)

    app.agent(resolutions, name="resolutions")(resolve)
    app.agent(dispatch, name="dispatch")(route)

    async def dispatch_recovered() -> None:
        router.recovered(entries.items())

    entries.on_recover(dispatch_recovered)

    watched = {t.interactions, t.orders, t.resolutions, rekey_name}

    async def cases_recovered() -> None:
        keeper.recovered(cases_table.items())

    cases_table.on_recover(cases_recovered)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        keeper.revoked()
        # Another worker decides dispatch now: its handler gauges are the true ones.
        if any(tp.topic == dispatch.get_topic_name() for tp in revoked):
            router.forget_gauges()
        # The same for each partition's lag and clock: the new owner reports them. A value left
        # here would stay frozen, and the lag alert takes the max over the workers.
        for tp in revoked:
            if tp.topic in watched:
                _forget(metrics.consumer_lag, tp.topic, str(tp.partition))
            if tp.topic == ticks.get_topic_name():
                _forget(metrics.watermark_lag, str(tp.partition))

    async def recovered() -> None:
        worker.recovered(customers.items(), ((int(k), v) for k, v in clocks.items()))

    customers.on_recover(recovered)

    @app.timer(TICK)  # type: ignore[untyped-decorator]
    async def send_ticks() -> None:
        # Each worker ticks the partitions it owns; the tick comes back to it through Kafka.
        name = ticks.get_topic_name()
        for tp in app.consumer.assignment():
            if tp.topic == name:
                await ticks.send(key=None, value=b"", partition=tp.partition)

    @app.timer(config.cases.sweep_every.total_seconds())  # type: ignore[untyped-decorator]
    async def sweep_cases() -> None:
        # The books of the partitions this worker owns (a standby's owner sweeps it): a book's
        # partition is its customer's, as the exception log's producer placed it.
        name = exceptions.get_topic_name()
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == name}

        def owned(key: bytes) -> int | None:
            partition = partition_of_key(key, p.partitions)
            return partition if partition in mine else None

        if mine:
            await keeper.sweep(time.time(), owned)

    @app.task  # type: ignore[untyped-decorator]  # faust ships no type hints for decorators
    async def ready() -> None:
        metrics.up.set(1)

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def lag() -> None:
        # Kafka's records-lag: high water minus this consumer's position, per partition.
        for tp in app.consumer.assignment():
            if tp.topic not in watched:
                continue
            position = await app.consumer.position(tp)
            highwater = app.consumer.highwater(tp)
            if position is not None and highwater is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )

    last: list[float] = [-1.0]

    @app.timer(10.0)  # type: ignore[untyped-decorator]
    async def summary() -> None:
        # One line every 10 s while there is progress: what an operator tails.
        counts = {
            n: _total(metrics, n) for n in ("events", "duplicates", "dead_letters", "rekeyed")
        }
        if sum(counts.values()) != last[0]:
            last[0] = sum(counts.values())
            log.info("progress: " + " ".join(f"{k}={int(v)}" for k, v in counts.items()))

    return app


def _table(app: faust.App, name: str, partitions: int) -> Any:
    """A changelog-backed table of raw bytes (Faust picks serializers from key/value types)."""
    return app.Table(
        name,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        schema=faust.Schema(**_RAW),
    )


def _forget(gauge: Any, *labels: str) -> None:
    """Drop a gauge's series, if it has one."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


def _total(metrics: Metrics, name: str) -> float:
    counter = getattr(metrics, name)
    return float(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )
