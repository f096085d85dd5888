"""The case status API, served by every worker on Faust's web server (docs/cases.md).

A request about a customer is answered by the worker that owns the customer's partition of the
`cases` table: Faust's partition assignor knows which worker that is (its changelog
distribution: the URLs the workers advertised when they joined the group, by partition), and
any other worker passes the request on to it once, marked as passed on. A request by case id
is answered from the worker's index of the cases it holds, or asked of every other worker. A
worker that cannot answer for sure (no assignment yet, its table still recovering, the owner
unreachable) says 503 with Retry-After; it never answers from a copy that may be stale.

`CaseApi.handle` is the whole behaviour (auth, ids, routing, views, errors, metrics) over a
`Peers` interface; `install` mounts it on a Faust app. Never a traceback, never another
customer's data: each answer is built from one customer's book.

Faust runs the web server in a thread of its own, with its own event loop (`web_in_thread`),
so that a request does not wait for a whole batch of events. What a request reads of the
worker's state are single lookups, each atomic under the interpreter lock: one key's bytes in
the table, one id in the keeper's index, its readiness flag, one partition in the assignor's
map; it never iterates over them. The HTTP client that passes requests on belongs to the API's
loop.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlencode

import orjson

from pipeline.cases import book as books
from pipeline.cases import page, views
from pipeline.config import Config
from pipeline.runtime.cases import CaseKeeper
from pipeline.runtime.metrics import Metrics
from pipeline.runtime.topics import partition_of_key

log = logging.getLogger(__name__)

ROUTES = {
    "customer_cases": "/v1/customers/{customer_id}/cases",
    "case": "/v1/cases/{exception_id}",
    "page": "/cases/customer/{customer_id}",
    "login": "/cases/login",
    "openapi": "/v1/openapi.json",
}
FORWARDED = "x-casewatch-forwarded"  # set on a request one worker passes on to another
COOKIE = "casewatch_token"  # the CSR page's sign-in (a browser cannot send a bearer header)
RETRY_AFTER = "2"  # seconds: about a rebalance's recovery of the cases table
PEER_TIMEOUT = 2.0  # seconds a worker waits for another's answer
STATUSES = ("open", "escalated", "resolved")
JSON = "application/json"
HTML = "text/html; charset=utf-8"
SELF = "self"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


class Unreachable(Exception):
    """Another worker did not answer in time."""


class Peers(Protocol):
    """Where a customer's book is, and the way to the other workers."""

    def owner(self, customer: bytes) -> str | None:
        """`SELF`, another worker's URL, or None while no assignment says."""
        ...

    def others(self) -> list[str]:
        """Every other worker's URL."""
        ...

    def me(self) -> str:
        """This worker's URL, as the others reach it."""
        ...

    async def fetch(self, url: str, target: str, headers: Mapping[str, str]) -> Reply:
        """GET `target` (path and query) of the worker at `url`; raises Unreachable."""
        ...

    async def close(self) -> None:
        """Release what `fetch` holds (the web server's cleanup)."""
        ...


@dataclass(frozen=True)
class Tokens:
    """Bearer tokens by scope, from CASEWATCH_STAFF_TOKENS and CASEWATCH_CUSTOMER_TOKENS
    (comma-separated)."""

    staff: tuple[str, ...] = ()
    customer: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tokens:
        e = os.environ if env is None else env

        def split(name: str) -> tuple[str, ...]:
            return tuple(t.strip() for t in e.get(name, "").split(",") if t.strip())

        return cls(split("CASEWATCH_STAFF_TOKENS"), split("CASEWATCH_CUSTOMER_TOKENS"))

    def scope(self, token: str | None) -> str | None:
        """The token's scope, or None. Every token is compared, in constant time each."""
        if not token:
            return None
        given = token.encode()
        found = None
        for scope, tokens in (("staff", self.staff), ("customer", self.customer)):
            for t in tokens:
                if hmac.compare_digest(given, t.encode()):
                    found = scope
        return found


@dataclass
class CaseApi:
    """The API's behaviour, whatever serves it."""

    config: Config
    keeper: CaseKeeper
    tokens: Tokens
    peers: Peers
    metrics: Metrics
    clock: Any = time.time
    # The metrics' children by route (and status), looked up once each.
    _children: dict[tuple[str, int], tuple[Any, Any]] = field(
        default_factory=dict, init=False, repr=False
    )

    async def handle(
        self,
        route: str,
        params: Mapping[str, str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request; `headers` with lower-case names. Never raises."""
        start = time.perf_counter()
        try:
            reply = await self._route(route, params, query, headers, form)
        except Exception:
            log.exception("case API: internal error on %s", route)
            reply = self._error(route, 500, "internal_error", "Casewatch failed on this request")
        if "Casewatch-Worker" not in reply.headers:  # answered here, not passed on
            reply = replace(reply, headers={**reply.headers, "Casewatch-Worker": self.peers.me()})
        counted = self._children.get((route, reply.status))
        if counted is None:
            counted = self._children[route, reply.status] = (
                self.metrics.api_requests.labels(route, str(reply.status)),
                self.metrics.api_latency.labels(route),
            )
        counted[0].inc()
        counted[1].observe(time.perf_counter() - start)
        return reply

    async def _route(
        self,
        route: str,
        params: Mapping[str, str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        form: Mapping[str, str] | None,
    ) -> Reply:
        if route == "openapi":
            return Reply(200, _openapi())
        if route == "login":
            return self._login(form or {})
        scope = self.tokens.scope(_bearer(headers, cookie=route == "page"))
        if scope is None:
            if route == "page":
                back = ROUTES["page"].format(customer_id=quote(params["customer_id"], safe=""))
                return Reply(401, page.login_page(back).encode(), HTML)
            return self._error(
                route,
                401,
                "unauthorized",
                "send a valid token: 'Authorization: Bearer <token>' (CASEWATCH_STAFF_TOKENS "
                "or CASEWATCH_CUSTOMER_TOKENS on the workers)",
                {"WWW-Authenticate": "Bearer"},
            )
        if route == "page" and scope != "staff":
            return self._error(route, 403, "forbidden", "the CSR page needs a staff token")
        if route == "case":
            exception_id = params["exception_id"]
            if not views.valid_exception_id(exception_id):
                return self._error(
                    route, 400, "bad_id", "an exception id is 32 lower-case hexadecimal characters"
                )
            return await self._case(exception_id, scope, headers)
        customer_id = params["customer_id"]
        if not views.valid_customer_id(customer_id):
            return self._error(
                route, 400, "bad_id", "a customer id is 1 to 128 characters, none of them control"
            )
        status = query.get("status")
        if status is not None and status not in STATUSES:
            return self._error(
                route, 400, "bad_status", f"status is one of {', '.join(STATUSES)}, or left out"
            )
        return await self._customer(route, customer_id, status, scope, query, headers)

    async def _customer(
        self,
        route: str,
        customer_id: str,
        status: str | None,
        scope: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> Reply:
        key = customer_id.encode()
        owner = self.peers.owner(key)
        if owner is None or (owner != SELF and FORWARDED in headers):
            return self._unavailable(route, "the worker that owns this customer is not known yet")
        if owner != SELF:
            path = ROUTES[route].format(customer_id=quote(customer_id, safe=""))
            return await self._pass_on(route, owner, _target(path, query), headers)
        if not self.keeper.ready:
            return self._unavailable(route, "this worker is still recovering its cases")
        now = self.clock()
        found = books.cases(self.keeper.book(key, now), status)
        if route == "page":
            staff = [views.staff_view(c, self.config, now) for c in found]
            html = page.render_customer_page(customer_id, staff, now, days=_days(self.config))
            return Reply(200, html.encode(), HTML)
        shown = [self._view(c, scope, now) for c in found]
        return Reply(200, orjson.dumps({"customer_id": customer_id, "cases": shown}))

    async def _case(self, exception_id: str, scope: str, headers: Mapping[str, str]) -> Reply:
        route = "case"
        target = ROUTES[route].format(exception_id=exception_id)
        customer = self.keeper.index.get(exception_id)
        if customer is not None:
            owner = self.peers.owner(customer)
            if owner == SELF and self.keeper.ready:
                now = self.clock()
                case = books.find(self.keeper.book(customer, now), exception_id)
                if case is not None:
                    return Reply(200, orjson.dumps(self._view(case, scope, now)))
            elif owner is not None and owner != SELF and FORWARDED not in headers:
                reply = await self._pass_on(route, owner, target, headers)
                if reply.status != 404:
                    return reply
        if FORWARDED in headers:  # asked by another worker: only what is here
            if self.keeper.ready:
                return self._error(route, 404, "not_found", "no such case here")
            return self._unavailable(route, "this worker is still recovering its cases")
        replies = await asyncio.gather(
            *(self._pass_on(route, url, target, headers) for url in self.peers.others())
        )
        for reply in replies:
            if reply.status == 200:
                return reply
        if self.keeper.ready and all(r.status == 404 for r in replies):
            return self._error(
                route,
                404,
                "not_found",
                f"no case {exception_id} within the last {_days(self.config)} days: check the id",
            )
        return self._unavailable(route, "a worker that may hold this case did not answer")

    def _view(self, case: Any, scope: str, now: float) -> dict[str, Any]:
        if scope == "staff":
            return views.staff_view(case, self.config, now)
        return views.customer_view(case, self.config, now)

    async def _pass_on(
        self, route: str, url: str, target: str, headers: Mapping[str, str]
    ) -> Reply:
        sent = {k: v for k, v in headers.items() if k in ("authorization", "cookie")}
        sent[FORWARDED] = "1"
        try:
            return await self.peers.fetch(url, target, sent)
        except Unreachable as exc:
            log.warning("case API: %s did not answer (%s)", url, exc)
            return self._unavailable(route, "the worker that owns this customer did not answer")

    def _login(self, form: Mapping[str, str]) -> Reply:
        back = form.get("next", "")
        if not back.startswith("/cases/customer/"):  # never a redirect elsewhere
            back = "/cases/customer/"
        token = form.get("token", "")
        if self.tokens.scope(token) != "staff":
            return Reply(401, page.login_page(back, failed=True).encode(), HTML)
        cookie = f"{COOKIE}={quote(token, safe='')}; Path=/cases; HttpOnly; SameSite=Strict"
        return Reply(303, b"", HTML, {"Location": back, "Set-Cookie": cookie})

    def _unavailable(self, route: str, why: str) -> Reply:
        return self._error(
            route, 503, "unavailable", f"{why}: try again shortly", {"Retry-After": RETRY_AFTER}
        )

    def _error(
        self,
        route: str,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        if route in ("page", "login"):
            return Reply(status, page.error_page(status, message).encode(), HTML, headers or {})
        body = orjson.dumps({"error": code, "message": message})
        return Reply(status, body, JSON, headers or {})


def _bearer(headers: Mapping[str, str], *, cookie: bool) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if cookie:
        for part in headers.get("cookie", "").split(";"):
            name, _, text = part.strip().partition("=")
            if name == COOKIE and text:
                return unquote(text)
    return None


@functools.cache
def _openapi() -> bytes:
    """The OpenAPI document, built once: it depends on nothing a request changes."""
    return orjson.dumps(views.openapi(), option=orjson.OPT_INDENT_2)


def _target(path: str, query: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(dict(query))}" if query else path


def _days(config: Config) -> int:
    return max(1, round(config.case_retention().total_seconds() / 86400))


class FaustPeers:
    """`Peers` from a Faust app: its partition assignor's map of table partitions to the
    workers' advertised URLs, and its HTTP client."""

    def __init__(self, app: Any, table: str, partitions: int) -> None:
        self.app = app
        self.table = table
        self.partitions = partitions
        self._sessions: dict[asyncio.AbstractEventLoop, Any] = {}
        self._me: str | None = None
        # The assignor's map as last read, and partition -> URL for the table, made from it
        # once per assignment (the assignor replaces the map at each one).
        self._map: tuple[object, dict[int, str]] = (None, {})

    def _session(self) -> Any:
        """An HTTP client of the running loop's own (the API runs in a thread of its own)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = aiohttp.ClientSession()
        return session

    async def close(self) -> None:
        """Close the running loop's HTTP client (the web server's cleanup, in its thread)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None and not session.closed:
            await session.close()

    def me(self) -> str:
        if self._me is None:
            self._me = str(self.app.conf.canonical_url).rstrip("/")
        return self._me

    def owner(self, customer: bytes) -> str | None:
        """The URL of the worker whose `table` partition holds `customer` (the partition
        Kafka's partitioner gives the key, as for every topic of the pipeline)."""
        distribution = self.app.assignor.changelog_distribution
        seen, urls = self._map
        if distribution is not seen:
            topic = self.app.tables[self.table].changelog_topic.get_topic_name()
            urls = {
                partition: str(url).rstrip("/")
                for url, topics in distribution.items()
                for partition in topics.get(topic, ())
            }
            self._map = (distribution, urls)
        url = urls.get(partition_of_key(customer, self.partitions))
        if url is None:
            return None  # no assignment yet
        return SELF if url == self.me() else url

    def others(self) -> list[str]:
        urls = {str(u).rstrip("/") for u in self.app.assignor.changelog_distribution}
        return sorted(urls - {self.me()})

    async def fetch(self, url: str, target: str, headers: Mapping[str, str]) -> Reply:
        import aiohttp

        try:
            async with self._session().get(
                url + target,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT),
                allow_redirects=False,
            ) as response:
                body = await response.read()
                kept = {
                    k: v
                    for k, v in response.headers.items()
                    if k in ("Retry-After", "WWW-Authenticate", "Casewatch-Worker")
                }
                return Reply(response.status, body, response.content_type or JSON, kept)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None


def install(app: Any, api: CaseApi) -> None:
    """Mount every route on the aiohttp application of Faust's web server, as plain aiohttp
    handlers: Faust's views add a per-request sensor pass the API has no use for (its own
    metrics are `casewatch_api_*`)."""
    from aiohttp import web

    web_app = app.web.web_app
    router = web_app.router
    # The client that passes requests on to other workers, closed with the web server
    # (aiohttp warns of an unclosed session at exit otherwise).
    web_app.on_cleanup.append(lambda _app: api.peers.close())
    for name, path in ROUTES.items():

        async def get(request: web.Request, _route: str = name) -> Any:
            reply = await api.handle(
                _route, request.match_info, request.query, _lower(request.headers)
            )
            return _response(reply)

        async def post(request: web.Request, _route: str = name) -> Any:
            form = {k: str(v) for k, v in (await request.post()).items()}
            reply = await api.handle(_route, {}, {}, _lower(request.headers), form)
            return _response(reply)

        if name == "login":
            router.add_post(path, post)
        else:
            router.add_get(path, get)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _response(reply: Reply) -> Any:
    from aiohttp import web

    content_type, _, charset = reply.content_type.partition("; charset=")
    return web.Response(
        body=reply.body,
        status=reply.status,
        content_type=content_type,
        charset=charset or None,
        headers=dict(reply.headers),
    )
