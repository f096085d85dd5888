"""Casewatch against a secured broker, as an operator runs it: SASL_SSL with SCRAM-SHA-512,
mTLS, StandardAuthorizer with allow.everyone.if.no.acl.found=false, and ACLs that give each
handler its own topic only. This module starts and stops its own secure broker
(deploy/kafka/local-kafka with CASEWATCH_KAFKA_SECURE=1) on free ports (tests/ports.py),
whatever KAFKA_BOOTSTRAP_SERVERS says: the shared plain broker cannot enforce anything."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.config import DEFAULT_CONFIG
from pipeline.runtime.security import KafkaSecurity
from tests.integration.workers import Worker, free_port, local_kafka, start_worker, wait_for
from tests.ports import free_base

pytestmark = pytest.mark.integration

USERS = ("admin", "worker", "logistics", "vip")
FAST = 15.0  # seconds a refused sign-in may take, end to end, process start included


@dataclass
class Broker:
    """The secure broker: where it listens, its CA, every user's password."""

    bootstrap: str
    mtls: str
    ca: str
    passwords: dict[str, str]
    control: dict[str, str]  # the environment local-kafka runs with

    def env(self, user: str, **extra: str) -> dict[str, str]:
        """A Casewatch process's environment, signed in as `user` over SASL_SSL."""
        return (
            clean_env()
            | {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SSL_CAFILE": self.ca,
                "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": self.passwords[user],
            }
            | extra
        )

    def cert_env(self, name: str | None) -> dict[str, str]:
        """The environment of a client of the mTLS listener, with `name`'s certificate."""
        env = clean_env() | {
            "KAFKA_BOOTSTRAP_SERVERS": self.mtls,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": self.ca,
        }
        if name:
            cert, key = self.local_kafka("cert", name).split()
            env |= {"KAFKA_SSL_CERTFILE": cert, "KAFKA_SSL_KEYFILE": key}
        return env

    def local_kafka(self, *args: str) -> str:
        return local_kafka(self.control, *args)

    def allow(
        self, principal: str, operations: str, resource: str, name: str, prefixed: bool
    ) -> None:
        args = ["acl", "--add", "--allow-principal", f"User:{principal}", f"--{resource}", name]
        for operation in operations.split():
            args += ["--operation", operation]
        if prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        self.local_kafka(*args)


def clean_env() -> dict[str, str]:
    """This process's environment without any Kafka client setting (make test sets some)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    passwords = {user: f"pw-{user}-{secrets.token_hex(8)}" for user in USERS}
    port = free_base(0, 1, 2)  # SASL_SSL, the controller, mTLS
    control = clean_env() | {
        "CASEWATCH_KAFKA_PORT": str(port),
        "CASEWATCH_KAFKA_SECURE": "1",
        "CASEWATCH_KAFKA_USERS": " ".join(f"{u}:{p}" for u, p in passwords.items()),
    }
    found = Broker("", f"127.0.0.1:{port + 2}", "", passwords, control)
    found.local_kafka("stop", "--purge")  # users are written at format time: a clean slate
    try:
        found.bootstrap = found.local_kafka("start")
        env = dict(line.split("=", 1) for line in found.local_kafka("env").splitlines())
        found.ca = env["KAFKA_SSL_CAFILE"]
        assert env["KAFKA_SASL_PASSWORD"] == passwords["admin"]
        yield found
    finally:
        found.local_kafka("stop", "--purge")


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"s{secrets.token_hex(5)}"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> Path:
    """The shipped config with topics and group of this module's own."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["pipeline"] |= {"app_id": prefix, "partitions": 3}
    for name in ("interactions", "orders", "resolutions", "exceptions", "dlq"):
        data["topics"][name] = f"{prefix}.{name}"
    data["topics"]["handler_prefix"] = f"{prefix}.handler."
    file = tmp_path_factory.mktemp("secure") / "casewatch.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    return file


@pytest.fixture(scope="module")
def acls(broker: Broker, prefix: str, config_file: Path) -> None:
    """The topics (created by admin) and the ACL layout of docs/security.md."""
    casewatch("topics", config=config_file, env=broker.env("admin"))
    # The worker: its topics (sources, sinks, handler topics), its internal topics (created by
    # Faust: rekey, tick, dispatch, changelogs, assignor), and its consumer group.
    broker.allow("worker", "Read Write Describe", "topic", f"{prefix}.", prefixed=True)
    internal = "Read Write Create Describe DescribeConfigs"
    broker.allow("worker", internal, "topic", f"{prefix}-", prefixed=True)
    broker.allow("worker", "Read Describe", "group", prefix, prefixed=True)
    # Each handler: read its own topic, answer on the resolutions topic. Nothing else.
    for handler in ("logistics", "vip"):
        broker.allow(handler, "Read", "topic", f"{prefix}.handler.{handler}", prefixed=False)
        broker.allow(handler, "Write", "topic", f"{prefix}.resolutions", prefixed=False)


@pytest.fixture(scope="module")
def worker(
    broker: Broker, acls: None, config_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """`casewatch worker` signed in as `worker`."""
    tmp = tmp_path_factory.mktemp("worker")
    env = broker.env("worker", CASEWATCH_STORE="memory://")
    with start_worker(config_file, env, tmp) as running:
        yield running


def casewatch(
    *args: str, config: Path, env: dict[str, str], ok: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def failed_delivery(n: int) -> dict[str, Any]:
    return {
        "event_id": f"sec-{n}",
        "type": "order.delivery_failed",
        "occurred_at": datetime.now(UTC).isoformat(),
        "customer_id": f"c-sec-{n}",
        "order_id": f"o-sec-{n}",
        "reason": "nobody home",
    }


def publish(path: Path, n: int, config: Path, env: dict[str, str]) -> None:
    path.write_bytes(orjson.dumps(failed_delivery(n)) + b"\n")
    result = casewatch("produce", str(path), config=config, env=env)
    assert result.stdout.startswith(f"published 1 events from {path}")


def handled(config: Path, env: dict[str, str], handler: str, customer: str) -> str:
    """`casewatch handle HANDLER --once`, once it shows an exception of `customer`."""
    shown = [""]

    def there() -> bool:
        shown[0] = casewatch("handle", handler, "--once", "--all", config=config, env=env).stdout
        return customer in shown[0]

    wait_for(f"{customer}'s exception on {handler}'s topic", there, 90)
    return shown[0]


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def test_the_worker_routes_to_logistics_and_logistics_reads_its_topic(
    broker: Broker, worker: Worker, config_file: Path, prefix: str, tmp_path: Path
) -> None:
    publish(tmp_path / "events.jsonl", 1, config_file, broker.env("worker"))
    table = handled(config_file, broker.env("logistics"), "logistics", "c-sec-1")
    assert f"logistics · {prefix}.handler.logistics" in table
    assert "delivery_failed" in table
    assert "Authenticated as worker via SCRAM-SHA-512" in worker.log.read_text()
    # The worker signed in and its ACLs were enough: nothing was refused along the way.
    assert "AuthorizationFailed" not in worker.log.read_text()


def test_a_handler_reading_another_handlers_topic_is_denied(
    broker: Broker, worker: Worker, config_file: Path, prefix: str
) -> None:
    denied = casewatch(
        "handle", "vip", "--once", config=config_file, env=broker.env("logistics"), ok=False
    )
    assert denied.returncode == 1
    assert denied.stderr == (
        f"casewatch: handle: Kafka denied KAFKA_SASL_USERNAME=logistics access to topic "
        f"{prefix}.handler.vip (TopicAuthorizationFailedError): ask the cluster's admin for an "
        "ACL, or check that this is the right user\n"
    )
    # The pattern report on that topic: the same refusal, not "does not exist".
    report = casewatch(
        "report",
        "--topic",
        f"{prefix}.handler.vip",
        config=config_file,
        env=broker.env("logistics"),
        ok=False,
    )
    assert report.returncode == 1
    assert report.stderr.startswith(
        f"casewatch: report: Kafka denied KAFKA_SASL_USERNAME=logistics access to topic "
        f"{prefix}.handler.vip (TopicAuthorizationFailedError)"
    ), report.stderr
    # vip itself may: the refusal is the ACL, not the topic.
    own = casewatch("handle", "vip", "--once", config=config_file, env=broker.env("vip"))
    assert f"vip · {prefix}.handler.vip" in own.stdout
    # Nor can a handler create topics: `casewatch topics` says so instead of "created".
    sneaky = casewatch("topics", config=config_file, env=broker.env("logistics"), ok=False)
    assert sneaky.returncode == 1
    assert "Kafka denied KAFKA_SASL_USERNAME=logistics access to topic" in sneaky.stderr
    assert "Traceback" not in sneaky.stderr


@pytest.mark.parametrize("command", ["worker", "topics", "produce", "handle"])
def test_a_wrong_password_fails_fast_with_a_clear_message(
    broker: Broker, acls: None, config_file: Path, tmp_path: Path, command: str
) -> None:
    user = "worker" if command != "handle" else "logistics"
    wrong = f"not-{broker.passwords[user]}"
    env = broker.env(
        user,
        KAFKA_SASL_PASSWORD=wrong,
        CASEWATCH_METRICS_PORT=str(free_port()),
        CASEWATCH_API_PORT=str(free_port()),
        CASEWATCH_STATE_DIR=str(tmp_path / "state"),
    )
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps(failed_delivery(99)) + b"\n")
    argv = {"produce": [command, str(events)], "handle": [command, "logistics", "--once"]}
    began = time.monotonic()
    result = casewatch(*argv.get(command, [command]), config=config_file, env=env, ok=False)
    took = time.monotonic() - began
    assert result.returncode == 1
    assert took < FAST
    prefix = "casewatch: handle: " if command == "handle" else "casewatch: "
    assert result.stderr == (
        f"{prefix}Kafka rejected the credentials of KAFKA_SASL_USERNAME={user} (SCRAM-SHA-512 "
        f"authentication failed at {broker.bootstrap}): check KAFKA_SASL_PASSWORD and "
        "KAFKA_SASL_MECHANISM\n"
    )
    assert wrong not in result.stdout + result.stderr


def test_client_certificates_on_the_mtls_listener(
    broker: Broker, worker: Worker, config_file: Path, prefix: str, tmp_path: Path
) -> None:
    # A certificate's CN is the principal: CN=worker may publish, CN=logistics may read its
    # topic, and the worker (signed in by password) processes what arrived over mTLS.
    publish(tmp_path / "events.jsonl", 2, config_file, broker.cert_env("worker"))
    logistics = broker.cert_env("logistics")
    handled(config_file, logistics, "logistics", "c-sec-2")
    denied = casewatch("handle", "vip", "--once", config=config_file, env=logistics, ok=False)
    assert denied.returncode == 1
    assert f"access to topic {prefix}.handler.vip (TopicAuthorizationFailedError)" in denied.stderr
    assert "Kafka denied the certificate in KAFKA_SSL_CERTFILE=" in denied.stderr

    anonymous = casewatch(
        "handle", "logistics", "--once", config=config_file, env=broker.cert_env(None), ok=False
    )
    assert anonymous.returncode == 1
    assert last_line(anonymous) == (
        f"casewatch: handle: TLS with Kafka at {broker.mtls} failed (SSLV3_ALERT_BAD_CERTIFICATE): "
        "this listener wants a client certificate: set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"
    )


def test_no_secret_in_logs_metrics_or_exception_records(
    broker: Broker, worker: Worker, config_file: Path, prefix: str, tmp_path: Path
) -> None:
    publish(tmp_path / "events.jsonl", 3, config_file, broker.env("worker"))
    handled(config_file, broker.env("logistics"), "logistics", "c-sec-3")
    topics = [f"{prefix}.exceptions", f"{prefix}.handler.logistics", f"{prefix}.dlq"]
    records = asyncio.run(everything(broker, topics))
    assert any(b"c-sec-3" in r for r in records)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).read()
    log = worker.log.read_bytes()
    for password in broker.passwords.values():
        secret = password.encode()
        assert secret not in log
        assert secret not in metrics
        assert not [r for r in records if secret in r]


async def everything(broker: Broker, topics: list[str]) -> list[bytes]:
    """Every key, value and header on the topics now, read as admin."""
    security = KafkaSecurity.from_env(broker.env("admin"))
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, **security.aiokafka_kwargs())
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(3)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: list[bytes] = []
        async with asyncio.timeout(30):
            while any([await consumer.position(p) < ends[p] for p in parts]):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for m in batch:
                        found += [m.key or b"", m.value or b""]
                        found += [v for _, v in m.headers]
        return found
    finally:
        await consumer.stop()
