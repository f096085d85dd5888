"""A three-broker cluster loses nothing when a broker is bounced mid-stream. This module starts
and stops its own cluster (deploy/kafka/local-kafka with CASEWATCH_KAFKA_NODES=3) on free
ports below the ephemeral range (tests/ports.py), its data under pytest's tmp path, whatever
KAFKA_BOOTSTRAP_SERVERS says: the shared broker is a single node. About 55 seconds, most of it
starting and stopping Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.workers import LOCAL_KAFKA, local_kafka
from tests.ports import free_base

pytestmark = pytest.mark.integration

PARTITIONS = 6
COUNT = 2000
BOUNCED = 2  # the node stopped and started again while the producer runs
PACE = 0.002  # seconds between sends: each quarter of the messages takes about a second


@dataclass
class Cluster:
    bootstrap: str
    env: dict[str, str]  # the environment local-kafka runs with

    def local_kafka(self, *args: str) -> str:
        return local_kafka(self.env, *args)

    async def local_kafka_async(self, *args: str, codes: tuple[int, ...] = (0,)) -> str:
        """local-kafka without blocking the event loop: the producer keeps sending meanwhile."""
        process = await asyncio.create_subprocess_exec(
            str(LOCAL_KAFKA),
            *args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode in codes, f"local-kafka {' '.join(args)}:\n{err.decode()}"
        return out.decode().strip()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Without any Kafka setting of this process (make test sets KAFKA_BOOTSTRAP_SERVERS, which
    # local-kafka would use instead of starting anything; a CASEWATCH_KAFKA_SECURE would refuse).
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CASEWATCH_KAFKA_"))
    } | {
        "CASEWATCH_KAFKA_NODES": "3",
        # node N listens on PORT + 10 * (N - 1), its controller one port up
        "CASEWATCH_KAFKA_PORT": str(free_base(0, 1, 10, 11, 20, 21)),
        "CASEWATCH_KAFKA_DIR": str(tmp_path_factory.mktemp("cluster") / "run"),
    }
    found = Cluster("", env)
    try:
        found.bootstrap = found.local_kafka("start")
        yield found
    finally:
        found.local_kafka("stop", "--purge")


@pytest.fixture(scope="module")
def topic(cluster: Cluster) -> str:
    name = f"cluster.{os.urandom(5).hex()}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            # No min.insync.replicas of its own: it must come from the cluster's defaults.
            await admin.create_topics([NewTopic(name, PARTITIONS, 3)])
        finally:
            await admin.close()

    asyncio.run(create())
    return name


async def describe(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The topic's partitions (leader, replicas, ISR) and its effective configuration."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # A broker may answer before the new topic's metadata reached it (seen once in CI:
        # no partitions): ask again, as clients do, for up to 30 s.
        # The same for its configuration (seen once: an answer without the topic's entries).
        async with asyncio.timeout(30):
            while True:
                (found,) = await admin.describe_topics([topic])
                if found["partitions"]:
                    break
                await asyncio.sleep(0.5)
            while True:
                (response,) = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic)]
                )
                error, _, _, _, entries = response.resources[0]
                if error == 0 and entries:
                    break
                await asyncio.sleep(0.5)
        configs = {entry[0]: entry[1] for entry in entries}
        return found["partitions"], configs
    finally:
        await admin.close()


def key(i: int) -> bytes:
    return f"key-{i:05d}".encode()


def value(i: int) -> bytes:
    return f"value-{i:05d}".encode()


async def produce_while_bouncing(cluster: Cluster, topic: str) -> None:
    """COUNT keyed messages with acks=all from an idempotent producer; node BOUNCED is stopped
    after the first quarter and started again after the third, sends going on meanwhile."""
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    deliveries: list[asyncio.Future[Any]] = []

    async def send(numbers: range) -> None:
        for i in numbers:
            deliveries.append(await producer.send(topic, value(i), key=key(i)))
            await asyncio.sleep(PACE)

    quarter = COUNT // 4
    try:
        await send(range(quarter))
        stopping = asyncio.create_task(cluster.local_kafka_async("stop-node", str(BOUNCED)))
        await send(range(quarter, 2 * quarter))  # while the node shuts down
        await stopping
        status = await cluster.local_kafka_async("status", codes=(3,))
        assert f"node {BOUNCED} not running" in status, status
        starting = asyncio.create_task(cluster.local_kafka_async("start-node", str(BOUNCED)))
        await send(range(2 * quarter, 3 * quarter))  # while it is down, then starting
        await starting
        await send(range(3 * quarter, COUNT))  # once it is back, catching up
        await asyncio.gather(*deliveries)  # raises if any message was not acknowledged
    finally:
        await producer.stop()


async def read_back(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed message of the topic, from the beginning to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes | None]] = []
        async with asyncio.timeout(60):
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    for batch in (await consumer.getmany(tp, timeout_ms=1000)).values():
                        records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        await consumer.stop()


def test_topic_has_three_replicas_and_min_insync_two(cluster: Cluster, topic: str) -> None:
    port = int(cluster.env["CASEWATCH_KAFKA_PORT"])
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{port + 10 * n}" for n in range(3))
    partitions, configs = asyncio.run(describe(cluster.bootstrap, topic))
    assert len(partitions) == PARTITIONS
    for partition in partitions:
        assert sorted(partition["replicas"]) == [1, 2, 3], partition
    assert configs["min.insync.replicas"] == "2"
    assert configs["unclean.leader.election.enable"] == "false"


def test_no_message_lost_or_duplicated_while_a_broker_is_bounced(
    cluster: Cluster, topic: str
) -> None:
    before, _ = asyncio.run(describe(cluster.bootstrap, topic))
    assert any(p["leader"] == BOUNCED for p in before), "the bounce would move no leader"

    asyncio.run(produce_while_bouncing(cluster, topic))

    records = asyncio.run(read_back(cluster.bootstrap, topic))
    got = Counter(records)
    want = {(key(i), value(i)) for i in range(COUNT)}
    lost = sorted(want - got.keys())
    assert not lost, f"{len(lost)} of {COUNT} messages lost, e.g. {lost[:5]}"
    duplicated = {record: n for record, n in got.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} messages more than once, e.g. {list(duplicated)[:5]}"
    assert got.keys() == want
    assert len(records) == COUNT

    # The bounced node is a full replica again: back in every partition's ISR.
    deadline = time.monotonic() + 60
    while True:
        after, _ = asyncio.run(describe(cluster.bootstrap, topic))
        if all(sorted(p["isr"]) == [1, 2, 3] for p in after):
            break
        assert time.monotonic() < deadline, f"node {BOUNCED} is not back in every ISR: {after}"
        time.sleep(1)
