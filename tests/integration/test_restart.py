"""State survives a worker restart: the table is rebuilt from its changelog topic, even with
the local state directory gone, so events already seen stay recognised as duplicates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.integration.test_ingest import event, publish
from tests.integration.workers import run_worker, wait_for

pytestmark = pytest.mark.integration


def test_restarted_worker_remembers_seen_events(
    config_file: Path, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic = f"{unique}.interactions"
    batch = [event(i) for i in range(20)]
    records = [(topic, e["customer_id"].encode(), orjson.dumps(e)) for e in batch]

    with run_worker(config_file, bootstrap, tmp_path / "first") as worker:
        asyncio.run(publish(bootstrap, records))
        wait_for("the first batch", lambda: worker.metric("casewatch_events_total") == 20)

    # A new process with an empty state directory: only the changelog can tell it what it saw.
    with run_worker(config_file, bootstrap, tmp_path / "second") as worker:
        asyncio.run(publish(bootstrap, records))
        wait_for("the repeats", lambda: worker.metric("casewatch_duplicate_events_total") == 20)
        assert worker.metric("casewatch_events_total") == 0
        assert "Error in recovery" not in worker.log.read_text()
