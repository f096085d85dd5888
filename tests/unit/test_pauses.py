"""The worker's garbage-collector setting: what exists at start is out of the collector's sight,
and every pause shows in `casewatch_gc_pause_seconds` by generation."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from pipeline.runtime.metrics import Metrics
from pipeline.runtime.pauses import YOUNG_THRESHOLD, quiet


@pytest.fixture
def restored() -> Iterator[None]:
    """The test process's collector as it was."""
    threshold, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    gc.set_threshold(*threshold)
    gc.unfreeze()


def pauses(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value(
        "casewatch_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_a_full_collection_is_counted_and_skips_what_existed_at_start(restored: None) -> None:
    metrics = Metrics.create(CollectorRegistry())
    kept = [[n] for n in range(1000)]  # made before: frozen with the rest
    quiet(metrics.gc_pause)
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    before = pauses(metrics.registry, "2")
    gc.collect()
    assert pauses(metrics.registry, "2") == before + 1
    # the frozen objects are not in any generation the collector walks
    assert not any(o is kept for o in gc.get_objects())
