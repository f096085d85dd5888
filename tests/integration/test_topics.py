"""`casewatch topics` against the real broker: creates, then verifies, the contract's topics."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

pytestmark = pytest.mark.integration


def topics(config: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def describe(bootstrap: str, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}
        (resp,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, names[-1])]
        )
        dlq = {entry[0]: entry[1] for entry in resp.resources[0][4]}
        return counts, dlq
    finally:
        await admin.close()


def test_topics_are_created_then_verified(config_file: Path, bootstrap: str, unique: str) -> None:
    first = topics(config_file, bootstrap)
    assert first.returncode == 0, first.stderr
    # the contract's 5 topics, one per handler of the shipped config (7), and the worker's own
    # 6 (re-key, tick, dispatch, three table changelogs): none left for a worker to create
    assert first.stdout.count("created") == 18
    assert f"{unique}.handler.logistics" in first.stdout
    assert re.search(rf"^{unique}-dispatch +1 partitions +created$", first.stdout, re.M)
    assert re.search(rf"^{unique}-customers-changelog +3 partitions +created$", first.stdout, re.M)
    second = topics(config_file, bootstrap)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count(" ok") == 18

    names = [
        f"{unique}.{n}"
        for n in ("interactions", "orders", "resolutions", "exceptions", "handler.vip", "dlq")
    ]
    counts, dlq = asyncio.run(describe(bootstrap, names))
    assert counts == {n: 3 for n in names}
    assert dlq["retention.ms"] == str(30 * 86400 * 1000)
    assert int(dlq["max.message.bytes"]) >= 2 * 1024 * 1024


def test_partition_mismatch_is_reported(config_file: Path, bootstrap: str, unique: str) -> None:
    assert topics(config_file, bootstrap).returncode == 0
    config_file.write_text(config_file.read_text().replace("partitions: 3", "partitions: 4"))
    result = topics(config_file, bootstrap)
    assert result.returncode == 1
    assert (
        "has 3 partitions, config says 4: recreate it or set pipeline.partitions to match"
        in result.stdout
    )
