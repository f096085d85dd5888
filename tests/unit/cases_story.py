"""A real record sequence for the case tests: the replay's engine and dispatcher, and handler
resolutions through the dispatch step's own `decide`, as the exception log carries them
(one record per decision, updates stamped with the time they were decided). The log is not
redacted, the replay's output is (as each handler's topic): `config` leaves redaction out."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipeline.config import Config, load_config
from pipeline.routers.step import decide, in_order
from pipeline.tools.replay import Replay

T0 = datetime(2026, 12, 4, 9, tzinfo=UTC)
DEFAULT = Path(__file__).resolve().parents[2] / "pipeline" / "defaults" / "casewatch.yaml"


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def stamp(hours: float) -> str:
    return at(hours).isoformat().replace("+00:00", "Z")


def config(tmp: Path, replace: dict[str, str] | None = None) -> Config:
    """The shipped config without redaction, with text replaced (e.g. a smaller capacity)."""
    text = DEFAULT.read_text().replace("    redact: [context.profile.name]", "")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "casewatch.yaml"
    path.write_text(text)
    return load_config(path)


def event(n: int, type_: str, hours: float, customer: str = "c-1", **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e-{n}",
            "type": type_,
            "customer_id": customer,
            "occurred_at": at(hours).isoformat(),
            **fields,
        }
    )


class Log:
    """The exception log of a replay, with resolutions and clock moves in between."""

    def __init__(self, config: Config) -> None:
        self.replay = Replay(config, errors=io.StringIO())
        self.records: list[dict[str, Any]] = []
        self.resolutions: list[dict[str, Any]] = []

    def feed(self, *lines: bytes) -> None:
        self.records += [_plain(x) for x in self.replay.feed(list(lines))]

    def until(self, hours: float) -> None:
        self.records += [_plain(x) for x in self.replay.finish(at(hours).timestamp())]

    def resolve(
        self, exception_id: str, handler: str, status: str, hours: float, note: str | None = None
    ) -> dict[str, Any]:
        resolution = {"exception_id": exception_id, "handler": handler, "status": status}
        resolution |= {"at": stamp(hours)} | ({"note": note} if note else {})
        self.resolutions.append(resolution)
        r = self.replay
        out = decide(r.dispatcher, r.dispatch_clock, {"resolution": resolution})
        self.records += [x.record for x in in_order(out, at(hours)) if not x.notice]
        return resolution


def _plain(record: Any) -> dict[str, Any]:
    return orjson.loads(record.model_dump_json(exclude_none=True))  # type: ignore[no-any-return]
