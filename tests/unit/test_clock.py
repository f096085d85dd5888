"""The partition clock with an injected wall clock: watermark, lateness, idleness, restore."""

from __future__ import annotations

from pipeline.core.clock import NEVER, PartitionClock

L, IDLE = 300.0, 1.0  # allowed lateness 5 min, idle after 1 s
T = 1_800_000_000.0  # an event time
W = 2_000_000_000.0  # a wall time, far from event time (history being re-published)


def clock() -> PartitionClock:
    return PartitionClock(lateness=L, idle_after=IDLE)


def test_the_watermark_trails_the_newest_event_by_the_allowed_lateness() -> None:
    c = clock()
    assert c.now(W) == NEVER
    c.observe("orders", T, W)
    assert c.now(W + 0.5) == T - L
    c.observe("orders", T - 100, W + 0.6)  # out of order, within lateness: the clock holds
    assert c.now(W + 0.7) == T - L


def test_an_event_older_than_the_clock_is_late_and_the_clock_never_goes_back() -> None:
    c = clock()
    c.observe("orders", T, W)
    assert c.observe("orders", T - L - 1, W + 0.1) is True
    assert c.observe("orders", T - L, W + 0.2) is False  # exactly at the clock: on time
    assert c.now(W + 0.3) == T - L


def test_a_topic_read_ahead_cannot_move_the_clock_past_the_other() -> None:
    c = clock()
    c.expect(("interactions", "orders"), W)
    c.observe("interactions", T + 3600, W)
    assert c.now(W + 0.5) == NEVER  # orders not seen yet, and not idle yet
    c.observe("orders", T, W + 0.6)
    assert c.now(W + 0.7) == T - L  # the smaller of the two


def test_an_expected_input_waits_for_the_first_event_not_the_worker_start() -> None:
    c = clock()
    c.expect(("interactions", "orders"), W)
    c.observe("interactions", T + 3600, W + 30)  # input starts long after the worker did
    assert c.now(W + 30.5) == NEVER  # orders still holds the clock back
    c.observe("orders", T, W + 30.6)
    assert c.now(W + 30.7) == T - L


def test_an_input_quiet_for_idle_after_stops_holding_the_clock() -> None:
    c = clock()
    c.expect(("interactions", "orders"), W)
    c.observe("interactions", T, W + 0.5)
    assert c.now(W + 0.9) == NEVER
    assert c.now(W + 1.4) == NEVER  # orders gets idle_after from the first event (W + 0.5)
    c.observe("interactions", T + 10, W + 1.45)
    assert c.now(W + 1.5) == T + 10 - L  # ... then stops holding the clock


def test_an_input_resuming_after_the_partition_was_quiet_gives_the_others_idle_after() -> None:
    """A backlog published to both topics after a pause (a restart, an outage, a backfill):
    the interactions records come in a fetch before the orders ones. The orders input was
    quiet for longer than idle_after, but it holds the clock for idle_after from the
    interactions' first record, time for its own backlog to be fetched (a CI run of
    2026-12-07: a missing_delivery opened for an order whose delivery was in that backlog)."""
    c = clock()
    c.expect(("interactions", "orders"), W)
    c.observe("orders", T, W)
    c.observe("interactions", T, W)
    assert c.now(W + 30.0) == T + 29.0  # all quiet: history runs on at wall speed
    c.observe("interactions", W + 29.0, W + 30.0)  # recent events, after the pause
    assert c.now(W + 30.5) == T + 29.0  # orders holds it: not the interactions' W - L
    c.observe("orders", T + 100, W + 30.6)  # its backlog, fetched a moment later
    assert c.now(W + 30.7) == T + 29.0
    c.observe("interactions", W + 31.0, W + 31.5)
    assert c.now(W + 31.7) == W + 31.0 - L  # orders quiet for idle_after again: passed


def test_an_input_busy_all_along_does_not_wake_the_others() -> None:
    c = clock()
    c.expect(("interactions", "orders"), W)
    c.observe("orders", T, W)
    for i in range(1, 40):  # interactions every 0.1 s, orders quiet
        c.observe("interactions", T + i, W + 0.1 * i)
    assert c.now(W + 4.0) == T + 39 - L  # orders idle: the interactions drive the clock


def test_live_input_gone_quiet_follows_the_wall_clock() -> None:
    c = clock()
    c.observe("orders", W - 8.0, W)  # a real-time event that took 8 s to arrive
    assert c.now(W + 0.5) == W - 8.0 - L
    assert c.now(W + 1.0) == W  # quiet for idle_after: the wall clock, idle_after behind
    assert c.now(W + 5.0) == W + 4.0
    # An event that was 8 s on its way, arriving after the pause, is late (and still processed).
    assert c.observe("orders", W + 5.0 - 8.0, W + 5.0) is True


def test_a_quiet_backfill_of_history_runs_from_its_newest_event_at_wall_speed() -> None:
    c = clock()
    c.observe("orders", T, W)
    assert c.now(W + 0.99) == T - L
    assert c.now(W + 1.0) == T  # quiet for idle_after: from the newest event time on
    assert c.now(W + 11.0) == T + 10.0
    # A deadline 3 s after the last event fires idle_after after it passed.
    assert c.now(W + 3.0 + IDLE) >= T + 3.0


def test_replay_has_no_wall_clock_and_can_be_moved_to_the_end() -> None:
    c = clock()
    c.observe("orders", T, None)
    c.observe("interactions", T + 50, None)
    assert c.now(None) == T - L
    assert c.advance(T + 3600) == T + 3600


def test_a_restored_clock_resumes_and_counts_the_time_it_was_down() -> None:
    c = clock()
    c.restore(T, W)
    assert c.now(W + 0.5) == T
    assert c.now(W + 61.0) == T + 60.0
    c.observe("orders", T + 10, W + 62.0)  # input again: the clock does not go back
    assert c.now(W + 62.5) == T + 61.0  # where it was when the event came


def test_a_partition_taken_over_mid_backlog_goes_on_as_its_owner_would_have() -> None:
    """Its previous owner was killed while catching up: the clock it recorded trailed the
    newest event by the allowed lateness. The inputs' newest events were live (seconds old).
    The new owner gives the partition's unread events idle_after to arrive; none do, so it
    follows the wall clock as the old owner would have, and deadlines up to now fire (chaos
    run of 2026-12-04, 05:00 UTC: 61 deadlines of one partition never fired)."""
    old = clock()
    old.observe("orders", W - 30.0, W)
    old.observe("interactions", W - 2.0, W)
    mark = old.now(W)
    assert mark == W - 30.0 - L  # catching up: both inputs active
    record = {"mark": mark, "wall": W, "seen": old.seen()}
    new = clock()
    new.expect(("orders", "interactions", "rekey"), W + 5.0)  # started after the kill
    new.restore(record["mark"], record["wall"], record["seen"], W + 5.0)
    assert new.now(W + 5.5) == mark  # waiting for unread events
    assert new.now(W + 6.0) == W + 5.0  # none came: live, the wall clock idle_after behind
    # Before (the mark alone) it ran from the mark at wall speed, L behind for good.
    legacy = clock()
    legacy.restore(record["mark"], record["wall"])
    assert legacy.now(W + 60.0) == W - 30.0 - L + 59.0


def test_after_a_restore_the_unread_backlog_holds_the_clock_back() -> None:
    old = clock()
    old.observe("orders", W - 30.0, W)
    new = clock()
    new.restore(old.now(W), W, old.seen(), W + 5.0)
    new.observe("orders", W - 200.0, W + 5.5)  # the backlog the old owner did not commit
    assert new.now(W + 6.0) == W - 30.0 - L  # events arriving: no jump to the wall clock


def test_a_restored_backfill_runs_from_its_newest_event() -> None:
    old = clock()
    old.observe("orders", T, W)  # history: far behind the wall clock
    new = clock()
    new.restore(old.now(W), W, old.seen(), W + 10.0)
    assert new.now(W + 10.5) == T - L
    assert new.now(W + 21.0) == T + 10.0  # from the newest event at wall speed
