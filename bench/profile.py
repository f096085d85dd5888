"""A py-spy profile of a worker draining the backlog (`bench/run.py --profile`), summarised.

py-spy samples the worker from outside (no change to it) and writes collapsed stacks; this
module attaches it and turns the stacks into three lists: where the time is spent by package,
inside a function (self), and under it (inclusive), as percentages of all samples. Only busy
threads are sampled (py-spy leaves idle ones out), so the percentages are of busy time.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_REPO = f"{Path(__file__).resolve().parents[1]}/"


def attach(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` on `pid`; None (with a message) when py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("profile skipped: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def detach(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop recording: py-spy writes its file on SIGINT."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def summarise(raw: Path, top: int = 25) -> str:
    """Time by package, and self and inclusive time per function, from collapsed stacks."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if frames[-1].split(" (")[0] in _WAITING:
            waiting += n  # a thread blocked in a wait, not using the CPU
            continue
        total += n
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for f in set(frames):
            under[f] += n
    if not total:
        return "no samples"
    lines = ["where the time goes (share of busy samples):"]
    lines += [f"{share:6.1f}%  {area}" for area, share in areas(raw).items()]
    lines += [
        "",
        f"{total} samples of threads running Python (100 per second; {waiting} more samples of "
        "threads blocked in select/epoll or a lock wait are left out)",
        "",
        "self time by package:",
    ]
    lines += [f"{100 * n / total:6.1f}%  {p}" for p, n in packages.most_common()]
    for title, counter in (("self", own), ("inclusive", under)):
        lines.append(f"\ntop {top} by {title} time:")
        lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines)


# Leaf functions in which a thread waits (py-spy samples them unless it can tell they are idle).
_WAITING = frozenset(
    {
        "EpollSelector.select",
        "_PollLikeSelector.select",
        "select",
        "Condition.wait",
        "Event.wait",
        "Lock.acquire",
        "poll",
        "epoll",
    }
)


# Where the time goes: the first rule whose function is on a sample's stack names its share.
_AREAS = (
    ("serve_forever", "metrics endpoint (answering /metrics scrapes)"),
    ("WorkerThread.run", "Faust's threads (fetching; the case API's web server)"),
    ("DispatchStep.handle", "dispatch: routing on the one partition"),
    ("Worker.tick", "clock ticks"),
    ("decode_event", "Casewatch: validation (decode_event)"),
    ("CustomerState.from_bytes", "Casewatch: state read (decompress, decode)"),
    ("Processor._encode", "Casewatch: state write (encode, compress)"),
    ("Engine.observe", "Casewatch: rules, context, findings (Engine.observe)"),
    ("Processor.process", "Casewatch: the rest of the processor (dedupe, clocks, records)"),
    ("StateTable.", "Casewatch: table writes and changelog batches"),
    ("Worker._apply", "Casewatch: outputs sent and awaited, metrics"),
    ("Sender._sender_routine", "aiokafka producer: building and sending requests"),
    ("Sender._send_produce_req", "aiokafka producer: building and sending requests"),
    ("Timer.", "Faust timers (ticks sender, lag, commit)"),
    ("Consumer.commit", "Faust offset commits"),
    ("SafeConsumer._drain_messages", "fetch loop: records taken, batches acknowledged"),
)


def areas(raw: Path) -> dict[str, float]:
    """Share of busy samples per area of the worker (see `_AREAS`), the rest as Faust/asyncio."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        names = [f.split(" (")[0] for f in stack.split(";")]
        if names[-1] in _WAITING:
            continue
        area = next(
            (label for marker, label in _AREAS if any(n.startswith(marker) for n in names)),
            "Faust/mode/asyncio: agents, streams, scheduling, the rest",
        )
        counts[area] += int(count)
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`: one entry per
    function, whatever the line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", _REPO):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _package(frame: str) -> str:
    """The package of a shortened frame: `pipeline`, `faust`, `aiokafka`, ... or `stdlib`."""
    path = frame.rpartition(" (")[2].rstrip(")")
    if "/" not in path:
        return "stdlib" if path.endswith(".py") else path or "?"
    top = path.split("/", 1)[0]
    return "stdlib: asyncio" if top == "asyncio" else top
