"""The worker's consumer against the broker: a fetch of idle partitions holds up the busy ones
for at most the configured fetch wait (50 ms), not Faust's 1.5 s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.runtime.durable import App


def test_an_idle_partitions_fetch_holds_up_a_busy_one_briefly(bootstrap: str, unique: str) -> None:
    """aiokafka has one fetch in flight per broker, for the partitions with no fetched records
    left. Here the idle partition's fetch is sent while the busy one still has records; the
    busy one's next record then waits for that fetch to return."""

    async def scenario() -> float:
        busy, idle = TopicPartition(f"{unique}-busy", 0), TopicPartition(f"{unique}-idle", 0)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(tp.topic, 1, 1) for tp in (busy, idle)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        app = App(unique, broker=f"kafka://{bootstrap}", autodiscover=False, web_enabled=False)
        consumer: Any = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            for value in (b"1", b"2", b"3"):
                await producer.send_and_wait(busy.topic, value)
            await producer.send_and_wait(idle.topic, b"only")
            await consumer.start()
            consumer.assign([busy, idle])
            await consumer.seek_to_beginning(busy, idle)
            assert consumer._fetcher._fetch_max_wait_ms == app.fetch_max_wait_ms == 50
            assert consumer._fetcher._fetch_min_bytes == app.fetch_min_bytes == 64 * 1024
            # Both fetched; the idle one's record taken. Once the busy one's records are older
            # than aiokafka's prefetch backoff (0.1 s), the idle one's next fetch goes out
            # alone, and waits.
            while not (await consumer.getmany(idle, timeout_ms=5000)).get(idle):
                pass
            await asyncio.sleep(0.3)
            assert len((await consumer.getmany(busy, timeout_ms=5000))[busy]) == 3
            sent = time.monotonic()
            await producer.send_and_wait(busy.topic, b"4")
            while not (await consumer.getmany(busy, timeout_ms=5000)).get(busy):
                pass
            return time.monotonic() - sent
        finally:
            await consumer.stop()
            await producer.stop()
            app.consumer._thread.thread_loop.close()  # Faust's consumer thread never ran

    took = asyncio.run(scenario())
    assert took < 0.6, f"the busy partition's record waited {took:.2f} s to be fetched"
