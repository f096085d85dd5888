"""The detectors' clock: event time per partition, with a wall-clock fallback for idle input.

Event time drives every decision. A partition is fed by several inputs (the interactions and
orders topics, and the re-key topic); each input keeps the newest event time it has seen (its
*high mark*). The partition's clock, its watermark, is the smallest high mark of the inputs
that are active, minus the allowed lateness: one topic read ahead of the other cannot push the
clock past events the other still holds, and events up to `allowed_lateness` out of order are
still on time (no deadline after them has fired yet). The clock never goes back.

Faust only moves windows when a later event arrives (faust #250, #385), so a partition whose
input goes quiet would never fire its deadlines. An input is idle when it is caught up (the
worker has read every record the broker holds for it) and has brought no event for
`idle_after`; an idle input stops holding the clock back. When a partition's input resumes
after all of it was quiet for `idle_after`, the other inputs get `idle_after` again from then:
a backlog published to both topics is not fetched from both at once. An input with records
still unread is never idle, however long it delivers nothing (the worker's fetches may be
serving its other inputs, or it is catching up after a restart): passing it would fire
deadlines whose closing events are still in its backlog. When every input is idle:
- live input (the newest event is within `allowed_lateness` of the wall clock) follows the wall
  clock, `idle_after` behind it: a deadline that has passed fires about `idle_after` after it
  passed (plus one tick), with no further input at all;
- history being re-published (events far older than the wall clock) keeps running from its
  newest event time at wall-clock speed, `high + (wall - last arrival) - idle_after`, so a
  pause in a backfill does not jump its clock to today (use `casewatch replay` for history).
An event that arrives more than `idle_after` after its own time, after such a pause, is late:
set `idle_after` above the producers' usual delay.

Late events (older than the clock when they arrive) are counted and then processed like any
other: they still count in their windows, and a late delivery or cancellation resolves an
exception that already fired. Nothing is dropped; what already fired is not retracted.

Pure logic: wall time is passed in (None in replay, where only event time exists).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

NEVER = float("-inf")


@dataclass(slots=True)
class PartitionClock:
    """The clock of one partition, fed by one or more inputs."""

    lateness: float
    idle_after: float
    mark: float = NEVER  # the clock's value so far: it never goes back
    highs: dict[str, float] = field(default_factory=dict)  # input -> newest event time
    arrived: dict[str, float] = field(default_factory=dict)  # input -> wall time of last event
    restored: tuple[float, float] | None = None  # (mark, wall time it was recorded)
    last: float = NEVER  # wall time of the newest arrival on any input (NEVER: none yet)

    def expect(self, sources: tuple[str, ...], wall: float) -> None:
        """Inputs known in advance (live: the source topics): until one has been seen or has been
        quiet for `idle_after`, it holds the clock back, as a topic read behind the others would."""
        for source in sources:
            if source not in self.highs:
                self.highs[source] = NEVER
                self.arrived[source] = wall

    def observe(
        self, source: str, event_time: float, wall: float | None, unread: Collection[str] = ()
    ) -> bool:
        """Take one event's time from input `source` as it arrives; return whether it is late."""
        late = event_time < self.now(wall, unread)
        if wall is not None and wall - self.last >= self.idle_after:
            # The partition's first event, or its first after every input was quiet: the
            # other inputs get their `idle_after` from now, not from when the worker started
            # or from their last event, to show what they hold. A backlog published to two
            # topics at once is not fetched from both at the same moment; passing the one
            # fetched second would fire deadlines whose closing events are in it.
            for other in self.highs:
                self.arrived[other] = wall
        if event_time > self.highs.get(source, NEVER):
            self.highs[source] = event_time
        if wall is not None:
            self.arrived[source] = wall
            self.last = wall
        return late

    def now(self, wall: float | None = None, unread: Collection[str] = ()) -> float:
        """The clock at wall time `wall` (None: event time only, as in replay). `unread`: the
        inputs with records not read yet (never idle)."""
        low = None  # the lowest high mark of the active inputs
        for source, high in self.highs.items():
            if (
                wall is None
                or wall - self.arrived.get(source, wall) < self.idle_after
                or source in unread
            ) and (low is None or high < low):
                low = high
        if low is not None:
            clock = low - self.lateness
        elif wall is not None and any(h != NEVER for h in self.highs.values()):
            seen = {src: h for src, h in self.highs.items() if h != NEVER}
            clock = max(h + (wall - self.arrived[src]) - self.idle_after for src, h in seen.items())
            if wall - max(seen.values()) <= self.lateness:
                # Live input (its newest event is recent): follow the wall clock itself.
                clock = max(clock, wall - self.idle_after)
        elif self.restored is not None and wall is not None:
            mark, at = self.restored
            clock = mark + max(0.0, wall - at - self.idle_after)
        else:
            clock = NEVER  # nothing seen: no customer here has a deadline yet
        self.mark = max(self.mark, clock)
        return self.mark

    def advance(self, until: float) -> float:
        """Move the clock to `until` (replay: the end of input)."""
        self.mark = max(self.mark, until)
        return self.mark

    def seen(self) -> dict[str, float]:
        """Each input's newest event time, recorded with the clock (`restore`)."""
        return {source: high for source, high in self.highs.items() if high != NEVER}

    def restore(
        self,
        mark: float,
        at_wall: float,
        seen: Mapping[str, float] | None = None,
        wall: float | None = None,
    ) -> None:
        """Resume from a clock value recorded at wall time `at_wall` (after a restart or a
        rebalance), and from the inputs' newest event times then (`seen`, taken up at wall
        time `wall`).

        With them, each input holds the clock as a newly seen one does: for `idle_after`
        from now, time for the partition's unread events to arrive; if none do, the clock
        goes on as the previous owner's would have once its input went quiet, from the
        newest event at wall speed, or with the wall clock when the input was live. Without
        them, a previous owner stopped in the middle of a backlog (its clock still
        `allowed_lateness` behind the newest event) would leave a clock that stays that far
        behind for good. Records written before `seen` was recorded resume from `mark`."""
        self.mark = max(self.mark, mark)
        self.restored = (mark, at_wall)
        if seen is None or wall is None:
            return
        for source, high in seen.items():
            if high > self.highs.get(source, NEVER):
                self.highs[source] = high
                self.arrived[source] = wall


@dataclass(slots=True)
class PipelineClock:
    """The whole pipeline's event time, as the dispatcher sees it: the most advanced of the
    partitions' clocks. SLA deadlines run on it, so they fire with idle input like the
    detectors' deadlines. The most advanced, not the slowest: partitions are read in bursts
    and a partition that is behind (or has only old history) must not hold every handler's
    SLA back; an update whose own time is past the SLA deadline escalates first anyway, so
    the outcome depends on event time (see routers/dispatch.py). Never goes back."""

    partitions: dict[int, float] = field(default_factory=dict)
    mark: float = NEVER

    def report(self, partition: int, clock: float) -> float:
        """Partition `partition`'s clock is at `clock`; return the pipeline's clock."""
        if clock is not None and clock != NEVER:
            self.partitions[partition] = max(self.partitions.get(partition, NEVER), clock)
            self.mark = max(self.mark, clock)
        return self.mark

    def advance(self, until: float) -> float:
        self.mark = max(self.mark, until)
        return self.mark
