"""A worker that writes down where its memory is, for finding what makes resident memory grow
(`bench/soak.py --probe`).

    python bench/memprobe.py worker --config ...      # same arguments as `casewatch`

Every `$CASEWATCH_MEMPROBE_SECONDS` (default 30) a thread appends one JSON line to
`$CASEWATCH_MEMPROBE_FILE`:

- `rss`: resident memory (MiB, /proc/self/status);
- `heap_in_use`, `heap_free`, `mmapped`: glibc's allocator (`mallinfo2`, MiB): what the C heap
  hands out, what it holds free but has not given back, and what it maps directly (large
  blocks). RSS growing with `heap_free` is fragmentation, not a leak;
- `py_blocks`: objects' memory blocks Python has allocated (`sys.getallocatedblocks`);
- `py_arenas`, `py_used`, `py_free`: Python's own allocator (pymalloc, objects up to 512 bytes,
  in 1 MiB arenas it maps itself, outside glibc's figures; `sys._debugmallocstats`, MiB): the
  arenas held, the bytes in blocks in use, and free blocks inside them;
- `types`: the 40 most numerous object types tracked by the garbage collector, with counts.

Nothing here changes behaviour: the thread only reads. Counting the objects holds the GIL for
a fraction of a second per sample. `sys._debugmallocstats` writes to the process's stderr: for
the few milliseconds it takes, stderr goes to a file, and what the worker logged meanwhile is
written back after it.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import runpy
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, from anywhere

from bench.procs import rss_mb

MiB = 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):  # not glibc 2.33+: leave these out
        return {}
    info = libc.mallinfo2()
    return {
        "heap_in_use": round(info.uordblks / MiB, 2),
        "heap_free": round(info.fordblks / MiB, 2),
        "mmapped": round(info.hblkhd / MiB, 2),
    }


_PYMALLOC = {
    "# arenas allocated current": "py_arenas",
    "# bytes in allocated blocks": "py_used",
    "# bytes in available blocks": "py_free",
}


def _pymalloc() -> dict[str, float]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    found: dict[str, float] = {}
    others = []
    for line in text.splitlines():
        name, _, value = line.partition("=")
        key = _PYMALLOC.get(name.strip())
        if key and key not in found:
            number = int(value.strip().replace(",", ""))
            found[key] = number if key == "py_arenas" else round(number / MiB, 2)
        elif line.startswith("["):  # a log line written meanwhile, not the statistics
            others.append(line)
    if others:
        os.write(2, ("\n".join(others) + "\n").encode())
    return found


def sample() -> dict[str, object]:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return {
        "t": round(time.time(), 1),
        "rss": round(rss_mb()[0], 1),
        **_mallinfo(),
        "py_blocks": sys.getallocatedblocks(),
        **_pymalloc(),
        "objects": sum(counts.values()),
        "types": dict(counts.most_common(40)),
    }


def _run(out: Path, every: float) -> None:
    with out.open("ab", buffering=0) as f:
        while True:
            f.write(orjson.dumps(sample()) + b"\n")
            time.sleep(every)


if __name__ == "__main__":
    target = Path(os.environ["CASEWATCH_MEMPROBE_FILE"])
    seconds = float(os.environ.get("CASEWATCH_MEMPROBE_SECONDS", "30"))
    threading.Thread(target=_run, args=(target, seconds), daemon=True, name="memprobe").start()
    sys.argv = ["casewatch", *sys.argv[1:]]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
