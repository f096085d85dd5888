"""Integration tests run against a real Apache Kafka broker: `make test` starts one with
deploy/kafka/local-kafka and sets KAFKA_BOOTSTRAP_SERVERS. Each test uses its own topics."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG


@pytest.fixture(scope="session")
def bootstrap() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.fail(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run `make test`, which starts a local broker"
        )
    return servers


@pytest.fixture
def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def config_file(tmp_path: Path, unique: str) -> Path:
    """The shipped config (its rules included), with topics and group this test's alone."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["pipeline"] |= {"app_id": unique, "partitions": 3}
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{unique}.{name}"
    data["topics"]["handler_prefix"] = f"{unique}.handler."
    file = tmp_path / "casewatch.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file
