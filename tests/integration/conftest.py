"""Integration tests run against a real Apache Kafka broker: `make test` starts one with
deploy/kafka/local-kafka and sets KAFKA_BOOTSTRAP_SERVERS. Each test uses its own topics."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest


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
    """A config whose topics and group are this test's alone."""
    file = tmp_path / "casewatch.yaml"
    file.write_text(
        f"""version: 1
pipeline:
  app_id: {unique}
  partitions: 3
topics:
  interactions: {unique}.interactions
  orders: {unique}.orders
  resolutions: {unique}.resolutions
  exceptions: {unique}.exceptions
  dlq: {unique}.dlq
"""
    )
    return file
