"""The benchmark's paced publisher (bench/loader.paced) against the broker: every message is
published once, in its customer's partition, in order, and the send time it records for each
(topic, partition, offset) belongs to that very message and is when it fell due. The end-to-end
latencies of `bench/run.py` are matched by these offsets: a wrong one times another event."""

from __future__ import annotations

import asyncio

from bench import loader, workload
from pipeline.runtime.topics import partition_for


def test_the_paced_publisher_records_each_message_at_its_own_offset_when_it_fell_due(
    bootstrap: str, unique: str
) -> None:
    topics = loader.Topics(f"{unique}.interactions", f"{unique}.orders", 3)
    for name in (topics.interactions, topics.orders):
        asyncio.run(loader.create_topic(bootstrap, name, topics.partitions))
    msgs = workload.paced(300, 400.0, 2.0, unique, 3)
    assert len(msgs) > 500

    sent = asyncio.run(loader.paced(bootstrap, topics, msgs))

    # an upstream repeat is the same message twice (the workload has a few): times of each
    due: dict[bytes, list[workload.Msg]] = {}
    for m in msgs:
        due.setdefault(m.value, []).append(m)
    records = sorted(
        (topic, partition, offset, key, value)
        for topic in (topics.interactions, topics.orders)
        for key, value, partition, offset, _ in asyncio.run(
            loader.read_all(bootstrap, topic, topics.partitions)
        )
    )
    assert sent.count == len(msgs) == len(records) == len(sent.sent)
    order: dict[tuple[str, int], list[float]] = {}
    for topic, partition, offset, key, value in records:
        assert value is not None
        copies = due[value]
        assert key == copies[0].key
        assert topic == topics.of(copies[0])
        assert partition == partition_for(copies[0].key.decode(), topics.partitions)
        at = sent.sent[(topic, partition, offset)]
        # handed over once due, at the next tick (10 ms) or soon after on a busy machine
        assert any(m.t <= at < m.t + 1.0 for m in copies), (at, [m.t for m in copies])
        order.setdefault((topic, partition), []).append(at)
    # each partition holds its messages in the order they were handed over
    assert all(times == sorted(times) for times in order.values())
    assert sent.cpu_seconds > 0
