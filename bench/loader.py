"""Kafka clients of the benchmark: the bulk loader, the paced publisher, and the ceiling loop.

All plain aiokafka. The bulk loader fills one batch per partition at a time (the producer's batch
API: no per-message future), the way a bulk upstream loads; `acks=1` is enough for loading a
local broker. The paced publisher sends each event when the wall clock reaches its event time,
in the batches a live upstream's producer would make of them, and remembers when it sent what.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.workload import Msg
from pipeline.core.ingest import parse_event
from pipeline.runtime.topics import partition_for

BATCH_BYTES = 512 * 1024
TICK = 0.01  # the paced publisher hands over what fell due at most this often (a producer's linger)


@dataclass(frozen=True)
class Topics:
    """Where the workload goes: orders and interactions, with their partition count."""

    interactions: str
    orders: str
    partitions: int

    def of(self, m: Msg) -> str:
        return self.orders if m.orders else self.interactions


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> None:
    """Delete every topic of these runs (ours and the workers' internal ones)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def _batching_producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    """A producer for our own batches of up to `BATCH_BYTES`; `acks=1` is enough for loading
    a local broker."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=linger_ms,
        max_batch_size=BATCH_BYTES,
        max_request_size=4 * BATCH_BYTES,
    )


async def load(bootstrap: str, topics: Topics, msgs: Sequence[Msg]) -> float:
    """Publish every message keyed by customer, as fast as the producer goes; return seconds."""
    producer = _batching_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        lanes: dict[tuple[str, int], list[Msg]] = {}
        for m in msgs:
            lanes.setdefault(
                (topics.of(m), partition_for(m.key.decode(), topics.partitions)), []
            ).append(m)
        for topic in {topics.interactions, topics.orders}:
            await producer.partitions_for(topic)  # metadata first: time the sending only
        started = time.perf_counter()
        futures = await asyncio.gather(*(_lane(producer, t, p, ms) for (t, p), ms in lanes.items()))
        await asyncio.gather(*(f for fs in futures for f in fs))
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def _lane(
    producer: AIOKafkaProducer, topic: str, partition: int, msgs: list[Msg]
) -> list[asyncio.Future[object]]:
    """One partition's messages, in order, batch after batch (one batch in flight per partition)."""
    futures = []
    batch = producer.create_batch()
    for m in msgs:
        if batch.append(key=m.key, value=m.value, timestamp=None) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=m.key, value=m.value, timestamp=None)
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


@dataclass
class Paced:
    """What a paced run sent: (topic, partition, offset) -> wall-clock send time."""

    sent: dict[tuple[str, int, int], float] = field(default_factory=dict)
    count: int = 0
    first: float = 0.0  # wall-clock time of the first send
    last: float = 0.0  # ... and of the last
    lag_max: float = 0.0  # how far behind its schedule the publisher fell at worst
    cpu_seconds: float = 0.0  # the publisher's own CPU while it sent


@dataclass
class _Lane:
    """One partition's due messages, waiting for its sender task."""

    topic: str
    partition: int
    due: list[tuple[Msg, float]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[tuple[asyncio.Future[object], list[float]]] = field(default_factory=list)
    closed: bool = False  # nothing more will fall due


async def paced(bootstrap: str, topics: Topics, msgs: Sequence[Msg]) -> Paced:
    """Send each message when the wall clock reaches its event time (Poisson-like arrivals).

    Every `TICK` at most, the messages that fell due go to their partition's sender, which
    publishes what has gathered as one batch (the producer's batch API, one batch in flight per
    partition, as `producer.send()` would make them): the publisher's own CPU per message is a
    fraction of `send()`'s, and on a machine it shares with the worker and the broker that CPU
    is taken from them. A message's send time is when it fell due and was handed over.
    """
    producer = _batching_producer(bootstrap, linger_ms=0)
    await producer.start()
    out = Paced()
    try:
        await producer.partitions_for(topics.interactions)
        await producer.partitions_for(topics.orders)
        lanes: dict[tuple[str, int], _Lane] = {}
        route = []  # each message's lane, worked out before the clock starts
        for m in msgs:
            where = (topics.of(m), partition_for(m.key.decode(), topics.partitions))
            lane = lanes.get(where)
            if lane is None:
                lane = lanes[where] = _Lane(*where)
            route.append(lane)
        senders = [asyncio.create_task(_sender(producer, lane)) for lane in lanes.values()]
        cpu = time.process_time()
        i, tick = 0, 0.0
        while i < len(msgs):
            now = time.time()
            if msgs[i].t > now or now < tick + TICK:
                await asyncio.sleep(max(min(TICK, msgs[i].t - now), tick + TICK - now))
                continue
            tick = now
            out.lag_max = max(out.lag_max, now - msgs[i].t)
            if not i:
                out.first = now
            while i < len(msgs) and msgs[i].t <= now:
                lane = route[i]
                lane.due.append((msgs[i], now))
                lane.wake.set()
                i += 1
            out.last = now
        for lane in lanes.values():
            lane.closed = True
            lane.wake.set()
        await asyncio.gather(*senders)
        await producer.flush()
        out.cpu_seconds = time.process_time() - cpu
        out.count = len(msgs)
        for lane in lanes.values():
            for future, times in lane.sent:
                base = future.result().offset  # type: ignore[attr-defined]
                for n, at in enumerate(times):
                    out.sent[(lane.topic, lane.partition, base + n)] = at
        return out
    finally:
        await producer.stop()


async def _sender(producer: AIOKafkaProducer, lane: _Lane) -> None:
    """Publish a lane's due messages in order, whatever gathered while the last batch was out."""
    while True:
        await lane.wake.wait()
        lane.wake.clear()
        due, lane.due = lane.due, []
        while due:
            batch, times = producer.create_batch(), []
            for m, at in due:
                if batch.append(key=m.key, value=m.value, timestamp=None) is None:
                    break
                times.append(at)
            due = due[len(times) :]
            future = await producer.send_batch(batch, lane.topic, partition=lane.partition)
            lane.sent.append((future, times))
        if lane.closed and not lane.due:
            return


async def ceiling(bootstrap: str, topics: Topics, scratch: str, total: int, group: str) -> float:
    """The client's own ceiling: consume everything, validate each value with the pipeline's
    models (`parse_event`), produce one small record per event. Returns events per second,
    from the first record fetched to the last output acknowledged."""
    consumer = AIOKafkaConsumer(
        topics.interactions,
        topics.orders,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1024 * 1024,
        fetch_max_bytes=8 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        seen, started = 0, 0.0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batches and not started:
                started = time.perf_counter()
            for records in batches.values():
                for r in records:
                    event = parse_event(r.value)
                    await producer.send(scratch, event.event_id.encode(), key=r.key)
                seen += len(records)
        await producer.flush()
        return total / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, partitions: int
) -> list[tuple[bytes | None, bytes | None, int, int, int]]:
    """Every record of a topic now: (key, value, partition, offset, timestamp ms)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for tp, records in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                out += [(r.key, r.value, r.partition, r.offset, r.timestamp) for r in records]
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await consumer.stop()
