"""bench/phases.py's drain timing: a worker that takes the whole backlog between two polls of
its counters (a smoke run's few thousand events) gives a rate, not a division by zero."""

from __future__ import annotations

from typing import Any

import pytest

from bench import phases


class Instant:
    """A worker that had consumed everything by the first poll."""

    def alive(self) -> None:
        pass

    def cpu_seconds(self) -> float:
        return 1.0

    def sched(self) -> tuple[float, float]:
        return (0.0, 0.0)


def test_a_drain_faster_than_one_poll_is_timed_as_one_poll(monkeypatch: Any) -> None:
    monkeypatch.setattr(phases, "consumed", lambda workers: 3000.0)
    d = phases.drain([Instant()], 3000, timeout=5)  # type: ignore[list-item]
    assert d.seconds == phases.POLL
    assert d.events_per_s == pytest.approx(3000 / phases.POLL)
