"""The case API's bodies as pydantic models, and its OpenAPI 3.1 document (`openapi()`),
committed as `schemas/cases-api.openapi.json` by `casewatch schemas` (a test fails when it
drifts). The views (pipeline/cases/views.py) build these shapes as plain dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import models_json_schema

Time = str  # RFC 3339, UTC, with Z
_TIME: JsonDict = {"format": "date-time"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaffStep(_Body):
    """One step of a case, as staff see it."""

    at: Time = Field(json_schema_extra=_TIME)
    step: Literal[
        "detected", "routed", "overflow", "escalated", "acknowledged", "reassigned", "resolved"
    ]
    handler: str | None = Field(description="The handler the step concerns (it took it, or acted).")
    from_: str | None = Field(alias="from", description="The handler it came from, if any.")
    reason: str = Field(description="The log's route.reason, or what the step was.")
    by: str | None = Field(description="Who acted: a handler, or `detector`.")
    note: str | None = Field(description="The handler's note on its resolution.")


class StaffCase(_Body):
    """A case as staff see it: the holder's redactions applied to subject, evidence, context."""

    exception_id: str
    customer_id: str
    rule: str
    kind: str
    severity: str
    subject: dict[str, str]
    status: Literal["open", "escalated", "resolved"]
    handler: str | None = Field(description="The current holder; null once resolved.")
    handler_since: Time | None = Field(
        json_schema_extra=_TIME, description="When the holder's SLA clock started."
    )
    detected_at: Time = Field(json_schema_extra=_TIME)
    event_time: Time = Field(json_schema_extra=_TIME)
    due: Time | None = Field(
        json_schema_extra=_TIME, description="handler_since + the holder's resolve_within."
    )
    sla_missed: bool = Field(description="Escalated, or due passed before resolution (or now).")
    resolved_at: Time | None = Field(json_schema_extra=_TIME)
    resolved_by: str | None = Field(description="The handler that resolved it, or `detector`.")
    age_s: float = Field(description="Seconds since it was detected.")
    evidence: list[str] = Field(description="The event ids that caused it (at most 20).")
    context: dict[str, Any]
    timeline: list[StaffStep]


class CustomerStep(_Body):
    """One step a customer is told of."""

    at: Time = Field(json_schema_extra=_TIME)
    text: str


class CustomerCase(_Body):
    """A case as its customer sees it: no evidence, context, notes, handler names or reasons."""

    exception_id: str
    customer_id: str
    status: Literal["open", "resolved"]
    state: Literal["noticed", "on_it", "escalated", "resolved"]
    state_text: str = Field(description="The state in plain words (config cases.states).")
    message: str = Field(description="The rule's message (config cases.messages), filled in.")
    opened_at: Time = Field(json_schema_extra=_TIME)
    updated_at: Time = Field(json_schema_extra=_TIME)
    due: Time | None = Field(json_schema_extra=_TIME)
    resolved_at: Time | None = Field(json_schema_extra=_TIME)
    timeline: list[CustomerStep]


class StaffCaseList(_Body):
    """A customer's cases for staff: open first, then the rest, newest first."""

    customer_id: str
    cases: list[StaffCase]


class CustomerCaseList(_Body):
    """A customer's cases for the customer: open first, then the rest, newest first."""

    customer_id: str
    cases: list[CustomerCase]


class ErrorBody(_Body):
    """Every error response."""

    error: str = Field(description="A short stable code, e.g. not_found, malformed_id.")
    message: str = Field(description="A sentence a person can act on.")


MODELS: tuple[type[BaseModel], ...] = (
    StaffCase,
    CustomerCase,
    StaffCaseList,
    CustomerCaseList,
    ErrorBody,
)

SCOPES = (
    "Send `Authorization: Bearer <token>`. A token has one of two scopes. `staff`: the staff "
    "view (StaffCase: evidence, context, timeline with handlers, reasons and notes, the "
    "holder's redactions applied). `customer`: the customer view only (CustomerCase: the "
    "state in plain words and the rule's message), and only of the customer the token is for."
)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the case API."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in MODELS], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Casewatch case API",
            "version": "1",
            "description": "Each customer's exceptions as cases (docs/cases.md).",
        },
        "paths": {
            "/v1/customers/{customer_id}/cases": {"get": _list()},
            "/v1/cases/{exception_id}": {"get": _one()},
            "/cases/customer/{customer_id}": {"get": _page()},
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": SCOPES}
            },
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before asking again.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
        "security": [{"bearer": []}],
    }


_CUSTOMER_ID = {
    "name": "customer_id",
    "in": "path",
    "required": True,
    "description": "The customer's id: 1 to 128 characters, no control characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _either(staff: str, customer: str) -> dict[str, Any]:
    return {
        "oneOf": [
            {"$ref": f"#/components/schemas/{staff}"},
            {"$ref": f"#/components/schemas/{customer}"},
        ]
    }


def _list() -> dict[str, Any]:
    status = {
        "name": "status",
        "in": "query",
        "required": False,
        "description": "Only cases with this status (escalated ones count as open in the order).",
        "schema": {"type": "string", "enum": ["open", "escalated", "resolved"]},
    }
    return {
        "summary": "A customer's cases: open first, then the rest, newest first",
        "description": "A staff token gets StaffCaseList, a customer token CustomerCaseList.",
        "parameters": [_CUSTOMER_ID, status],
        "responses": _responses(
            "The customer's cases (with ?status, possibly none).",
            {"application/json": {"schema": _either("StaffCaseList", "CustomerCaseList")}},
            "a malformed customer id, or a status other than open, escalated or resolved",
            "no cases for this customer",
        ),
    }


def _one() -> dict[str, Any]:
    exception_id = {
        "name": "exception_id",
        "in": "path",
        "required": True,
        "description": "32 lower-case hexadecimal digits.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    return {
        "summary": "One case",
        "description": "A staff token gets StaffCase, a customer token CustomerCase.",
        "parameters": [exception_id],
        "responses": _responses(
            "The case.",
            {"application/json": {"schema": _either("StaffCase", "CustomerCase")}},
            "a malformed exception id",
            "no such case",
        ),
    }


def _page() -> dict[str, Any]:
    return {
        "summary": "The customer's cases as an HTML page",
        "parameters": [_CUSTOMER_ID],
        "responses": _responses(
            "The page.",
            {"text/html": {"schema": {"type": "string"}}},
            "a malformed customer id",
            "no cases for this customer",
        ),
    }


def _responses(ok: str, content: dict[str, Any], bad: str, missing: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        "200": {"description": ok, "content": content},
        "400": {"description": f"Malformed: {bad}.", "content": error},
        "401": {"description": "No token, or one that is not valid.", "content": error},
        "403": {"description": "The token's scope does not cover this.", "content": error},
        "404": {"description": f"Not found: {missing}.", "content": error},
        "503": {
            "description": "Not ready (the cases are being restored, or their owner is "
            "unreachable): ask again after Retry-After seconds.",
            "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
            "content": error,
        },
    }
