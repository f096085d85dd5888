"""The case API's behaviour (pipeline/runtime/api.py) over a stand-in for the other workers:
scopes, ids, errors, passing a request on to the owner, and never answering for a customer
this worker does not own. The real thing, two workers and a broker, is
tests/integration/test_cases.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.cases import book as B
from pipeline.config import load_config
from pipeline.routers.dispatch import Dispatcher
from pipeline.runtime.api import FORWARDED, SELF, CaseApi, Reply, Tokens, Unreachable
from pipeline.runtime.cases import SWEEP_SLICE, CaseKeeper
from pipeline.runtime.metrics import Metrics

CONFIG = load_config()
STAFF, CUSTOMER = "s3cret-staff", "s3cret-customer"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    topic: str = "t"
    partition: int = 0
    offset: int = 0


@dataclass
class MemoryTable:
    data: dict[bytes, bytes] = field(default_factory=dict)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    writes: list[tuple[bytes, bytes | None, int]] = field(default_factory=list)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())

    async def put(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.writes.append((key, value, partition))
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    async def delete(self, key: bytes, partition: int) -> None:
        await self.put(key, None, partition)


@dataclass
class Peers:
    """Which customers this worker owns, and what the others answer."""

    mine: set[bytes] = field(default_factory=set)
    elsewhere: dict[bytes, str] = field(default_factory=dict)
    answers: dict[str, Reply | Exception] = field(default_factory=dict)
    asked: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def owner(self, customer: bytes) -> str | None:
        return SELF if customer in self.mine else self.elsewhere.get(customer)

    def others(self) -> list[str]:
        return sorted(self.answers)

    def me(self) -> str:
        return "http://me:6066"

    async def fetch(self, url: str, target: str, headers: Mapping[str, str]) -> Reply:
        self.asked.append((url, target, dict(headers)))
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def routed(customer: str, n: int) -> dict[str, Any]:
    """A failed delivery as the dispatcher routes it (the exception log's record)."""
    dispatcher = Dispatcher(CONFIG, {})
    record = {
        "exception_id": f"{n:032x}",
        "rule": "delivery_failed",
        "kind": "match",
        "status": "open",
        "severity": "high",
        "customer_id": customer,
        "subject": {"order_id": f"o-{n}", "event_id": f"fail-{n}"},
        "event_time": NOW.isoformat(),
        "detected_at": NOW.isoformat(),
        "evidence": [f"fail-{n}"],
        "context": {"profile": None, "recent_events": [], "open_orders": [], "open_exceptions": []},
        "rule_version": "v",
    }
    (out,) = dispatcher.on_exception(record, NOW.timestamp())
    return out.record


def closed(record: dict[str, Any]) -> dict[str, Any]:
    """The log's record of the same case resolved by its handler."""
    route = {**record["route"], "reason": f"resolved by {record['route']['handler']}"}
    return {**record, "status": "resolved", "route": route}


def api(peers: Peers, *records: dict[str, Any], hours: float = 1) -> tuple[CaseApi, Metrics]:
    metrics = Metrics.create()
    keeper = CaseKeeper(config=CONFIG, metrics=metrics, table=MemoryTable())
    for r in records:
        asyncio.run(keeper.record(Msg(r["customer_id"].encode(), orjson.dumps(r))))
    keeper.ready = True
    served = CaseApi(
        config=CONFIG,
        keeper=keeper,
        tokens=Tokens(staff=(STAFF,), customer=(CUSTOMER,)),
        peers=peers,
        metrics=metrics,
        clock=lambda: (NOW + timedelta(hours=hours)).timestamp(),
    )
    return served, metrics


def get(
    served: CaseApi,
    route: str,
    token: str | None = STAFF,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    **params: str,
) -> Reply:
    sent = {"authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(served.handle(route, params, query or {}, {**sent, **(headers or {})}))


def body(reply: Reply) -> Any:
    return orjson.loads(reply.body)


def test_a_customers_cases_by_scope() -> None:
    served, metrics = api(Peers(mine={b"c-1"}), routed("c-1", 1))
    staff = body(get(served, "customer_cases", customer_id="c-1"))
    assert [c["evidence"] for c in staff["cases"]] == [["fail-1"]]
    assert staff["cases"][0]["handler"] == "logistics"
    mine = body(get(served, "customer_cases", CUSTOMER, customer_id="c-1"))
    assert mine["customer_id"] == "c-1"
    (case,) = mine["cases"]
    text = orjson.dumps(case).decode()
    assert "o-1" in case["message"]
    for secret in ("fail-1", "logistics", "context", "evidence"):
        assert secret not in text
    nobody = get(served, "customer_cases", customer_id="c-9")
    assert nobody.status == 503  # not owned, owner unknown
    served.peers.mine.add(b"c-9")  # type: ignore[attr-defined]
    assert body(get(served, "customer_cases", customer_id="c-9")) == {
        "customer_id": "c-9",
        "cases": [],
    }
    count = metrics.api_requests.labels("customer_cases", "200")._value.get()
    assert count == 3


@pytest.mark.parametrize(
    ("route", "token", "params", "query", "status", "code"),
    [
        ("customer_cases", None, {"customer_id": "c-1"}, {}, 401, "unauthorized"),
        ("customer_cases", "guess", {"customer_id": "c-1"}, {}, 401, "unauthorized"),
        ("case", None, {"exception_id": "0" * 32}, {}, 401, "unauthorized"),
        ("case", STAFF, {"exception_id": "not-hex"}, {}, 400, "bad_id"),
        ("case", STAFF, {"exception_id": "A" * 32}, {}, 400, "bad_id"),
        ("customer_cases", STAFF, {"customer_id": "c\x001"}, {}, 400, "bad_id"),
        ("customer_cases", STAFF, {"customer_id": "x" * 129}, {}, 400, "bad_id"),
        ("customer_cases", STAFF, {"customer_id": "c-1"}, {"status": "x"}, 400, "bad_status"),
    ],
)
def test_errors_say_what_to_fix(
    route: str,
    token: str | None,
    params: dict[str, str],
    query: dict[str, str],
    status: int,
    code: str,
) -> None:
    served, _ = api(Peers(mine={b"c-1"}), routed("c-1", 1))
    reply = get(served, route, token, query, **params)
    assert reply.status == status
    assert body(reply)["error"] == code
    assert body(reply)["message"]
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_the_csr_page_is_for_staff_only() -> None:
    served, _ = api(Peers(mine={b"c-1"}), routed("c-1", 1))
    assert get(served, "page", CUSTOMER, customer_id="c-1").status == 403
    page = get(served, "page", customer_id="c-1")
    assert page.status == 200
    assert page.content_type.startswith("text/html")
    assert f"{1:032x}".encode() in page.body
    unsigned = get(served, "page", None, customer_id="c-1")
    assert unsigned.status == 401
    assert b"<form" in unsigned.body  # a sign-in form, not a JSON error


def test_sign_in_sets_a_cookie_the_page_accepts_and_the_json_api_does_not() -> None:
    served, _ = api(Peers(mine={b"c-1"}), routed("c-1", 1))
    wrong = asyncio.run(served.handle("login", {}, {}, {}, {"token": "guess", "next": "/x"}))
    assert wrong.status == 401
    signed = asyncio.run(
        served.handle("login", {}, {}, {}, {"token": STAFF, "next": "https://evil.example/"})
    )
    assert signed.status == 303
    assert signed.headers["Location"] == "/cases/customer/"  # never a redirect elsewhere
    cookie = signed.headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in signed.headers["Set-Cookie"]
    assert get(served, "page", None, headers={"cookie": cookie}, customer_id="c-1").status == 200
    api_reply = get(served, "customer_cases", None, headers={"cookie": cookie}, customer_id="c-1")
    assert api_reply.status == 401


def test_a_customer_owned_elsewhere_is_passed_on_once_with_the_callers_token() -> None:
    peers = Peers(
        elsewhere={b"c-2": "http://other:6066"},
        answers={"http://other:6066": Reply(200, b'{"customer_id": "c-2", "cases": []}')},
    )
    served, _ = api(peers)
    reply = get(served, "customer_cases", query={"status": "open"}, customer_id="c-2")
    assert reply.status == 200
    ((url, target, headers),) = peers.asked
    assert (url, target) == ("http://other:6066", "/v1/customers/c-2/cases?status=open")
    assert headers == {"authorization": f"Bearer {STAFF}", FORWARDED: "1"}
    # A request passed on to a worker that no longer owns the customer is not passed again.
    moved = get(served, "customer_cases", headers={FORWARDED: "1"}, customer_id="c-2")
    assert moved.status == 503
    assert moved.headers["Retry-After"]
    assert len(peers.asked) == 1


def test_an_owner_that_does_not_answer_is_a_503_with_retry_after() -> None:
    peers = Peers(
        elsewhere={b"c-2": "http://other:6066"},
        answers={"http://other:6066": Unreachable("connection refused")},
    )
    served, _ = api(peers)
    reply = get(served, "customer_cases", customer_id="c-2")
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "2"
    assert "try again" in body(reply)["message"]


def test_a_case_by_id_here_or_asked_of_every_other_worker() -> None:
    record = routed("c-1", 1)
    found = Reply(200, b'{"exception_id": "x"}')
    missing = Reply(404, b'{"error": "not_found", "message": "no"}')
    served, _ = api(Peers(mine={b"c-1"}, answers={"http://a": missing}), record)
    here = get(served, "case", exception_id=record["exception_id"])
    assert body(here)["exception_id"] == record["exception_id"]
    assert body(get(served, "case", exception_id="f" * 32))["error"] == "not_found"
    served, _ = api(Peers(answers={"http://a": missing, "http://b": found}))
    assert body(get(served, "case", exception_id="f" * 32)) == {"exception_id": "x"}
    served, _ = api(Peers(answers={"http://a": missing, "http://b": Unreachable("down")}))
    unsure = get(served, "case", exception_id="f" * 32)
    assert unsure.status == 503  # the worker that did not answer may hold it


def test_a_worker_still_recovering_does_not_answer_from_what_it_has() -> None:
    served, _ = api(Peers(mine={b"c-1"}), routed("c-1", 1))
    served.keeper.ready = False
    reply = get(served, "customer_cases", customer_id="c-1")
    assert reply.status == 503
    assert reply.headers["Retry-After"]


def test_a_closed_case_past_the_retention_is_not_served() -> None:
    record = routed("c-1", 1)
    # No record came for c-1 since: the book still holds the case; the API leaves it out.
    for hours, shown, by_id in ((24, ["resolved"], 200), (24 * 8, [], 404)):
        served, _ = api(Peers(mine={b"c-1"}), record, closed(record), hours=hours)
        cases = body(get(served, "customer_cases", customer_id="c-1"))["cases"]
        assert [c["status"] for c in cases] == shown
        assert get(served, "case", exception_id=record["exception_id"]).status == by_id


def test_the_sweep_deletes_what_is_past_the_retention_from_the_books_this_worker_owns() -> None:
    metrics = Metrics.create()
    table = MemoryTable()
    keeper = CaseKeeper(config=CONFIG, metrics=metrics, table=table)
    one, two, kept, theirs = routed("c-1", 1), routed("c-2", 2), routed("c-2", 3), routed("c-3", 4)
    for r in (one, closed(one), two, closed(two), kept, theirs, closed(theirs)):
        asyncio.run(keeper.record(Msg(r["customer_id"].encode(), orjson.dumps(r))))
    before = dict(table.data)
    table.writes.clear()

    def owned(key: bytes) -> int | None:
        return None if key == b"c-3" else 7  # c-3: a standby copy, its owner sweeps it

    week = (NOW + timedelta(days=7, seconds=1)).timestamp()
    assert asyncio.run(keeper.sweep(week, owned)) == 0  # closed ones keep until the retention
    keeper.ready = True
    assert asyncio.run(keeper.sweep(week - 2, owned)) == 0
    assert table.writes == []
    assert asyncio.run(keeper.sweep(week, owned)) == 2
    assert b"c-1" not in table.data  # nothing left: deleted, with its partition
    assert (b"c-1", None, 7) in table.writes
    assert B.ids(B.loads(table.data[b"c-2"])) == [kept["exception_id"]]
    assert table.data[b"c-3"] == before[b"c-3"]
    assert sorted(keeper.index) == sorted([kept["exception_id"], theirs["exception_id"]])
    assert metrics.cases_expired._value.get() == 2
    table.writes.clear()
    assert asyncio.run(keeper.sweep(week + 60, owned)) == 0
    assert table.writes == []


def test_a_sweep_stops_at_a_rebalance() -> None:
    keeper = CaseKeeper(config=CONFIG, metrics=Metrics.create(), table=MemoryTable())
    for n in range(SWEEP_SLICE + 100):
        r = routed(f"c-{n}", n)
        for record in (r, closed(r)):
            asyncio.run(keeper.record(Msg(r["customer_id"].encode(), orjson.dumps(record))))
    keeper.ready = True
    week = (NOW + timedelta(days=8)).timestamp()

    async def revoked_during_the_sweep() -> int:
        sweep = asyncio.ensure_future(keeper.sweep(week, lambda key: 0))
        await asyncio.sleep(0)  # the sweep's first slice, up to its first turn of the loop
        keeper.revoked()  # what the worker owns is about to change: no write after this
        return await sweep

    assert asyncio.run(revoked_during_the_sweep()) == SWEEP_SLICE
    assert len(keeper.table.data) == 100  # type: ignore[attr-defined]


def test_a_record_read_twice_changes_nothing() -> None:
    record = routed("c-1", 1)
    served, _ = api(Peers(mine={b"c-1"}), record, record)
    (case,) = body(get(served, "customer_cases", customer_id="c-1"))["cases"]
    assert [s["step"] for s in case["timeline"]] == ["detected", "routed"]


def test_a_handlers_acknowledgement_shows_and_a_broken_log_record_is_counted() -> None:
    record = routed("c-1", 1)
    served, metrics = api(Peers(mine={b"c-1"}), record)
    ack = {
        "exception_id": record["exception_id"],
        "handler": "logistics",
        "status": "acknowledged",
        "at": (NOW + timedelta(minutes=5)).isoformat(),
        "note": "calling the carrier",
    }
    keeper = served.keeper
    asyncio.run(keeper.resolution(Msg(b"c-1", orjson.dumps(ack)), ack))
    asyncio.run(keeper.record(Msg(b"c-1", b'{"exception_id": "x"')))
    (case,) = body(get(served, "customer_cases", customer_id="c-1"))["cases"]
    assert [(s["step"], s["note"]) for s in case["timeline"]][-1] == (
        "acknowledged",
        "calling the carrier",
    )
    assert metrics.case_errors.labels("resolution")._value.get() == 0
    assert metrics.case_errors.labels("record")._value.get() == 1


def test_the_openapi_document_is_served_without_a_token_and_is_the_committed_one() -> None:
    served, _ = api(Peers())
    reply = get(served, "openapi", None)
    assert reply.status == 200
    committed = Path(__file__).resolve().parents[2] / "schemas" / "cases-api.openapi.json"
    assert body(reply) == orjson.loads(committed.read_bytes())


def test_the_client_that_asks_other_workers_is_closed_with_the_web_server() -> None:
    """A worker that passed a request on keeps an HTTP client; its web server's cleanup
    closes it (else aiohttp reports an unclosed client session when the worker stops)."""
    from types import SimpleNamespace

    from aiohttp import web

    from pipeline.runtime.api import FaustPeers, install

    peers = FaustPeers(SimpleNamespace(), "cases", 6)
    served, _ = api(peers)  # type: ignore[arg-type]
    web_app = web.Application()
    install(SimpleNamespace(web=SimpleNamespace(web_app=web_app)), served)
    web_app.freeze()  # as the server's runner does when it starts

    async def serve_then_stop() -> Any:
        session = peers._session()  # as a request passed on makes it
        await web_app.cleanup()
        return session

    assert asyncio.run(serve_then_stop()).closed


def test_the_owner_of_a_customer_is_read_from_the_assignors_map_and_follows_a_rebalance() -> None:
    """FaustPeers: the worker whose `cases` partition holds the customer (Kafka's partitioner
    over the pipeline's partition count), this one as SELF, None while nobody is assigned it;
    a new assignment (the assignor sets a new map) is followed at the next request."""
    from types import SimpleNamespace

    from pipeline.runtime.api import FaustPeers
    from pipeline.runtime.topics import partition_of_key

    topic = "casewatch-cases-changelog"
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: topic))
    assignor = SimpleNamespace(changelog_distribution={})
    app = SimpleNamespace(
        assignor=assignor,
        tables={"cases": table},
        conf=SimpleNamespace(canonical_url="http://me:6066/"),
    )
    peers = FaustPeers(app, "cases", 6)
    customers = [f"c-{i}".encode() for i in range(40)]
    mine = {c for c in customers if partition_of_key(c, 6) < 3}
    assert peers.owner(customers[0]) is None  # no assignment yet

    assignor.changelog_distribution = {
        "http://me:6066/": {topic: [0, 1, 2], "other-topic": [3, 4, 5]},
        "http://other:6066": {topic: [3, 4]},  # partition 5: nobody yet
    }
    owners = {c: peers.owner(c) for c in customers}
    assert {c for c, o in owners.items() if o == SELF} == mine
    assert {o for c, o in owners.items() if c not in mine} == {"http://other:6066", None}
    assert all(owners[c] is None for c in customers if partition_of_key(c, 6) == 5)

    assignor.changelog_distribution = {"http://other:6066": {topic: [0, 1, 2, 3, 4, 5]}}
    assert {peers.owner(c) for c in customers} == {"http://other:6066"}
