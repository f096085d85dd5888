"""A worker that writes down what it does, for diagnosing a chaos run (`run.py --trace`).

    python tests/chaos/traced.py worker --config ...      # same arguments as `casewatch`

Each process appends one JSON line per step to `$CASEWATCH_TRACE_DIR/trace-<pid>.jsonl`, written
unbuffered so that a `kill -9` loses nothing already done:

- `A` / `R`: partitions assigned / revoked (the rebalance callbacks);
- `S`: a seek to the committed offsets, with what the consumer then holds as committed;
- `P`: an input event processed (source topic, partition, offset, event id);
- `K`: an offset acknowledged (what a later commit may pass);
- `C`: a commit, with its offsets and whether the broker took it;
- `D`: a record sent to dispatch (exception id, status) and acknowledged;
- `Q`: a dispatch record routed (its offset, exception id and status);
- `H`: a record written to a handler topic and acknowledged.

Nothing here changes behaviour: each step calls the original and records its outcome.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from faust.sensors.base import SensorDelegate  # noqa: E402

from pipeline.routers import step  # noqa: E402
from pipeline.runtime import offsets, worker  # noqa: E402
from pipeline.runtime.durable import App  # noqa: E402
from pipeline.sinks.kafka import TopicSink  # noqa: E402

_out = (Path(os.environ["CASEWATCH_TRACE_DIR"]) / f"trace-{os.getpid()}.jsonl").open(
    "ab", buffering=0
)


def note(kind: str, **fields: Any) -> None:
    _out.write(orjson.dumps({"k": kind, "t": round(time.time(), 3), **fields}) + b"\n")


def _tps(tps: Any) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)


def _event_id(value: bytes | None) -> str | None:
    try:
        found = orjson.loads(value or b"").get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _wrap(cls: Any, name: str, after: Any) -> None:
    original = getattr(cls, name)

    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        try:
            after(self, result, *args, **kwargs)
        except Exception as exc:  # the trace must never change what the worker does
            note("trace-error", step=name, error=repr(exc))
        return result

    setattr(cls, name, wrapper)


def _processed(self: Any, _: Any, records: Any) -> None:
    for r in records:
        note("P", tp=f"{r.topic}:{r.partition}", o=r.offset, e=_event_id(r.value))


_wrap(worker.Worker, "batch", _processed)


def _routed(self: Any, _: Any, value: bytes | None, offset: int = -1) -> None:
    record = orjson.loads(value or b"{}").get("exception")  # else a clock or a resolution
    if not isinstance(record, dict):
        record = {}
    note("Q", o=offset, x=record.get("exception_id"), s=record.get("status"))


_wrap(step.DispatchStep, "handle", _routed)
_wrap(
    offsets.SafeConsumer,
    "_commit",
    lambda self, ok, tps: note(
        "C", ok=bool(ok), offsets={f"{tp.topic}:{tp.partition}": o for tp, o in tps.items()}
    ),
)
_wrap(
    offsets.SafeConsumer,
    "perform_seek",
    lambda self, _: note(
        "S",
        committed={
            f"{tp.topic}:{tp.partition}": o for tp, o in self._committed_offset.items() if o
        },
    ),
)
_wrap(App, "_on_partitions_assigned", lambda self, _, tps, *a: note("A", tps=_tps(tps)))
_wrap(App, "_on_partitions_revoked", lambda self, _, tps, *a: note("R", tps=_tps(tps)))


def _sent(self: TopicSink, _: Any, key: bytes | None, value: bytes | None, *a: Any) -> None:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return
    record = data.get("exception") if "-dispatch" in self.name else data
    if isinstance(record, dict) and "exception_id" in record:
        kind = "D" if "-dispatch" in self.name else "H"
        note(kind, topic=self.name, x=record["exception_id"], s=record.get("status"))


_wrap(TopicSink, "send", _sent)


def _sent_all(self: TopicSink, _: Any, records: Any) -> None:
    for key, value, *_ in records:
        _sent(self, None, key, value)


_wrap(TopicSink, "send_all", _sent_all)

# A batch's offsets are acknowledged together (SafeConsumer._ack_batch), not through the sensors.
_ack_batch = offsets.SafeConsumer._ack_batch


def ack_batch(self: Any, tp: Any, records: Any) -> None:
    _ack_batch(self, tp, records)
    for r in records:
        note("K", tp=f"{tp.topic}:{tp.partition}", o=r.offset)


offsets.SafeConsumer._ack_batch = ack_batch  # type: ignore[method-assign]

# Faust's compiled stream iterator acknowledges offsets inline (not through Consumer.ack); the
# sensors hear of each acknowledged offset.
_out_of_stream = SensorDelegate.on_message_out


def on_message_out(self: Any, tp: Any, offset: int, message: Any) -> None:
    _out_of_stream(self, tp, offset, message)
    note("K", tp=f"{tp.topic}:{tp.partition}", o=offset)


SensorDelegate.on_message_out = on_message_out  # type: ignore[method-assign]

if __name__ == "__main__":
    note("start", argv=sys.argv[1:])
    sys.argv = ["casewatch", *sys.argv[1:]]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
