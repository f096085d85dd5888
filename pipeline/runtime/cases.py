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

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.cases import book as books
from pipeline.config import Config
from pipeline.core.processor import Consumed
from pipeline.runtime.metrics import Metrics
from pipeline.runtime.worker import Table

log = logging.getLogger(__name__)


@dataclass
class CaseKeeper:
    """Folds the exception log and the resolutions into the `cases` table. Never raises."""

    config: Config
    metrics: Metrics
    table: Table
    # exception id -> customer key, for every book held here (a standby copy included: it
    # tells which customer to route a request by case id to)
    index: dict[str, bytes] = field(default_factory=dict)
    # the table has been recovered since the last assignment: a book read here is current
    ready: bool = False

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

    def book(self, customer: bytes) -> Any:
        """The customer's book as this worker holds it (empty if none)."""
        return books.loads(self.table.get(customer))

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
        if new == old:
            return
        kept = set(books.ids(folded))
        for exception_id in set(books.ids(book)) - kept:
            self.index.pop(exception_id, None)
        for exception_id in kept:
            self.index[exception_id] = msg.key
        await self.table.put(msg.key, new, msg.partition)
