"""The contract as code: events in, exception records and resolutions out, dead-letter headers.

These models are the single source of `schemas/` (`casewatch schemas` writes them; a test fails
when the committed files drift). Events allow extra fields and keep them (passthrough); the
records Casewatch itself writes forbid them, so a typo in our own code cannot leak out.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict, StringConstraints

# RFC 3339 with an offset, as a string: `Strict` refuses Unix numbers, `AwareDatetime`
# refuses timestamps with no offset (whose meaning depends on the producer's time zone).
Timestamp: TypeAlias = Annotated[AwareDatetime, Strict()]
Id: TypeAlias = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text: TypeAlias = Annotated[str, StringConstraints(max_length=4000)]
Label: TypeAlias = Annotated[str, StringConstraints(min_length=1, max_length=200)]

Channel: TypeAlias = Literal["call", "chat", "email", "visit", "letter", "social", "web"]
Sentiment: TypeAlias = Literal["negative", "neutral", "positive"]
Severity: TypeAlias = Literal["low", "medium", "high", "critical"]
DetectorKind: TypeAlias = Literal["absence", "threshold", "match", "sla"]
ExceptionStatus: TypeAlias = Literal["open", "resolved", "escalated"]
ResolutionStatus: TypeAlias = Literal["acknowledged", "resolved", "reassigned"]


class _Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: Id = Field(description="Unique per event; a repeat of an id is a duplicate.")
    occurred_at: Timestamp = Field(description="Event time, RFC 3339 with an offset.")
    customer_id: Id = Field(description="The customer the event is about (the message key).")
    source: Label | None = Field(default=None, description="The upstream system.")
    attributes: dict[str, Any] | None = Field(
        default=None, description="Free-form extras, passed through to context."
    )


class Contact(_Event):
    """A customer contacted us (call, chat, email, ...)."""

    type: Literal["interaction.contact"]
    channel: Channel
    category: Label = Field(description="e.g. internet/no-service")
    sentiment: Sentiment | None = None
    transferred: bool | None = None
    summary: Text | None = None


class Complaint(_Event):
    """A complaint; negative unless it says otherwise."""

    type: Literal["interaction.complaint"]
    channel: Channel
    category: Label
    summary: Text | None = None
    sentiment: Sentiment = "negative"


class MaintenanceRequested(_Event):
    """A customer reported something broken on an asset."""

    type: Literal["interaction.maintenance_requested"]
    asset_id: Id = Field(description="e.g. unit-12/kitchen-faucet")
    category: Label = Field(description="e.g. plumbing/leak")
    sentiment: Sentiment | None = None
    summary: Text | None = None


class MaintenanceCompleted(_Event):
    """Work on an asset was completed."""

    type: Literal["interaction.maintenance_completed"]
    asset_id: Id
    category: Label | None = None


class CustomerProfile(_Event):
    """The customer's profile; the latest one per customer wins. Allowed on either topic."""

    type: Literal["customer.profile"]
    tier: Label = Field(description="e.g. standard, gold, platinum")
    segment: Label | None = None
    region: Label | None = None
    name: Text | None = None


class Money(BaseModel):
    """An amount in a currency. The amount is a decimal, never a float."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=28)]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217 code, three capital letters, e.g. EUR"
    )


class OrderPlaced(_Event):
    """An order was placed."""

    type: Literal["order.placed"]
    order_id: Id
    value: Money
    promised_by: Timestamp | None = None


class OrderShipped(_Event):
    """An order left the warehouse; `promised_by` here replaces the earlier promise."""

    type: Literal["order.shipped"]
    order_id: Id
    carrier: Label | None = None
    tracking_id: Label | None = None
    promised_by: Timestamp | None = None


class OrderDelivered(_Event):
    """An order was delivered."""

    type: Literal["order.delivered"]
    order_id: Id


class DeliveryFailed(_Event):
    """A delivery attempt failed."""

    type: Literal["order.delivery_failed"]
    order_id: Id
    reason: Text | None = None


class OrderCancelled(_Event):
    """An order was cancelled."""

    type: Literal["order.cancelled"]
    order_id: Id


Event: TypeAlias = Annotated[
    Contact
    | Complaint
    | MaintenanceRequested
    | MaintenanceCompleted
    | CustomerProfile
    | OrderPlaced
    | OrderShipped
    | OrderDelivered
    | DeliveryFailed
    | OrderCancelled,
    Field(discriminator="type"),
]

EVENT_MODELS: tuple[type[_Event], ...] = (
    Contact,
    Complaint,
    MaintenanceRequested,
    MaintenanceCompleted,
    CustomerProfile,
    OrderPlaced,
    OrderShipped,
    OrderDelivered,
    DeliveryFailed,
    OrderCancelled,
)
EVENT_TYPES: tuple[str, ...] = tuple(
    m.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in EVENT_MODELS
)
INTERACTION_TYPES = frozenset(t for t in EVENT_TYPES if not t.startswith("order."))
ORDER_TYPES = frozenset(t for t in EVENT_TYPES if t.startswith("order."))


class _Record(BaseModel):
    """What Casewatch writes: no unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Record):
    """Where an exception was sent and why."""

    handler: str
    path: str = Field(description="The stable key of the matched route node, e.g. root/vip.")
    reason: str = Field(description="normal, overflow (with the full handler) or escalation.")


class SourcePosition(_Record):
    """The Kafka position of the event that triggered an exception."""

    topic: str
    partition: int
    offset: int


class ExceptionRecord(_Record):
    """One exception, as published on `casewatch.exceptions` and the handler topics.

    An update (resolved, escalated) is the same record again, with the same `exception_id`.
    """

    exception_id: str = Field(description="Deterministic: same input, same id, in replay too.")
    rule: str
    kind: DetectorKind
    status: ExceptionStatus
    severity: Severity
    customer_id: str
    subject: dict[str, str] = Field(description='e.g. {"order_id": "o-1"}')
    event_time: AwareDatetime = Field(description="When it fired; for an absence, the deadline.")
    detected_at: AwareDatetime = Field(description="Wall-clock time it was emitted.")
    evidence: list[str] = Field(
        description="The event_ids that caused it; each is in context.evidence too."
    )
    context: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "The customer as it fired: profile, evidence (per evidence id: event_id, "
            "occurred_at, type, detail), recent_events (those that are evidence with their "
            "event_id), open_orders, open_exceptions (docs/contract.md)."
        ),
    )
    route: Route | None = None
    rule_version: str = Field(description="A hash of the rule's config.")
    source: SourcePosition | None = Field(default=None, description="Absent in replay.")


class Resolution(_Record):
    """A handler's update on an exception, published to `casewatch.resolutions`."""

    exception_id: str
    handler: str
    status: ResolutionStatus
    at: Timestamp
    note: Text | None = None


# Dead-letter header names (the contract's); values are UTF-8.
DLQ_REASON = "casewatch.error.reason"
DLQ_CLASS = "casewatch.error.class"
DLQ_TOPIC = "casewatch.original.topic"
DLQ_PARTITION = "casewatch.original.partition"
DLQ_OFFSET = "casewatch.original.offset"


class DeadLetter(_Record):
    """The headers of a dead-letter record; its key and value are the original bytes."""

    reason: str = Field(description="A sentence a person can act on.")
    error_class: str = Field(description="A short stable code, e.g. json_invalid.")
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers, in the contract's names."""
        return [
            (DLQ_REASON, self.reason.encode()),
            (DLQ_CLASS, self.error_class.encode()),
            (DLQ_TOPIC, self.topic.encode()),
            (DLQ_PARTITION, str(self.partition).encode()),
            (DLQ_OFFSET, str(self.offset).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]] | dict[str, bytes]) -> DeadLetter:
        """Read the contract's headers back (for tools and tests that consume the DLQ)."""
        h = {k: v.decode() for k, v in (headers.items() if isinstance(headers, dict) else headers)}
        return cls(
            reason=h[DLQ_REASON],
            error_class=h[DLQ_CLASS],
            topic=h[DLQ_TOPIC],
            partition=int(h[DLQ_PARTITION]),
            offset=int(h[DLQ_OFFSET]),
        )
