"""The handler app without a broker: what a handler sees, and what their answers publish."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console, RenderableType

from pipeline.config import load_config
from pipeline.core.durations import age_text
from pipeline.core.errors import HandleError
from pipeline.core.models import ExceptionRecord
from pipeline.tools.handle import cases as handle_cases
from pipeline.tools.handle import handle
from pipeline.tools.handle.cases import Case, Command
from pipeline.tools.handle.handle import Desk

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
A = "a1" + "0" * 30
B = "a2" + "0" * 30
C = "c3" + "0" * 30
TOPIC = "casewatch.handler.logistics"


def record(
    exception_id: str = A, status: str = "open", at: datetime = T0, **fields: Any
) -> ExceptionRecord:
    base: dict[str, Any] = {
        "exception_id": exception_id,
        "rule": "missing_delivery",
        "kind": "absence",
        "status": status,
        "severity": "high",
        "customer_id": "c-1",
        "subject": {"order_id": "o-1"},
        "event_time": at,
        "detected_at": at,
        "evidence": ["e-1"],
        "route": {"handler": "logistics", "path": "root/logistics", "reason": "normal"},
        "rule_version": "v1",
    }
    return ExceptionRecord.model_validate(base | fields)


def plain(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(renderable)
    return out.getvalue()


def row_of(text: str, exception_id: str) -> str:
    rows = [line for line in text.splitlines() if exception_id[:8] in line]
    assert len(rows) == 1, text
    return rows[0]


def cells(row: str) -> list[str]:
    return re.split(r"\s{2,}", row.strip())


def test_fold_keeps_the_latest_record_and_the_first_seen_time() -> None:
    cases = handle_cases.fold(
        [
            record(A, at=T0),
            record(B, at=T0 + timedelta(hours=1)),
            record(A, "escalated", at=T0 + timedelta(hours=2)),
        ]
    )
    assert set(cases) == {A, B}
    assert cases[A].record.status == "escalated"
    assert cases[A].first_seen == T0
    assert (cases[A].number, cases[B].number) == (1, 2)


def test_folding_batch_by_batch_gives_the_same_state_as_all_at_once() -> None:
    records = [record(A), record(B), record(A, "resolved"), record(C), record(B, "escalated")]
    stepwise = handle_cases.fold(records[3:], handle_cases.fold(records[:3]))
    assert stepwise == handle_cases.fold(records)


def test_rows_are_newest_first_and_resolved_ones_left_out_by_default() -> None:
    cases = handle_cases.fold(
        [
            record(A, at=T0),
            record(B, at=T0 + timedelta(hours=1)),
            record(C, at=T0 + timedelta(hours=2)),
            record(C, "resolved", at=T0 + timedelta(hours=3)),
        ]
    )
    assert [c.record.exception_id for c in handle_cases.newest_first(cases)] == [B, A]
    shown = handle_cases.newest_first(cases, show_resolved=True)
    assert [c.record.exception_id for c in shown] == [C, B, A]


FULL_CONTEXT = {
    "profile": {"tier": "gold", "name": "Ada Lovelace", "segment": "consumer"},
    "recent_events": [
        {"type": "order.shipped", "occurred_at": "2026-03-01T08:00:00Z"},
        {"type": "interaction.contact", "occurred_at": "2026-03-01T09:00:00Z"},
        {"type": "interaction.complaint", "occurred_at": "2026-03-01T09:30:00Z"},
    ],
    "open_orders": [
        {"order_id": "o-1", "status": "shipped", "value": {"amount": "89.00", "currency": "EUR"}}
    ],
    "open_exceptions": [
        {"exception_id": A, "rule": "missing_delivery", "status": "open"},
        {"exception_id": "x-1", "rule": "complaint_cluster", "status": "open"},
        {"exception_id": "x-2", "rule": "repeated_contact", "status": "escalated"},
        {"exception_id": "x-3", "rule": "delivery_failed", "status": "resolved"},
    ],
}


def test_a_row_shows_what_a_handler_needs() -> None:
    route = {"handler": "logistics", "path": "root/vip", "reason": "overflow"}
    cases = handle_cases.fold([record(A, "escalated", context=FULL_CONTEXT, route=route)])
    now = T0 + timedelta(hours=2, minutes=5)
    row = row_of(plain(handle_cases.table(handle_cases.newest_first(cases), now)), A)
    assert cells(row) == [
        "1",
        A[:8],
        "2h05m",
        "escalated",
        "high",
        "missing_delivery",
        "c-1 (gold, Ada Lovelace)",
        "order_id=o-1",
        "overflow",
        "3 recent events, 1 open order 89.00 EUR, 2 other open",
    ]


def test_an_exception_past_resolve_within_says_late_unless_resolved() -> None:
    cases = handle_cases.fold(
        [record(A, at=T0), record(B, at=T0 + timedelta(hours=7)), record(C, "resolved", at=T0)]
    )
    out = plain(
        handle_cases.table(
            handle_cases.newest_first(cases, True), T0 + timedelta(hours=9), "", timedelta(hours=8)
        )
    )
    assert "9h00m late" in row_of(out, A)
    assert "late" not in row_of(out, B)
    assert "late" not in row_of(out, C)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({}, "-"),
        (
            {"profile": None, "recent_events": None, "open_orders": None, "open_exceptions": None},
            "-",
        ),
        ({"recent_events": [{"type": "order.placed", "occurred_at": "x"}]}, "1 recent event"),
        (
            {"recent_events": [{"event_id": "e-2"}, {"type": "order.placed"}, {"event_id": "e-1"}]},
            "3 recent events (2 evidence)",
        ),
        ({"profile": "gold", "recent_events": "many", "open_exceptions": [None, 3]}, "-"),
        ({"open_orders": [{"order_id": "o-9", "value": None}]}, "1 open order"),
        (
            {
                "open_orders": [
                    {"value": {"amount": "100.00", "currency": "EUR"}},
                    {"value": {"amount": "0.50", "currency": "EUR"}},
                    {"value": {"amount": "5.00", "currency": "USD"}},
                ]
            },
            "3 open orders 100.50 EUR + 5.00 USD",
        ),
    ],
)
def test_context_at_a_glance_survives_missing_null_and_odd_keys(
    context: dict[str, Any], expected: str
) -> None:
    r = record(context=context)
    assert handle_cases.glance(r) == expected
    assert cells(row_of(plain(handle_cases.table([Case(1, T0, r)], T0)), A))[6] == "c-1"


def test_text_from_a_record_is_shown_as_is_not_read_as_markup() -> None:
    r = record(context={"profile": {"tier": "[bold]gold[/]", "name": "Bobby [/] Tables"}})
    out = plain(handle_cases.table([Case(1, T0, r)], T0))
    assert "c-1 ([bold]gold[/], Bobby [/] Tables)" in out


def test_an_empty_table_says_there_is_nothing_to_do() -> None:
    assert "nothing to do" in plain(handle_cases.table([], T0, "logistics"))


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=12, seconds=59), "12m"),
        (timedelta(hours=5, minutes=7), "5h07m"),
        (timedelta(days=3, hours=4, minutes=59), "3d04h"),
        (timedelta(seconds=-30), "0s"),
    ],
)
def test_age_text(age: timedelta, text: str) -> None:
    assert age_text(age) == text


def test_a_resolution_is_published_as_the_contract_says() -> None:
    at = T0 + timedelta(hours=2)
    answer = handle_cases.resolution(record(A), "logistics", "resolved", at, "refund sent")
    assert orjson.loads(handle_cases.encode(answer)) == {
        "exception_id": A,
        "handler": "logistics",
        "status": "resolved",
        "at": "2026-03-01T12:00:00Z",
        "note": "refund sent",
    }
    bare = handle_cases.resolution(record(A), "logistics", "acknowledged", at)
    assert "note" not in orjson.loads(handle_cases.encode(bare))


def test_lookup_by_full_id_unique_prefix_or_row_number() -> None:
    cases = handle_cases.fold([record(A), record(B), record(C)])
    assert handle_cases.lookup(cases, A, TOPIC).record.exception_id == A
    assert handle_cases.lookup(cases, "a2", TOPIC).record.exception_id == B
    assert handle_cases.lookup(cases, "c", TOPIC).record.exception_id == C
    rows = handle_cases.newest_first(cases)
    assert handle_cases.lookup(cases, "3", TOPIC, rows).record.exception_id == C


def test_an_unknown_id_names_the_handler_topic() -> None:
    cases = handle_cases.fold([record(A), record(B)])
    with pytest.raises(HandleError) as info:
        handle_cases.lookup(cases, "ff", TOPIC)
    assert str(info.value).startswith(f"no exception 'ff' on {TOPIC} (2 exceptions there)")


def test_an_ambiguous_prefix_lists_what_it_matches() -> None:
    cases = handle_cases.fold([record(A), record(B), record(C)])
    with pytest.raises(HandleError) as info:
        handle_cases.lookup(cases, "a", TOPIC)
    assert str(info.value) == (
        f"'a' matches 2 exceptions on {TOPIC} ({A[:12]}, {B[:12]}): give more of the id"
    )


def test_a_number_is_a_row_on_screen_only_in_the_live_view() -> None:
    cases = handle_cases.fold([record("12ab" + "0" * 28)])
    with pytest.raises(HandleError, match="no row 12 on screen"):
        handle_cases.lookup(cases, "12", TOPIC, handle_cases.newest_first(cases))
    assert handle_cases.lookup(cases, "12", TOPIC).number == 1


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("a 2", Command("acknowledged", "2")),
        ("r 1 refund sent, apologised\n", Command("resolved", "1", "refund sent, apologised")),
        ("x a1b2", Command("reassigned", "a1b2")),
        ("q\n", Command(None)),
    ],
)
def test_parse_command(line: str, command: Command) -> None:
    assert handle_cases.parse_command(line) == command


@pytest.mark.parametrize("line", ["r", "resolve 1", "a1", "delete 3"])
def test_a_command_it_does_not_know_shows_the_usage(line: str) -> None:
    with pytest.raises(ValueError, match="type a N"):
        handle_cases.parse_command(line)


class Recorder:
    """Stands in for the producer: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))


def test_live_commands_wait_for_the_first_read_then_publish_to_the_row_they_name() -> None:
    config = load_config()
    desk = Desk(config, "logistics", show_resolved=False)
    assert desk.take("r 2 parcel found") == []
    assert desk.take(([record(A)], False)) == []
    assert desk.take(([record(B, customer_id="c-2")], True)) == ["r 2 parcel found"]

    producer, console = Recorder(), Console(file=io.StringIO())
    assert asyncio.run(desk.command("r 2 parcel found", producer, console))
    [(topic, value, key)] = producer.sent
    assert (topic, key) == (config.topics.resolutions, b"c-2")
    sent = orjson.loads(value)
    assert (sent["exception_id"], sent["status"], sent["note"]) == (B, "resolved", "parcel found")
    assert "resolved #2" in desk.status


def test_a_live_command_for_a_row_that_is_not_there_publishes_nothing() -> None:
    desk = Desk(load_config(), "logistics", show_resolved=False)
    desk.take(([record(A)], True))
    producer = Recorder()
    assert asyncio.run(desk.command("a 7", producer, Console(file=io.StringIO())))
    assert producer.sent == []
    assert desk.status == "no row 7 on screen: use a number from the # column"
    assert not asyncio.run(desk.command("q", producer, Console(file=io.StringIO())))


def test_a_hidden_resolved_row_cannot_be_answered_by_its_number() -> None:
    desk = Desk(load_config(), "logistics", show_resolved=False)
    desk.take(([record(A), record(B, "resolved")], True))
    producer = Recorder()
    asyncio.run(desk.command("a 2", producer, Console(file=io.StringIO())))
    assert producer.sent == []
    assert desk.status.startswith("no row 2 on screen")
    asyncio.run(desk.command("a a2", producer, Console(file=io.StringIO())))
    assert [orjson.loads(value)["exception_id"] for _, value, _ in producer.sent] == [B]


def run_handle(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="casewatch")
    handle.add_parser(parser.add_subparsers())
    args = parser.parse_args(["handle", *argv])
    code: int = args.func(args)
    return code


def test_an_unknown_handler_exits_2_listing_the_configured_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "casewatch.yaml"
    config.write_text("handlers:\n  logistics: {}\n  triage: {}\nroute:\n  handler: triage\n")
    assert run_handle("logisitcs", "--config", str(config), "--once") == 2
    assert capsys.readouterr().err == (
        "casewatch: handle: unknown handler 'logisitcs': the configured ones are logistics, triage\n"
    )


def test_a_note_needs_an_answer_to_go_with(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_handle("logistics", "--note", "called the carrier") == 2
    assert "--note goes with --ack, --resolve or --reassign" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["logistics", "--once", "--ack", "a1"],
        ["logistics", "--resolve", "a1", "--reassign", "a1"],
        ["logistics", "--resolve", "a1", "--note", "x" * 5000],
    ],
)
def test_conflicting_or_oversized_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_handle(*argv)
    assert info.value.code == 2


def test_an_exception_escalated_away_shows_as_handed_on_and_leaves_the_open_list() -> None:
    """logistics missed its SLA on A: dispatch escalated A to supervisors and told logistics.
    logistics' view says to whom and when, never `late`, and drops it from the open rows; the
    resolution (by supervisors, or by logistics itself) closes it there too."""
    handed = record(
        status="escalated",
        at=T0 + timedelta(hours=8),
        route={"handler": "supervisors", "path": "root/logistics", "reason": "escalation: ..."},
    )
    cases = handle_cases.fold([record(), record(B), handed])
    now = T0 + timedelta(hours=9)
    assert [
        c.record.exception_id for c in handle_cases.newest_first(cases, False, "logistics")
    ] == [B]
    everything = handle_cases.newest_first(cases, True, "logistics")
    row = row_of(
        plain(handle_cases.table(everything, now, within=timedelta(hours=8), handler="logistics")),
        A,
    )
    assert "handed on to supervisors 1h00m ago" in row
    assert "late" not in row
    # supervisors' own view of the same record: its open case
    assert cases[A].handed_on("supervisors") is None
    closed = handle_cases.fold([record(status="resolved", at=T0 + timedelta(hours=10))], cases)
    assert closed[A].record.status == "resolved"
    assert closed[A].handed_on("logistics") is None
