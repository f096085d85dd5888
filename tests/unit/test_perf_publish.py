"""Dispatch sends a decision's records together (docs/performance.md, item 4), and still writes
its table only after every one of them is acknowledged; records with one topic and key still go
one after the other."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.config import Config, load_config
from pipeline.routers.step import DispatchStep
from pipeline.runtime.metrics import Metrics

CONFIG = """
handlers:
  logistics: {capacity: 3, resolve_within: 8h, escalate_to: supervisors}
  supervisors: {capacity: 2, resolve_within: 4h}
  triage: {capacity: 100}
route:
  handler: triage
  routes:
    - {name: logistics, match: ["rule = missing_delivery"], handler: logistics}
"""


class Acks:
    """Sinks whose sends wait until the test acknowledges them, in any order."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self.acked: list[tuple[str, dict[str, Any]]] = []

    def sink(self, topic: str) -> Any:
        acks = self

        class Sink:
            async def send(
                self, key: bytes | None, value: bytes | None, headers: Any = None
            ) -> None:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                acks.waiting.append((topic, value or b"", fut))
                await fut
                acks.acked.append((topic, orjson.loads(value or b"{}")))

        return Sink()

    def ack(self, index: int = 0) -> None:
        _, _, fut = self.waiting.pop(index)
        fut.set_result(None)

    def topics(self) -> list[str]:
        return [t for t, _, _ in self.waiting]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    file = tmp_path / "c.yaml"
    file.write_text(CONFIG)
    return load_config(file)


def record(status: str, event_time: str) -> dict[str, Any]:
    return {
        "exception_id": "x1",
        "rule": "missing_delivery",
        "kind": "absence",
        "status": status,
        "severity": "high",
        "customer_id": "c1",
        "subject": {"order_id": "o1"},
        "context": {},
        "event_time": event_time,
    }


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class DictTable(dict[bytes, bytes]):
    """The dispatch table in memory, written as DispatchStep writes `StateTable`."""

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        self[key] = value

    async def delete(self, key: bytes, partition: int) -> None:
        self.pop(key, None)


def step(config: Config, acks: Acks, table: DictTable) -> DispatchStep:
    return DispatchStep(
        config=config,
        metrics=Metrics.create(),
        table=table,
        handler_sink=acks.sink,
        log_sink=acks.sink("log"),
        dlq=acks.sink("dlq"),
        topic="dispatch",
    )


def test_a_decisions_records_are_in_flight_together_and_the_table_waits_for_all(
    config: Config,
) -> None:
    asyncio.run(_together(config))


def test_records_with_one_topic_and_key_go_one_after_the_other(config: Config) -> None:
    asyncio.run(_one_after_the_other(config))


def test_a_decision_that_fails_leaves_the_counts_as_the_table_has_them(config: Config) -> None:
    """The records of a decision were not all written: its table writes are dropped, and the
    open counts the dispatcher changed with them go back too (capacity stays true)."""

    async def scenario() -> tuple[int, DictTable]:
        acks: Acks = Acks()
        table = DictTable()
        router = step(config, acks, table)

        def refuse(name: str) -> Any:
            raise RuntimeError("the handler topic is gone")

        router.handler_sink = refuse
        letters: list[bytes | None] = []

        class DeadLetters:
            async def send(self, key: bytes | None, value: bytes | None, letter: Any) -> None:
                letters.append(value)

        router.dlq = DeadLetters()  # type: ignore[assignment]
        await router.handle(
            orjson.dumps({"exception": record("open", "2026-01-01T00:00:00+00:00")}), 0
        )
        return router.dispatcher.open_count("logistics"), table

    count, table = asyncio.run(scenario())
    assert table == {}
    assert count == 0


async def _together(config: Config) -> None:
    acks: Acks = Acks()
    table = DictTable()
    router = step(config, acks, table)
    message = orjson.dumps({"exception": record("open", "2026-01-01T00:00:00+00:00")})
    handled = asyncio.create_task(router.handle(message, 0))
    await settle()
    logistics = config.handler_topic("logistics")
    assert sorted(acks.topics()) == sorted([logistics, "log"])  # both sent, neither acked
    acks.ack(acks.topics().index("log"))
    await settle()
    assert not handled.done()  # the handler topic has not acknowledged yet
    assert table == {}
    acks.ack()
    await handled
    assert list(table) == [b"x1"]
    assert [t for t, _ in acks.acked] == ["log", logistics]


async def _one_after_the_other(config: Config) -> None:
    acks: Acks = Acks()
    table = DictTable()
    router = step(config, acks, table)
    opened = asyncio.create_task(
        router.handle(orjson.dumps({"exception": record("open", "2026-01-01T00:00:00+00:00")}))
    )
    await settle()
    acks.ack()
    acks.ack()
    await opened
    # Resolved after its 8 h deadline: the catch-up escalation, then the update that closes it;
    # both for customer c1 on the exception log.
    resolved = asyncio.create_task(
        router.handle(orjson.dumps({"exception": record("resolved", "2026-01-01T09:00:00+00:00")}))
    )
    await settle()
    assert acks.topics().count("log") == 1  # the second log record waits for the first's ack
    first_log = acks.topics().index("log")
    acks.ack(first_log)
    await settle()
    assert acks.topics().count("log") == 1
    while acks.waiting:
        acks.ack()
        await settle()
    await resolved
    logged = [r for t, r in acks.acked if t == "log"][1:]
    assert [r["status"] for r in logged] == ["escalated", "resolved"]
    assert router.dispatcher.open_count("supervisors") == 0
    assert table[b"x1"]
