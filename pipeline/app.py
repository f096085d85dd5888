"""build_app(config) -> faust.App: topics, tables and agents wired in one place."""

from __future__ import annotations

from typing import Any

import faust

from pipeline.config import Config, Runtime
from pipeline.metrics import Metrics
from pipeline.sinks.kafka import DeadLetterSink, TopicSink
from pipeline.worker import Ingest

_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def build_app(config: Config, runtime: Runtime, metrics: Metrics) -> faust.App:
    """A Faust app consuming the source topics as raw bytes (we validate, not Faust)."""
    p, t = config.pipeline, config.topics
    app = faust.App(
        p.app_id,
        broker=[f"kafka://{h.strip()}" for h in runtime.bootstrap_servers.split(",")],
        store=runtime.store,
        datadir=runtime.state_dir,
        autodiscover=False,
        web_enabled=False,
        topic_partitions=p.partitions,
        topic_replication_factor=p.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Room for a dead letter that carries an oversized original unchanged.
        producer_max_request_size=4 * 1024 * 1024,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    sources = app.topic(t.interactions, t.orders, partitions=p.partitions, **_RAW)
    rekey_name = f"{p.app_id}-rekey"
    rekey = app.topic(rekey_name, partitions=p.partitions, internal=True, **_RAW)
    dlq = app.topic(t.dlq, **_RAW)
    raw_schema = faust.Schema(**_RAW)
    customers = app.Table("customers", partitions=p.partitions, schema=raw_schema)
    ingest = Ingest(
        config=config,
        metrics=metrics,
        dlq=DeadLetterSink(TopicSink(dlq)),
        rekey=TopicSink(rekey),
        rekey_topic=rekey_name,
        table=customers,
    )

    async def consume(stream: Any) -> None:
        async for event in stream.events():
            await ingest.handle(event.message)

    app.agent(sources, name="ingest")(consume)
    app.agent(rekey, name="rekeyed")(consume)

    @app.task
    async def ready() -> None:
        metrics.up.set(1)

    return app
