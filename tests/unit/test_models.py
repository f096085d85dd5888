"""Contract records: dead-letter headers, exception records, resolutions, and schema drift."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from pipeline.core import schemas
from pipeline.core.models import DeadLetter, ExceptionRecord, Resolution

NOW = datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_dead_letter_headers_use_the_contract_names_and_round_trip() -> None:
    dl = DeadLetter(
        reason="field 'type' is missing",
        error_class="type_missing",
        topic="t",
        partition=3,
        offset=42,
    )
    headers = dict(dl.headers())
    assert headers["casewatch.error.reason"] == b"field 'type' is missing"
    assert headers["casewatch.original.offset"] == b"42"
    assert set(headers) == {
        "casewatch.error.reason",
        "casewatch.error.class",
        "casewatch.original.topic",
        "casewatch.original.partition",
        "casewatch.original.offset",
    }
    assert DeadLetter.from_headers(dl.headers()) == dl


def test_exception_record_refuses_unknown_fields_and_statuses() -> None:
    base = {
        "exception_id": "x",
        "rule": "missing_delivery",
        "kind": "absence",
        "status": "open",
        "severity": "high",
        "customer_id": "c",
        "subject": {"order_id": "o-1"},
        "event_time": NOW,
        "detected_at": NOW,
        "evidence": ["e-1"],
        "rule_version": "abc",
    }
    assert ExceptionRecord.model_validate(base).route is None
    with pytest.raises(ValidationError):
        ExceptionRecord.model_validate({**base, "status": "closed"})
    with pytest.raises(ValidationError):
        ExceptionRecord.model_validate({**base, "colour": "red"})


def test_resolution_needs_an_offset_on_its_time() -> None:
    with pytest.raises(ValidationError):
        Resolution.model_validate_json(
            b'{"exception_id":"x","handler":"h","status":"resolved","at":"2026-03-01T10:00:00"}'
        )


def test_committed_schemas_match_the_models() -> None:
    generated = schemas.generate()
    committed = {p.name: p.read_bytes() for p in schemas.SCHEMA_DIR.glob("*.json")}
    assert set(committed) == set(generated), "run `casewatch schemas` and commit schemas/"
    for name, data in generated.items():
        assert committed[name] == data, (
            f"schemas/{name} drifted: run `casewatch schemas` and commit"
        )
