"""Garbage-collector pauses kept short and counted.

The worker holds everything the interpreter and its libraries made at start (modules, classes,
Faust's and aiokafka's services: most of its objects) for its whole life. With CPython's
default thresholds, each full collection walks all of them, and the records of a fetch and the
objects of a batch, alive across many small collections, are promoted into the oldest generation
fast enough to set full collections off again and again: every thread of the worker stops for
the walk, the case API's and the fetcher's included, which is what a latency tail is made of.
`quiet()` moves what exists at start out of the collector's sight (`gc.freeze`) and lets a batch's
objects die young before a collection looks at them; the collector still runs, on what the
worker made since. `casewatch_gc_pause_seconds` shows every pause by generation.
"""

from __future__ import annotations

import gc
import time
from typing import Any

# Net new container objects between two youngest-generation collections (CPython's default is
# 700: a fetch's records and a batch's objects outlive several collections at that rate).
YOUNG_THRESHOLD = 20_000


def quiet(histogram: Any) -> None:
    """Freeze what exists now, collect young objects less often, and time each pause into
    `histogram` (a Prometheus histogram labelled by generation)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    children = [histogram.labels(str(g)) for g in range(3)]
    started = 0.0

    def timed(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            children[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(timed)
