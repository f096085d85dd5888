"""JSON Schema for the contract, generated from `pipeline.core.models` (the single source), and
the case API's OpenAPI document, generated from `pipeline.cases.api`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from pipeline.cases.api import openapi
from pipeline.core.models import DeadLetter, Event, ExceptionRecord, Resolution

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
_BASE = "https://casewatch.dev/schemas/v1/"


def generate() -> dict[str, bytes]:
    """File name -> schema bytes, stable (sorted keys, trailing newline) so diffs are clean."""
    schemas: dict[str, dict[str, Any]] = {
        "event.schema.json": TypeAdapter(Event).json_schema(),
        "exception-record.schema.json": ExceptionRecord.model_json_schema(),
        "resolution.schema.json": Resolution.model_json_schema(),
        "dead-letter-headers.schema.json": DeadLetter.model_json_schema(),
    }
    out = {}
    for name, schema in schemas.items():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": _BASE + name,
            **schema,
        }
        out[name] = _stable(schema)
    out["cases-api.openapi.json"] = _stable(openapi())
    return out


def _stable(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in generate().items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths
