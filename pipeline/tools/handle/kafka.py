"""The handler app on Kafka: following its topic from the beginning with no consumer group,
and publishing a `Resolution` keyed by the exception's customer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from pipeline.config import Runtime
from pipeline.core.errors import HandleError
from pipeline.core.models import ExceptionRecord, Resolution
from pipeline.runtime.topics import partitions_of
from pipeline.tools.handle.cases import Case, encode, fold

log = logging.getLogger(__name__)


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
    found = await partitions_of(bootstrap, [topic], "casewatch-handle")
    if topic not in found:
        raise HandleError(
            f"topic {topic} does not exist on Kafka at {bootstrap}: check the handler's topic "
            "in the config (topics.handler_prefix + name, or its `topic`)"
        )
    return found[topic]


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


def resolutions_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer for the resolutions topic: every answer acknowledged by all replicas, once."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )


async def publish(producer: Any, topic: str, record: ExceptionRecord, answer: Resolution) -> None:
    """Send a Resolution keyed by the exception's customer, and wait for the brokers' ack."""
    await producer.send_and_wait(topic, encode(answer), key=record.customer_id.encode())
