"""The live worker and `casewatch replay` are adapters around one processor: the same records
give the same exception records in the same order, and the worker applies what the processor
returns in the at-least-once order (outputs acknowledged, then states)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from pipeline.config import load_config
from pipeline.core.processor import Record
from pipeline.core.state import CustomerState
from pipeline.runtime.metrics import Metrics
from pipeline.runtime.worker import Worker
from pipeline.sinks.kafka import DeadLetterSink
from pipeline.sinks.memory import MemorySink
from pipeline.tools.replay import Replay

BASE = load_config()
# One partition: every customer's deadlines run on the same clock.
CONFIG = BASE.model_copy(update={"pipeline": BASE.pipeline.model_copy(update={"partitions": 1})})
INTERACTIONS, ORDERS = CONFIG.topics.interactions, CONFIG.topics.orders
REKEY = "casewatch-rekey"
T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)


def ev(event_id: str, type_: str, hours: float, customer: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": type_,
            "customer_id": customer,
            "occurred_at": (T0 + timedelta(hours=hours)).isoformat(),
            **fields,
        }
    )


def shipped(event_id: str, customer: str, order: str) -> bytes:
    """A parcel shipped at T0, promised by T0 + 1 h: missing at T0 + 5 h (the rule's grace)."""
    promised = (T0 + timedelta(hours=1)).isoformat()
    return ev(event_id, "order.shipped", 0, customer, order_id=order, promised_by=promised)


def contact(event_id: str, hours: float, customer: str) -> bytes:
    return ev(
        event_id,
        "interaction.contact",
        hours,
        customer,
        channel="call",
        category="billing/question",
    )


def topic_of(line: bytes) -> str:
    return ORDERS if orjson.loads(line)["type"].startswith("order.") else INTERACTIONS


class Table:
    """The customers table as the worker writes it; every write goes in the shared log."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log = log

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.log.append(("state", key.decode()))
        self.data[key] = value

    async def put_all(self, values: dict[bytes, bytes], partition: int) -> int:
        new = len(values.keys() - self.data.keys())
        for key, value in values.items():
            await self.put(key, value, partition)
        return new


class Sink(MemorySink):
    """An in-memory sink whose records count as acknowledged when `send_all` returns."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        super().__init__(name=name)
        self.log = log

    async def send_all(self, records: Any) -> None:
        await asyncio.sleep(0)  # the acknowledgement comes later than the call
        await super().send_all(records)
        for key, _, _ in records:
            self.log.append((f"acked:{self.name}", (key or b"").decode()))


def worker(log: list[tuple[str, str]]) -> tuple[Worker, Sink, Table]:
    dispatch = Sink("dispatch", log)
    table = Table(log)
    w = Worker(
        config=CONFIG,
        metrics=Metrics.create(CollectorRegistry()),
        dlq=DeadLetterSink(Sink("dlq", log)),  # type: ignore[arg-type]
        rekey=Sink("rekey", log),
        rekey_topic=REKEY,
        dispatch=dispatch,
        table=table,
        clocks_table=Table([]),
    )
    return w, dispatch, table


def live(
    lines: list[bytes], topics: list[str] | None = None, stored: dict[bytes, bytes] | None = None
) -> tuple[list[tuple[str, str, str]], Worker, Table]:
    """The worker over `lines`, one batch, each keyed by its customer: the (exception id,
    status) it sends to dispatch, in order."""
    sent, w, table = live_records(lines, topics, stored)
    return [(x["rule"], x["exception_id"], x["status"]) for x in sent], w, table


def live_records(
    lines: list[bytes], topics: list[str] | None = None, stored: dict[bytes, bytes] | None = None
) -> tuple[list[dict[str, Any]], Worker, Table]:
    """The worker over `lines`, one batch, each keyed by its customer: the exception records
    it sends to dispatch, in order."""
    log: list[tuple[str, str]] = []
    w, dispatch, table = worker(log)
    table.data.update(stored or {})
    records = [
        Record(
            topic,
            0,
            offset,
            orjson.loads(line)["customer_id"].encode(),
            line,
        )
        for offset, (line, topic) in enumerate(
            zip(lines, topics or [topic_of(x) for x in lines], strict=True)
        )
    ]
    asyncio.run(w.batch(records))
    return [orjson.loads(r.value or b"")["exception"] for r in dispatch.records], w, table


def replayed(
    lines: list[bytes], stored: dict[bytes, bytes] | None = None
) -> tuple[list[tuple[str, str, str]], Replay]:
    r = Replay(CONFIG, errors=io.StringIO())
    r.states.update(stored or {})
    found = [(x.rule, x.exception_id, x.status) for x in r.feed(lines) if x.status != "escalated"]
    return found, r


def test_deadlines_passed_by_an_event_fire_before_it_live_and_in_replay() -> None:
    """c-a's parcel is due at +5h; c-b's failed delivery at +10h moves the clock past it
    (both inputs are at +10h then): c-a's missing delivery comes out before the exception
    c-b's own event opens."""
    lines = [
        shipped("a1", "c-a", "o-a"),
        contact("b0", 0, "c-b"),
        contact("b2", 10, "c-b"),
        ev("b1", "order.delivery_failed", 10, "c-b", order_id="o-b", reason="address not found"),
    ]
    ours, _, _ = live(lines)
    theirs, _ = replayed(lines)
    assert ours == theirs
    assert [rule for rule, _, _ in ours] == ["missing_delivery", "delivery_failed"], ours


def test_a_re_keyed_event_moves_the_clock_of_its_event_types_input() -> None:
    """An order event that came through the re-key topic counts as the orders input, as in
    replay (not as a third input that holds the clock while the orders topic is unseen)."""
    lines = [
        contact("i1", 2, "c-a"),
        ev(
            "o1",
            "order.placed",
            3,
            "c-a",
            order_id="o-1",
            value={"amount": "5.00", "currency": "EUR"},
        ),
    ]
    _, w, _ = live(lines, topics=[INTERACTIONS, REKEY])
    _, r = replayed(lines)
    expected = (T0 + timedelta(hours=2) - CONFIG.pipeline.allowed_lateness).timestamp()
    assert r.processor.clocks[0].mark == expected
    assert w.processor.clocks[0].mark == expected


def test_the_partition_that_processed_an_event_owns_the_customer() -> None:
    """A state written by another partition (the topics were re-partitioned): the partition
    that processed the event is recorded, live and in replay."""
    elsewhere = CustomerState(partition=5).to_bytes()
    lines = [contact("e1", 0, "c-a")]
    _, _, table = live(lines, stored={b"c-a": elsewhere})
    _, r = replayed(lines, stored={b"c-a": elsewhere})
    assert CustomerState.from_bytes(table.data[b"c-a"]).partition == 0
    assert CustomerState.from_bytes(r.states[b"c-a"]).partition == 0


def test_a_deadline_of_a_state_from_another_partition_fires_at_its_next_event() -> None:
    """c-a's parcel was shipped while another partition owned c-a (the topics were
    re-partitioned), so no deadline index here knows it is due at +5h. c-b's events move the
    clock to +10h; c-a's next event then finds the deadline passed: the missing delivery comes
    out before anything else of c-a's, live and in replay."""
    r = Replay(CONFIG, errors=io.StringIO())
    list(r.feed([shipped("a1", "c-a", "o-a")]))
    state = CustomerState.from_bytes(r.states[b"c-a"])
    elsewhere = {b"c-a": state._replace(partition=5).to_bytes()}
    lines = [
        contact("b0", 10, "c-b"),
        ev("b1", "order.delivery_failed", 10, "c-b", order_id="o-b", reason="address not found"),
        contact("a2", 10, "c-a"),
    ]
    ours, _, _ = live(lines, stored=elsewhere)
    theirs, _ = replayed(lines, stored=elsewhere)
    assert ours == theirs
    assert [rule for rule, _, _ in ours] == ["delivery_failed", "missing_delivery"], ours


def test_a_duplicate_moves_the_clock_and_fires_what_is_due() -> None:
    """The event that moves the clock past c-a's deadline is a repeat of one c-b sent: its
    time still counts, live and in replay."""
    lines = [
        ev(
            "b0",
            "order.placed",
            0,
            "c-b",
            order_id="o-b",
            value={"amount": "5.00", "currency": "EUR"},
        ),
        shipped("a1", "c-a", "o-a"),
        contact("b1", 10, "c-b"),
        ev(
            "b0",
            "order.placed",
            10,
            "c-b",
            order_id="o-b",
            value={"amount": "5.00", "currency": "EUR"},
        ),  # a repeat of b0's id
    ]
    ours, _, _ = live(lines)
    theirs, r = replayed(lines)
    assert ours == theirs
    assert [rule for rule, _, _ in ours] == ["missing_delivery"], ours
    assert r.summary.duplicates == 1


def test_outputs_are_acknowledged_before_any_state_is_written() -> None:
    """A crash between the two repeats outputs (same ids), never loses one: the state that
    remembers an event is written only after what the event caused is acknowledged."""
    lines = [
        shipped("a1", "c-a", "o-a"),
        contact("b0", 0, "c-b"),
        ev("b1", "order.delivery_failed", 10, "c-b", order_id="o-b", reason="address not found"),
        b'{"not": "an event"}',
        contact("b2", 10, "c-b"),
    ]
    log: list[tuple[str, str]] = []
    w, _, _ = worker(log)
    records = [
        Record(topic_of(x) if b"type" in x else INTERACTIONS, 0, i, b"c-b", x)
        for i, x in enumerate(lines)
    ]
    asyncio.run(w.batch(records))
    kinds = [k for k, _ in log]
    assert {"acked:dispatch", "acked:dlq", "acked:rekey"} <= set(kinds)
    last_ack = max(i for i, k in enumerate(kinds) if k.startswith("acked:"))
    first_state = kinds.index("state")
    assert last_ack < first_state, log
    assert {c for k, c in log if k == "state"} == {"c-b"}  # c-a's event was re-keyed


def test_after_a_restart_an_input_with_unread_records_holds_the_clock() -> None:
    """The worker recorded its clock with both inputs at T; c-a's parcel was due at T+20 s and
    its delivery is unread in the orders partition when a new worker resumes at T+60 s. While
    the orders input has unread records its clock stays where the records left it, however
    long they take to arrive; once it is caught up and quiet, the deadline fires."""
    from pipeline.core.processor import Processor

    t = T0.timestamp()
    due = (T0 + timedelta(seconds=20) - timedelta(hours=4)).isoformat()  # the grace is 4 h
    shipped = ev("a1", "order.shipped", 0, "c-a", order_id="o-a", promised_by=due)
    states: dict[bytes, bytes] = {}
    before = Processor(CONFIG, states.get)
    states.update(before.process(0, [Record(ORDERS, 0, 0, b"c-a", shipped)], t).states)
    clock = orjson.dumps({"mark": t - 300, "wall": t, "seen": {INTERACTIONS: t, ORDERS: t}})

    after = Processor(CONFIG, states.get)
    after.recovered(states.items(), [(0, clock)], t + 60)
    held = [after.tick(0, t + 60 + s, unread={ORDERS}).found for s in (1, 5, 30)]
    assert held == [[], [], []]
    (found,) = after.tick(0, t + 95, unread=()).found
    assert found.finding.rule == "missing_delivery"


def complaint(event_id: str, hours: float, customer: str) -> bytes:
    return ev(
        event_id,
        "interaction.complaint",
        hours,
        customer,
        channel="call",
        category="noise/neighbours",
    )


def placed(event_id: str, hours: float, customer: str, order: str) -> bytes:
    value = {"amount": "5.00", "currency": "EUR"}
    return ev(event_id, "order.placed", hours, customer, order_id=order, value=value)


# Each kind of finding, with recent events of the same time as its evidence where the rule's
# types tell them apart: the records expected, and the input (the other customer c-b moves
# the clock past c-1's deadline on both inputs).
EVIDENCE_CASES = {
    "match": (
        [("delivery_failed", "open")],
        [
            contact("x1", 1, "c-1"),
            ev("f1", "order.delivery_failed", 1, "c-1", order_id="o-1", reason="not found"),
        ],
    ),
    "threshold": (
        [("complaint_cluster", "open")],
        [
            complaint("k1", 1, "c-1"),
            contact("x1", 1.5, "c-1"),
            complaint("k2", 2, "c-1"),
            complaint("k3", 3, "c-1"),
        ],
    ),
    "absence opened by the clock": (
        [("missing_delivery", "open")],
        [
            placed("p1", 0, "c-1", "o-1"),
            shipped("s1", "c-1", "o-1"),
            contact("b1", 10, "c-b"),
            placed("b2", 10, "c-b", "o-b"),
        ],
    ),
    "absence resolved by its closing event": (
        [("missing_delivery", "open"), ("missing_delivery", "resolved")],
        [
            placed("p1", 0, "c-1", "o-1"),
            shipped("s1", "c-1", "o-1"),
            contact("b1", 10, "c-b"),
            placed("b2", 10, "c-b", "o-b"),
            contact("x1", 11, "c-1"),
            ev("d1", "order.delivered", 11, "c-1", order_id="o-1"),
        ],
    ),
}


def iso(line: bytes) -> tuple[str, str]:
    """An input line's type and time as the context writes them."""
    data = orjson.loads(line)
    at = datetime.fromisoformat(data["occurred_at"]).astimezone(UTC)
    return data["type"], at.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("case", list(EVIDENCE_CASES))
def test_every_evidence_id_is_in_the_context_with_its_type_and_time(case: str) -> None:
    """A handler reading a record can tell which of the customer's events made it: each id of
    `evidence` is in `context.evidence`, with its event's type and time, and the recent
    events that are evidence carry their ids (the others none), live and in replay."""
    expected, lines = EVIDENCE_CASES[case]
    truth = {orjson.loads(line)["event_id"]: iso(line) for line in lines}
    ours, _, _ = live_records(lines)
    theirs, _ = replayed(lines)
    r = Replay(CONFIG, errors=io.StringIO())
    replay_records = [x.model_dump(mode="json") for x in r.feed(lines) if x.status != "escalated"]
    assert [(x["rule"], x["status"]) for x in ours] == expected
    assert [(x["rule"], x["status"]) for x in replay_records] == expected
    assert [(x["rule"], x["exception_id"], x["status"]) for x in ours] == theirs
    for record in ours + replay_records:
        context = record["context"]
        assert [e["event_id"] for e in context["evidence"]] == record["evidence"]
        for e in context["evidence"]:
            assert (e["type"], e["occurred_at"]) == truth[e["event_id"]], record
        tagged = {
            e["event_id"]: (e["type"], e["occurred_at"])
            for e in context["recent_events"]
            if "event_id" in e
        }
        assert tagged == {i: truth[i] for i in record["evidence"]}


def test_an_absence_stored_before_evidence_times_still_names_its_evidence() -> None:
    """A customer state written by an earlier version (the absence rule's start events as ids
    alone): the late delivery still opens and resolves the exception with both ids; the
    shipment's time is unknown, so the context gives its id alone, and the delivery in full."""
    _, before = replayed([shipped("s1", "c-1", "o-1")])
    state = CustomerState.from_bytes(before.states[b"c-1"])
    version, entries = state.rules["missing_delivery"]
    assert entries["o-1"]["ev"] == [["s1", T0.timestamp()]]  # what this version stores
    old = {"o-1": {**entries["o-1"], "ev": ["s1"]}}
    stored = state._replace(rules={**state.rules, "missing_delivery": [version, old]}).to_bytes()
    delivered = ev("d1", "order.delivered", 10, "c-1", order_id="o-1")
    r = Replay(CONFIG, errors=io.StringIO())
    r.states[b"c-1"] = stored
    opened, resolved = (x for x in r.feed([delivered]) if x.status != "escalated")
    assert (opened.status, resolved.status) == ("open", "resolved")
    assert opened.evidence == ["s1"]
    assert opened.context["evidence"] == [
        {"event_id": "s1", "occurred_at": None, "type": None, "detail": None}
    ]
    assert resolved.evidence == ["s1", "d1"]
    assert resolved.context["evidence"][1] == {
        "event_id": "d1",
        "occurred_at": "2026-03-01T19:00:00Z",
        "type": "order.delivered",
        "detail": "o-1",
    }
