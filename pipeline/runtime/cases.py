"""The case view, kept live: every routed record of the exception log and every handler's
resolution folded into one case book per customer (pipeline/cases/book.py), in the `cases`
table.

Both topics are keyed by customer_id and have the sources' partition count, so partition N of
each, and of the table's changelog, belongs to the same worker: the one the API routes a
customer's requests to (pipeline/runtime/api.py). The table is written through `StateTable`, so
its changelog record is sent before the offset of the record that changed it is committed; a
worker killed at any point rebuilds the same books from the changelog and the records after it.
Folding is idempotent, so a record read twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipeline.cases import book as books
from pipeline.config import Config
from pipeline.core.processor import Consumed
from pipeline.runtime.metrics import Metrics

log = logging.getLogger(__name__)

SWEEP_SLICE = 500  # books swept between two turns of the event loop


class BookTable(Protocol):
    """The `cases` table as the keeper writes it (`durable.StateTable`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...

    async def put(self, key: bytes, value: bytes | None, partition: int) -> None: ...

    async def delete(self, key: bytes, partition: int) -> None: ...


@dataclass
class CaseKeeper:
    """Folds the exception log and the resolutions into the `cases` table. Never raises."""

    config: Config
    metrics: Metrics
    table: BookTable
    # exception id -> customer key, for every book held here (a standby copy included: it
    # tells which customer to route a request by case id to)
    index: dict[str, bytes] = field(default_factory=dict)
    # the table has been recovered since the last assignment: a book read here is current
    ready: bool = False
    revocations: int = 0  # partitions revoked so far: a sweep stops at the next one

    def __post_init__(self) -> None:
        self._limits: dict[str, Any] = {
            "retention_s": self.config.case_retention().total_seconds(),
            "max_cases": self.config.cases.max_per_customer,
        }

    async def record(self, msg: Consumed) -> None:
        """One routed record of the exception log (written by dispatch: a record that is not
        JSON of one is counted as a fold error)."""
        try:
            item = orjson.loads(msg.value or b"")
        except orjson.JSONDecodeError:
            item = None
        await self._fold(msg, item, books.apply_record, "record")

    async def resolution(self, msg: Consumed, resolution: dict[str, Any]) -> None:
        """One handler's update on the resolutions topic, as the worker validated it
        (`Worker.resolution`; an invalid one was dead-lettered there and never comes here)."""
        await self._fold(msg, resolution, books.apply_resolution, "resolution")

    def book(self, customer: bytes, now: float) -> Any:
        """The customer's book as this worker holds it (empty if none), as of wall time `now`:
        closed cases past the retention left out, though no record has come for the customer
        since to drop them."""
        return books.expire(books.loads(self.table.get(customer)), now, **self._limits)

    async def sweep(self, now: float, owned: Callable[[bytes], int | None]) -> int:
        """Drop what `book(key, now)` leaves out from every book this worker owns, in the
        table and its changelog: a book with nothing left is deleted (a tombstone), so the
        table keeps only customers with a case in the retention window. `owned(key)` is the
        key's partition when this worker owns it, else None (a standby copy: its owner sweeps
        it). Books are read a slice at a time, the event loop free in between. Returns the
        cases dropped."""
        if not self.ready:
            return 0
        dropped = 0
        generation = self.revocations
        keys = [key for key, _ in self.table.items()]
        for n, key in enumerate(keys, start=1):
            if not self.ready or self.revocations != generation:
                break  # a rebalance since: `owned` is out of date, the new owner sweeps
            dropped += await self._expire(key, now, owned)
            if n % SWEEP_SLICE == 0:
                await asyncio.sleep(0)
        if dropped:
            self.metrics.cases_expired.inc(dropped)
            log.info("cases: %d closed cases past the retention dropped", dropped)
        return dropped

    async def _expire(self, key: bytes, now: float, owned: Callable[[bytes], int | None]) -> int:
        partition = owned(key)
        if partition is None:
            return 0  # a standby copy: its owner sweeps it
        old = self.table.get(key)
        if old is None:
            return 0  # deleted since the keys were listed
        try:
            book = books.loads(old)
            kept = books.expire(book, now, **self._limits)
        except Exception:
            log.exception("cases: could not sweep a book")
            self.metrics.case_errors.labels("sweep").inc()
            return 0
        if kept is book:
            return 0
        return await self._store(key, book, kept, books.dumps(kept), partition)

    def recovered(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """After an assignment: the index from the table's local contents."""
        self.index = {}
        count = 0
        for key, value in items:
            count += 1
            for exception_id in books.ids(books.loads(value)):
                self.index[exception_id] = key
        self.ready = True
        log.info("cases recovered: %d customers, %d cases", count, len(self.index))

    def revoked(self) -> None:
        self.ready = False
        self.revocations += 1

    async def _fold(self, msg: Consumed, item: Any, apply: Any, what: str) -> None:
        if not msg.key:
            return
        try:
            old = self.table.get(msg.key)
            book = books.loads(old)
            folded = apply(book, item, **self._limits)
            new = books.dumps(folded)
        except Exception:
            log.exception("cases: could not fold a %s at offset %d", what, msg.offset)
            self.metrics.case_errors.labels(what).inc()
            return
        if new != old:
            await self._store(msg.key, book, folded, new, msg.partition)

    async def _store(
        self, key: bytes, before: Any, after: Any, value: bytes, partition: int
    ) -> int:
        """Write a changed book (`value`: `after` serialised), or delete it when nothing is
        left in it, and keep the index of its cases; returns how many cases left it."""
        kept = set(books.ids(after))
        gone = set(books.ids(before)) - kept
        for exception_id in gone:
            self.index.pop(exception_id, None)
        for exception_id in kept:
            self.index[exception_id] = key
        if books.is_empty(after):
            await self.table.delete(key, partition)
        else:
            await self.table.put(key, value, partition)
        return len(gone)
