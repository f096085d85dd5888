"""The producer buffer behind table changelogs: a flush (before every offset commit) must wait
until each change is acknowledged, and fail if one was refused."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage, PendingMessage

from pipeline.durable import ChangelogNotWritten, DurableBuffer


class SlowTopic:
    """A changelog whose broker takes `accept` s to take a message and `ack` s to acknowledge it."""

    def __init__(self, accept: float, ack: float, refuse: bool = False) -> None:
        self.accept, self.ack, self.refuse = accept, ack, refuse
        self.acked: list[Any] = []

    def get_topic_name(self) -> str:
        return "casewatch-customers-changelog"

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> None:
        await asyncio.sleep(self.accept)  # e.g. aiokafka's accumulator full, a broker restart
        asyncio.get_running_loop().call_later(self.ack, self._deliver, fut)

    def _deliver(self, fut: FutureMessage) -> None:
        if self.refuse:
            fut.set_exception(RuntimeError("NotEnoughReplicasError"))
        else:
            self.acked.append(fut.message.key)
            fut.set_result(None)  # type: ignore[arg-type]


def message(topic: SlowTopic, key: bytes) -> FutureMessage:
    pending = PendingMessage(topic, key, b"v", 0, None, None, "raw", "raw", None)  # type: ignore[arg-type]
    return FutureMessage(pending)


async def run(buffer_type: type[ProducerBuffer], topic: SlowTopic, n: int) -> list[Any]:
    app = faust.App("durable-test", autodiscover=False, web_enabled=False)
    buffer = buffer_type()
    buffer.app = app
    await buffer.start()
    try:
        for i in range(n):
            buffer.put(message(topic, b"k%d" % i))
        await buffer.flush()
        return list(topic.acked)  # what the broker holds when the offsets would be committed
    finally:
        if buffer_type is ProducerBuffer:  # it stops with messages still queued
            with pytest.raises(RuntimeError, match="Cannot flush: Producer not Running"):
                await buffer.stop()
        else:
            await buffer.stop()


def test_flush_returns_only_when_every_change_is_acknowledged() -> None:
    topic = SlowTopic(accept=0.15, ack=0.05)
    acked = asyncio.run(run(DurableBuffer, topic, 5))
    assert acked == [b"k0", b"k1", b"k2", b"k3", b"k4"]


def test_fausts_own_flush_lets_a_commit_overtake_unwritten_changes() -> None:
    """Why DurableBuffer exists: if this starts failing, Faust fixed its flush."""
    topic = SlowTopic(accept=0.15, ack=0.05)
    acked = asyncio.run(run(ProducerBuffer, topic, 5))
    assert len(acked) < 5


def test_a_refused_change_fails_the_flush_so_no_offset_is_committed() -> None:
    topic = SlowTopic(accept=0.0, ack=0.01, refuse=True)
    with pytest.raises(
        ChangelogNotWritten, match=r"3 table changes were refused.*customers-changelog"
    ):
        asyncio.run(run(DurableBuffer, topic, 3))


def test_a_broker_that_never_acknowledges_fails_the_flush_after_the_timeout() -> None:
    async def scenario() -> None:
        app = faust.App("durable-test", autodiscover=False, web_enabled=False)
        buffer = DurableBuffer()
        buffer.app = app
        buffer.flush_timeout = 0.3
        await buffer.start()
        try:
            buffer.put(message(SlowTopic(accept=0.0, ack=3600), b"k"))
            with pytest.raises(ChangelogNotWritten, match="1 table changes not acknowledged"):
                await buffer.flush()
        finally:
            buffer.flush_timeout = 0.01
            with pytest.raises(ChangelogNotWritten):  # stopping flushes too, and says so
                await buffer.stop()

    asyncio.run(scenario())
