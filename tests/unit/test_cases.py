"""The case view: a customer's records and resolutions folded into cases (pipeline/cases/book.py)
and shown to staff and to the customer (pipeline/cases/views.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.cases import book as B
from pipeline.cases.api import openapi
from pipeline.cases.views import (
    CustomerCaseList,
    StaffCase,
    customer_view,
    staff_view,
    valid_customer_id,
    valid_exception_id,
)
from pipeline.config import load_config
from tests.unit.cases_story import Log, at, config, event, stamp

WEEK = 7 * 86400.0
SHIPPED = load_config()


def fold(
    records: list[dict[str, Any]],
    resolutions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    max_cases: int = 50,
    retention_s: float = WEEK,
) -> B.Book:
    book = B.Book()
    for r in records:
        book = B.apply_record(book, r, retention_s=retention_s, max_cases=max_cases)
    for r in resolutions:
        book = B.apply_resolution(book, r, retention_s=retention_s, max_cases=max_cases)
    return B.loads(B.dumps(book))  # what the table gives back


@pytest.fixture
def story(tmp_path: Path) -> Log:
    """One customer, two parcels shipped, logistics full after one: the first is routed,
    acknowledged, escalated past logistics' 8h and resolved by supervisors; the second
    overflows to supervisors and stays open."""
    log = Log(config(tmp_path, {"    capacity: 50\n": "    capacity: 1\n"}))
    log.feed(
        event(1, "customer.profile", 0, tier="standard", name="Ada Lovelace"),
        event(2, "order.shipped", 0, order_id="o-1"),
        event(3, "order.shipped", 1, order_id="o-2"),
    )
    log.until(73.5)  # 72h with no promise: both fire
    first = log.records[0]["exception_id"]
    log.resolve(first, "logistics", "acknowledged", 74, "calling the carrier")
    log.until(81)  # past 72h + 8h: escalated to supervisors
    log.resolve(first, "supervisors", "resolved", 82, "parcel found at the depot")
    return log


def steps(view: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(s["step"], s["handler"], s["from"], s["by"], s["note"]) for s in view["timeline"]]


def test_a_replayed_sequence_folds_into_one_step_per_real_step(story: Log) -> None:
    assert [r["status"] for r in story.records] == ["open", "open", "escalated", "resolved"]
    book = fold(story.records, story.resolutions)
    first, second = (r["exception_id"] for r in story.records[:2])
    done = staff_view(B.find(book, first), SHIPPED, at(90).timestamp())  # type: ignore[arg-type]
    assert steps(done) == [
        ("detected", None, None, None, None),
        ("routed", "logistics", None, None, None),
        ("acknowledged", "logistics", None, "logistics", "calling the carrier"),
        ("escalated", "supervisors", "logistics", None, None),
        ("resolved", "supervisors", None, "supervisors", "parcel found at the depot"),
    ]
    assert [s["at"] for s in done["timeline"]] == [
        stamp(72),
        stamp(73.5),
        stamp(74),
        stamp(81),
        stamp(82),
    ]
    assert (done["status"], done["handler"], done["resolved_by"]) == (
        "resolved",
        None,
        "supervisors",
    )
    assert (done["resolved_at"], done["sla_missed"]) == (stamp(82), True)
    waiting = staff_view(B.find(book, second), SHIPPED, at(74).timestamp())  # type: ignore[arg-type]
    assert steps(waiting)[1] == ("overflow", "supervisors", "logistics", None, None)
    assert waiting["timeline"][1]["reason"] == "overflow: logistics at capacity (1 open)"
    assert (waiting["status"], waiting["handler"], waiting["handler_since"]) == (
        "open",
        "supervisors",
        stamp(73),  # as dispatch counts it: the time it fired
    )
    assert waiting["due"] == stamp(77)  # supervisors resolve within 4h
    StaffCase.model_validate(done)


def test_redelivered_records_and_resolutions_change_nothing(story: Log) -> None:
    once = B.dumps(fold(story.records, story.resolutions))
    twice = fold(
        [r for r in story.records for _ in (0, 1)], [r for r in story.resolutions for _ in (0, 1)]
    )
    assert B.dumps(twice) == once
    again = twice
    for r in story.records:
        again = B.apply_record(again, r, retention_s=WEEK, max_cases=50)
    assert B.dumps(again) == once


def test_a_resolution_before_its_record_waits_and_is_attached(story: Log) -> None:
    in_order = fold(story.records, story.resolutions)
    book = B.Book()
    for r in story.resolutions:
        book = B.apply_resolution(book, r, retention_s=WEEK, max_cases=50)
    assert B.ids(book) == []
    assert len(book.pending) == 2
    for r in story.records:
        book = B.apply_record(book, r, retention_s=WEEK, max_cases=50)
    assert book.pending == ()
    now = at(90).timestamp()
    assert [staff_view(c, SHIPPED, now) for c in B.cases(book)] == [
        staff_view(c, SHIPPED, now) for c in B.cases(in_order)
    ]


def test_a_resolved_record_sent_to_every_holder_is_one_step(story: Log) -> None:
    resolved = story.records[-1]
    copy = {**resolved, "route": {**resolved["route"], "handler": "logistics"}}
    book = fold([*story.records, copy])
    case = B.find(book, resolved["exception_id"])
    assert case is not None
    assert [s.step for s in case.timeline].count("resolved") == 1


def open_record(n: int, hours: float, customer: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {
        "exception_id": f"{n:032x}",
        "rule": "delivery_failed",
        "kind": "match",
        "status": "open",
        "severity": "high",
        "customer_id": customer,
        "subject": {"order_id": f"o-{n}", "event_id": f"e-{n}"},
        "event_time": stamp(hours),
        "detected_at": stamp(hours),
        "evidence": [f"e-{n}"],
        "context": {"profile": {"tier": "standard", "name": "Ada Lovelace"}},
        "route": {"handler": "logistics", "path": "root/logistics", "reason": "normal"},
        "rule_version": "abc",
        **extra,
    }


def closing(record: dict[str, Any], hours: float) -> dict[str, Any]:
    route = {**record["route"], "reason": "resolved by logistics"}
    return {**record, "status": "resolved", "detected_at": stamp(hours), "route": route}


def test_a_reassignment_is_a_step_of_its_own_and_the_case_moves_with_it(story: Log) -> None:
    second = story.records[1]["exception_id"]  # open with supervisors (overflow)
    story.resolve(second, "supervisors", "reassigned", 75, "not a supervisor's case")
    moved = story.records[-1]
    assert (moved["exception_id"], moved["route"]["reason"]) == (
        second,
        "reassigned by supervisors",
    )
    book = fold(story.records, story.resolutions)
    view = staff_view(B.find(book, second), SHIPPED, at(76).timestamp())  # type: ignore[arg-type]
    handler = moved["route"]["handler"]
    assert handler != "supervisors"
    assert steps(view)[-1] == (
        "reassigned",
        handler,
        "supervisors",
        "supervisors",
        "not a supervisor's case",
    )
    assert view["timeline"][-1]["at"] == stamp(75)
    assert (view["status"], view["handler"], view["handler_since"]) == ("open", handler, stamp(75))


def test_open_first_then_the_rest_newest_first_and_the_status_filter() -> None:
    a, b, c, d = (open_record(n, n) for n in (1, 2, 3, 4))
    escalated = {
        **c,
        "status": "escalated",
        "detected_at": stamp(10),
        "route": {**c["route"], "handler": "supervisors", "reason": "escalation: x"},
    }
    book = fold([a, b, c, d, closing(b, 5), closing(d, 6), escalated])
    order = [x.exception_id[-1] for x in B.cases(book)]
    assert order == ["3", "1", "4", "2"]  # open (3 escalated, 1), then resolved: newest first
    assert [x.exception_id[-1] for x in B.cases(book, "open")] == ["1"]
    assert [x.exception_id[-1] for x in B.cases(book, "escalated")] == ["3"]
    assert [x.exception_id[-1] for x in B.cases(book, "resolved")] == ["4", "2"]


def flood(n: int, **extra: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n` cases of one customer, one in ten left open, each closed one with a long note."""
    records, notes = [], []
    for i in range(n):
        record = open_record(i, i, **extra)
        records.append(record)
        if i % 10:
            records.append(closing(record, i + 0.5))
            notes.append(
                {
                    "exception_id": record["exception_id"],
                    "handler": "logistics",
                    "status": "resolved",
                    "at": stamp(i + 0.5),
                    "note": "z" * 4000,
                }
            )
    random.Random(7).shuffle(notes)
    return records, notes


def test_a_flood_of_cases_keeps_every_open_one_and_the_newest_closed() -> None:
    records, notes = flood(400)
    book = fold(records, notes, max_cases=50, retention_s=1e9)
    kept = B.cases(book)
    assert len(kept) == 50
    assert sum(c.is_open for c in kept) == 40
    assert [c.detected_at for c in kept if not c.is_open] == [
        at(h).timestamp() for h in [h for h in range(399, 300, -1) if h % 10][:10]
    ]
    assert len(B.dumps(book)) < 64 * 1024


def test_a_flood_of_huge_cases_stays_under_the_byte_bound() -> None:
    records, notes = flood(
        400,
        evidence=[f"e-{i}-" + "x" * 120 for i in range(200)],
        context={"recent_events": [{"detail": "y" * 200}] * 100, "profile": {"tier": "gold"}},
        subject={"order_id": "o" * 128, "event_id": "e" * 128},
    )
    book = fold(records, notes, max_cases=50, retention_s=1e9)
    kept = B.cases(book)
    assert len(B.dumps(book)) <= B.MAX_BYTES
    assert kept
    assert all(c.is_open for c in kept)
    assert all(len(c.evidence) == B.MAX_EVIDENCE for c in kept)
    assert all(len(orjson.dumps(c.context)) <= B.MAX_CONTEXT for c in kept)
    assert kept[0].context["recent_events"][0] == {"detail": "y" * 200}  # cut from the end


def test_closed_cases_go_after_retention_and_open_ones_stay() -> None:
    old_open, old_closed, new = open_record(1, 0), open_record(2, 0), open_record(3, 200)
    book = fold([old_open, old_closed, closing(old_closed, 1), new], retention_s=WEEK)
    assert sorted(B.ids(book)) == [old_open["exception_id"], new["exception_id"]]
    # A late repeat of the dropped case does not bring it back.
    again = B.apply_record(book, old_closed, retention_s=WEEK, max_cases=50)
    assert B.dumps(again) == B.dumps(book)


def test_on_the_wall_clock_closed_cases_go_for_a_customer_no_record_comes_for() -> None:
    still, closed = open_record(1, 0), open_record(2, 0)
    book = fold([still, closed, closing(closed, 1)])
    limits = {"retention_s": WEEK, "max_cases": 50}
    assert B.expire(book, at(1).timestamp() + WEEK - 1, **limits) is book  # nothing to drop yet
    later = B.expire(book, at(1).timestamp() + WEEK + 1, **limits)
    assert B.ids(later) == [still["exception_id"]]
    assert not B.is_empty(later)
    # The closed case alone: nothing stays, and a late repeat of it does not come back.
    alone = B.expire(fold([closed, closing(closed, 1)]), at(1).timestamp() + WEEK + 1, **limits)
    assert B.is_empty(alone)
    assert B.ids(B.apply_record(alone, closed, **limits)) == []


def test_a_long_timeline_keeps_its_first_and_last_steps() -> None:
    record = open_record(1, 0)
    acks = [
        {
            "exception_id": record["exception_id"],
            "handler": "logistics",
            "status": "acknowledged",
            "at": stamp(1 + i),
        }
        for i in range(30)
    ]
    book = fold([record], acks)
    case = B.find(book, record["exception_id"])
    assert case is not None
    assert len(case.timeline) == B.MAX_STEPS
    assert case.elided == 20
    assert [s.step for s in case.timeline[:2]] == ["detected", "routed"]
    assert case.timeline[-1].at == at(30).timestamp()
    assert B.dumps(fold([record], acks + acks)) == B.dumps(book)  # left-out steps stay seen


def test_staff_see_what_the_holder_sees(tmp_path: Path) -> None:
    log = Log(config(tmp_path))
    log.feed(
        event(1, "customer.profile", 0, tier="standard", name="Ada Lovelace"),
        *(
            event(n, "interaction.maintenance_requested", n, asset_id="u-1/tap", category="leak")
            for n in (2, 3)
        ),
    )
    (record,) = log.records
    book = fold(log.records)
    view = staff_view(B.find(book, record["exception_id"]), SHIPPED, at(4).timestamp())  # type: ignore[arg-type]
    assert view["handler"] == "maintenance"
    assert view["context"]["profile"]["name"] == "[redacted]"  # maintenance: redact profile.name
    log.until(3 + 48 + 1)  # maintenance resolves within 48h: escalated to supervisors
    book = fold(log.records)
    view = staff_view(B.find(book, record["exception_id"]), SHIPPED, at(60).timestamp())  # type: ignore[arg-type]
    assert (view["status"], view["handler"]) == ("escalated", "supervisors")
    assert view["context"]["profile"]["name"] == "Ada Lovelace"


def test_due_and_sla_missed_follow_the_holders_resolve_within() -> None:
    record = open_record(1, 0)
    book = fold([record])
    case = B.find(book, record["exception_id"])
    assert case is not None
    assert staff_view(case, SHIPPED, at(7.9).timestamp())["sla_missed"] is False
    late = staff_view(case, SHIPPED, at(8.1).timestamp())
    assert (late["due"], late["sla_missed"], late["age_s"]) == (stamp(8), True, 8.1 * 3600)
    on_time = B.find(fold([record, closing(record, 7)]), record["exception_id"])
    assert staff_view(on_time, SHIPPED, at(99).timestamp())["sla_missed"] is False  # type: ignore[arg-type]


def test_the_customer_reads_plain_words_and_nothing_internal(story: Log) -> None:
    book = fold(story.records, story.resolutions)
    now = at(90).timestamp()
    views = [customer_view(c, SHIPPED, now) for c in B.cases(book)]
    body = CustomerCaseList(customer_id="c-1", cases=views).model_dump_json(by_alias=True)
    for secret in (
        "logistics",
        "supervisors",
        "calling the carrier",
        "parcel found",
        "Ada Lovelace",
        "e-2",
        "escalation:",
        "overflow",
        "capacity",
        "missing_delivery",
    ):
        assert secret not in body
    waiting, done = views
    assert (waiting["state"], waiting["state_text"], waiting["status"]) == (
        "noticed",
        "We noticed",
        "open",
    )
    assert waiting["message"] == (
        "Your order o-2 has not arrived yet. Our delivery team has been on it since "
        "7 December 2026, 10:30 UTC and aims to resolve it by 7 December 2026, 14:00 UTC."
    )
    assert (done["state"], done["state_text"], done["due"]) == (
        "resolved",
        "Resolved on 7 December 2026",
        None,
    )
    assert [t["text"] for t in done["timeline"]] == [
        "We noticed",
        "We are on it",
        "Escalated to a senior team",
        "Resolved on 7 December 2026",
    ]
    assert done["updated_at"] == stamp(82)


@pytest.mark.parametrize(
    ("text", "valid"),
    [("c-1", True), ("x" * 128, True), ("", False), ("x" * 129, False), ("c\n1", False)],
)
def test_customer_ids(text: str, valid: bool) -> None:
    assert valid_customer_id(text) is valid


def test_exception_ids() -> None:
    assert valid_exception_id("0" * 31 + "a")
    assert not valid_exception_id("0" * 31 + "A")
    assert not valid_exception_id("0" * 33)
    assert not valid_exception_id("../" + "0" * 29)


def test_the_openapi_document_names_every_route_and_response() -> None:
    doc = openapi()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/customers/{customer_id}/cases",
        "/v1/cases/{exception_id}",
        "/cases/customer/{customer_id}",
    }
    for path in doc["paths"].values():
        responses = path["get"]["responses"]
        assert set(responses) == {"200", "400", "401", "403", "404", "503"}
        assert "Retry-After" in responses["503"]["headers"]
    assert (
        "text/html"
        in doc["paths"]["/cases/customer/{customer_id}"]["get"]["responses"]["200"]["content"]
    )
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert "`staff`" in scheme["description"]
    assert "`customer`" in scheme["description"]


def test_an_unknown_book_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version 9"):
        B.loads(b"\x09" + B.dumps(B.Book())[1:])
