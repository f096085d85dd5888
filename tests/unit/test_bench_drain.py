"""bench/phases.py's drain timing: a worker that takes the whole backlog between two polls of
its counters (a smoke run's few thousand events) gives a rate and the CPU it used, not a
division by zero."""

from __future__ import annotations

from typing import Any

import pytest

from bench import phases


class Instant:
    """A worker that consumed nothing by the first poll and everything by the second, using
    0.02 CPU s in between."""

    def __init__(self) -> None:
        self.polls = 0

    def consumed(self) -> float:
        self.polls += 1
        return 0.0 if self.polls == 1 else 3000.0

    def alive(self) -> None:
        pass

    def cpu_seconds(self) -> float:
        return 1.0 if self.polls <= 1 else 1.02

    def sched(self) -> tuple[float, float]:
        return (0.0, 0.0)


def test_a_drain_faster_than_one_poll_is_timed_as_one_poll(monkeypatch: Any) -> None:
    worker = Instant()
    monkeypatch.setattr(phases, "consumed", lambda workers: worker.consumed())
    d = phases.drain([worker], 3000, timeout=5)  # type: ignore[list-item]
    assert d.seconds == phases.POLL
    assert d.events_per_s == pytest.approx(3000 / phases.POLL)
    # its CPU counts from the poll before it (bench/floor.py divides by it)
    assert d.cpu_seconds == pytest.approx(0.02)
