"""Create or verify the contract's topics with the Kafka admin API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from aiokafka import TopicPartition, errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from pipeline.config import Config, Runtime


def partition_for(customer_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by `customer_id`."""
    return partition_of_key(customer_id.encode(), partitions)


def partition_of_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class TopicSpec:
    """A topic Casewatch needs, with its settings."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


def wanted(config: Config) -> list[TopicSpec]:
    """The topics of the contract. All share one partition count: a customer's events on
    every topic must land on the same partition number (co-partitioning)."""
    t, p = config.topics, config.pipeline
    keep = {
        "cleanup.policy": "delete",
        "retention.ms": str(int(t.retention.total_seconds() * 1000)),
    }
    # The dead-letter topic keeps originals up to the largest event plus headers, and longer.
    dlq = {
        "cleanup.policy": "delete",
        "retention.ms": str(int(t.dlq_retention.total_seconds() * 1000)),
        "max.message.bytes": str(max(2 * 1024 * 1024, 2 * p.max_event_bytes)),
    }
    names = [t.interactions, t.orders, t.resolutions, t.exceptions]
    names += sorted({config.handler_topic(h) for h in config.handlers})
    specs = [TopicSpec(n, p.partitions, p.replication_factor, keep) for n in names]
    specs.append(TopicSpec(t.dlq, p.partitions, p.replication_factor, dlq))
    return specs + internal(config)


# Clock ticks are only read as they come: an hour of them is plenty for a restarting worker.
TICK_RETENTION = timedelta(hours=1)


def internal_name(app_id: str, role: str) -> str:
    """The worker's own topics: `rekey`, `tick`, `dispatch`, and `<table>-changelog` (Faust's
    naming for the customers, clocks and dispatch tables)."""
    return f"{app_id}-{role}"


def internal(config: Config) -> list[TopicSpec]:
    """The worker's own topics, created here rather than by the first worker: a worker that
    creates a topic can join the group before the topic is in its metadata, and then nobody
    consumes it until the next rebalance (seen with the one-partition dispatch topic)."""
    p, t = config.pipeline, config.topics
    n, rf = p.partitions, p.replication_factor
    keep = {
        "cleanup.policy": "delete",
        "retention.ms": str(int(t.retention.total_seconds() * 1000)),
    }
    ticks = {
        "cleanup.policy": "delete",
        "retention.ms": str(int(TICK_RETENTION.total_seconds() * 1000)),
    }
    compact = {"cleanup.policy": "compact"}
    name = partial(internal_name, p.app_id)
    return [
        TopicSpec(name("rekey"), n, rf, keep),
        TopicSpec(name("tick"), n, rf, ticks),
        TopicSpec(name("dispatch"), 1, rf, keep),
        TopicSpec(name("customers-changelog"), n, rf, compact),
        TopicSpec(name("clocks-changelog"), n, rf, compact),
        TopicSpec(name("dispatch-changelog"), 1, rf, compact),
    ]


async def ensure(config: Config, bootstrap: str) -> list[tuple[TopicSpec, str]]:
    """Create missing topics; report each as `created`, `ok`, or a mismatch to fix by hand."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="casewatch-topics",
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        specs = wanted(config)
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication, topic_configs=s.configs)
                    for s in missing
                ]
            )
            for name, code, *_ in response.topic_errors:  # e.g. no CREATE ACL: not "created"
                if code and code != errors.TopicAlreadyExistsError.errno:
                    raise errors.for_code(code)(name)
        present = [s.name for s in specs if s.name in existing]
        counts = {}
        if present:
            for d in await admin.describe_topics(present):
                counts[d["topic"]] = len(d["partitions"])
        report = []
        for s in specs:
            if s in missing:
                report.append((s, "created"))
            elif counts.get(s.name) != s.partitions:
                report.append(
                    (
                        s,
                        f"has {counts.get(s.name)} partitions, config says {s.partitions}: "
                        "recreate it or set pipeline.partitions to match",
                    )
                )
            else:
                report.append((s, "ok"))
        return report
    finally:
        await admin.close()


async def partitions_of(
    bootstrap: str, topics: Sequence[str], client_id: str
) -> dict[str, list[TopicPartition]]:
    """The partitions of each topic that exists (a topic missing from the result does not).
    A topic this client may not see raises `TopicAuthorizationFailedError`: not "does not
    exist", which would send the user looking for a typo instead of an ACL."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        **Runtime.from_env().security.aiokafka_kwargs(),
    )
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    if denied := [
        d["topic"]
        for d in described
        if d["error_code"] == errors.TopicAuthorizationFailedError.errno
    ]:
        raise errors.TopicAuthorizationFailedError(*denied)
    return {
        d["topic"]: [TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]]
        for d in described
        if d["error_code"] == 0 and d["partitions"]
    }
