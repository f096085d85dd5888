"""`casewatch replay` and the engine it shares with the live worker, on event time."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from pipeline.config import load_config
from pipeline.core.engine import Engine
from pipeline.core.state import VERSION, CustomerState
from pipeline.core.state import plain as state_json
from pipeline.tools.replay import Replay, partition_for

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.jsonl"
T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
CONFIG = load_config()


def ev(n: int, type_: str, hours: float, customer: str = "c-1", **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e-{n}",
            "type": type_,
            "customer_id": customer,
            "occurred_at": (T0 + timedelta(hours=hours)).isoformat(),
            **fields,
        }
    )


def replay(
    lines: list[bytes], until: datetime | None = None, escalations: bool = False
) -> tuple[list[Any], Replay]:
    """The records a replay writes; without SLA escalations unless asked for."""
    r = Replay(CONFIG, errors=io.StringIO())
    records = list(r.feed(lines))
    records += list(r.finish(until.timestamp() if until else None))
    return [x for x in records if escalations or x.status != "escalated"], r


def test_the_sample_yields_one_exception_per_story() -> None:
    records, r = replay(SAMPLE.read_bytes().splitlines())
    assert sorted((x.rule, x.customer_id, x.status) for x in records) == [
        ("complaint_cluster", "cust-cho", "open"),
        ("delivery_failed", "cust-dan", "open"),
        ("missing_delivery", "cust-ana", "open"),
        ("repeat_maintenance", "cust-ben", "open"),
    ]
    assert r.summary.duplicates == 1
    assert sorted((x.rule, x.route.handler) for x in records) == [
        ("complaint_cluster", "retention"),
        ("delivery_failed", "logistics"),
        ("missing_delivery", "vip"),  # Ana is a gold customer
        ("repeat_maintenance", "maintenance"),
    ]
    assert r.summary.invalid == 0


def test_the_same_input_gives_the_same_output_byte_for_byte() -> None:
    lines = SAMPLE.read_bytes().splitlines()
    first = [x.model_dump_json() for x in replay(lines)[0]]
    assert first == [x.model_dump_json() for x in replay(lines)[0]]


def test_deadlines_fire_up_to_until_and_not_beyond() -> None:
    shipped = [ev(1, "order.shipped", 0, order_id="o-1")]  # no promise: 72 h
    assert replay(shipped)[0] == []  # default until: the last event's time
    assert replay(shipped, until=T0 + timedelta(hours=71.9))[0] == []
    (record,) = replay(shipped, until=T0 + timedelta(hours=72))[0]
    assert (record.rule, record.status, record.event_time) == (
        "missing_delivery",
        "open",
        T0 + timedelta(hours=72),
    )
    assert record.source is None  # absent in replay


def test_a_delivery_after_the_deadline_publishes_resolved_with_the_same_id() -> None:
    lines = [
        ev(1, "order.shipped", 0, order_id="o-1"),
        ev(2, "interaction.contact", 100, channel="call", category="x"),  # the clock moves on
        ev(3, "order.delivered", 101, order_id="o-1"),
    ]
    opened, resolved = replay(lines)[0]
    assert (opened.status, resolved.status) == ("open", "resolved")
    assert opened.exception_id == resolved.exception_id
    assert resolved.evidence == ["e-1", "e-3"]
    # Routed to logistics, escalated 8 h later to supervisors, who then get the resolution.
    everything, _ = replay(lines, escalations=True)
    assert [(x.status, x.route.handler) for x in everything] == [
        ("open", "logistics"),
        ("escalated", "supervisors"),
        ("resolved", "supervisors"),
    ]


def test_a_deadline_fires_for_one_customer_when_another_moves_the_clock() -> None:
    a = "c-a"
    # A second customer on the same partition as `a`: its event moves their shared clock.
    b = next(f"c-{i}" for i in range(1000) if partition_for(f"c-{i}", 6) == partition_for(a, 6))
    lines = [
        ev(1, "order.shipped", 0, customer=a, order_id="o-1"),
        ev(2, "interaction.contact", 80, customer=b, channel="call", category="x"),
    ]
    records, _ = replay(lines)
    assert [(x.customer_id, x.rule) for x in records] == [(a, "missing_delivery")]


def test_invalid_lines_are_reported_with_their_number_and_do_not_stop_the_run() -> None:
    r = Replay(CONFIG, errors=(errors := io.StringIO()))
    lines = [b"{not json", ev(1, "order.delivery_failed", 0, order_id="o-1"), b'{"type": "x"}']
    records = list(r.feed(lines, "events.jsonl"))
    assert [x.rule for x in records] == ["delivery_failed"]
    assert r.summary.invalid == 2
    report = errors.getvalue().splitlines()
    assert report[0].startswith("events.jsonl:1: invalid (json_invalid)")
    assert report[1].startswith("events.jsonl:3: invalid")


def test_customers_land_on_the_partition_kafka_gives_their_key() -> None:
    partitioner = DefaultPartitioner()
    for customer in ("cust-ana", "c-1", "ü-42", "x" * 128):
        key = customer.encode()
        assert partition_for(customer, 6) == partitioner(key, list(range(6)), list(range(6)))


def test_a_changed_rule_starts_from_a_fresh_state_and_a_removed_rule_is_dropped() -> None:
    engine = Engine(CONFIG)
    state = CustomerState()
    event = orjson.loads(ev(1, "interaction.maintenance_requested", 0, asset_id="a-1"))
    state, _ = engine.observe(state, event, 0.0)
    assert "repeat_maintenance" in state.rules
    changed = CONFIG.model_copy(
        update={
            "rules": {
                "repeat_maintenance": CONFIG.rules["repeat_maintenance"].model_copy(
                    update={"count": 3}
                )
            }
        }
    )
    second = orjson.loads(ev(2, "interaction.maintenance_requested", 1, asset_id="a-1"))
    _, found = Engine(CONFIG).observe(state, second, 0.0)
    assert [f.rule for f in found] == ["repeat_maintenance"]
    after, found = Engine(changed).observe(state, second, 0.0)
    assert found == []
    assert set(after.rules) == {"repeat_maintenance"}


def test_the_latest_profile_is_kept_for_context() -> None:
    lines = [
        ev(1, "customer.profile", 5, tier="gold", name="Ana"),
        ev(2, "customer.profile", 1, tier="standard"),  # older: ignored
        ev(3, "order.delivery_failed", 6, order_id="o-1"),
    ]
    (record,) = replay(lines)[0]
    assert record.context["profile"]["tier"] == "gold"


def test_states_are_stored_compressed_unless_the_config_says_not_and_give_the_same_records() -> (
    None
):
    """`pipeline.compress_state: false` trades memory for CPU: states are kept uncompressed,
    the findings do not change."""
    lines = SAMPLE.read_bytes().splitlines()
    plain_config = CONFIG.model_copy(
        update={"pipeline": CONFIG.pipeline.model_copy(update={"compress_state": False})}
    )
    compressed, plain = Replay(CONFIG, errors=io.StringIO()), Replay(plain_config)
    ours = [*compressed.feed(lines), *compressed.finish()]
    theirs = [*plain.feed(lines), *plain.finish()]
    assert [r.model_dump() for r in ours] == [r.model_dump() for r in theirs]
    kept = [*compressed.states.values(), *plain.states.values()]
    assert all(state_json(v)["v"] == VERSION for v in kept)
    # Uncompressed is MessagePack, already without JSON's keys and quotes: zstd takes a fifth.
    assert sum(map(len, compressed.states.values())) < 0.85 * sum(map(len, plain.states.values()))
    for customer, value in plain.states.items():
        assert CustomerState.from_bytes(value) == CustomerState.from_bytes(
            compressed.states[customer]
        )


def test_cli_replay_writes_records_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "replay", str(SAMPLE), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    # 4 exceptions, 2 of them escalated past their handler's resolve_within by the end
    assert len(out.read_text().splitlines()) == 6
    assert "replay: 12 lines, 11 events, 0 invalid, 1 duplicates" in done.stderr


@pytest.mark.parametrize("until", ["2026-03-01", "yesterday"])
def test_cli_replay_rejects_an_until_without_a_clear_time(until: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "replay", str(SAMPLE), "--until", until],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--until" in done.stderr
    assert "offset" in done.stderr or "RFC 3339" in done.stderr
