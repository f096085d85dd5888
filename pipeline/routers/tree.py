"""Handlers and the routing tree of the config file, modelled on Alertmanager's route tree.

The declared tree is compiled once into frozen nodes that inherit their parent's handler.
`match()` is a short depth-first search: the first matching child wins unless it says
`continue`; a node with no matching child matches itself. Every node has a stable path
(`root/vip`) used in `route.path` and as a metric label. Routing never touches Kafka.

Routes match on the exception's fields (`rule`, `kind`, `severity`, `status`, `customer_id`),
the customer's profile (`tier`, `segment`, `region`), the order at stake (`value`, `currency`)
and the subject (`subject.order_id`), with the rules' condition syntax.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.durations import Duration
from pipeline.detectors.matchers import Matcher, matches_any

ROUTE_FIELDS = (
    "rule",
    "kind",
    "severity",
    "status",
    "customer_id",
    "tier",
    "segment",
    "region",
    "value",
    "currency",
)
_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class Handler(BaseModel):
    """A team (or app) that resolves exceptions, and how much it can take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    topic: str | None = None  # default: topics.handler_prefix + name
    capacity: int = Field(default=100, ge=1, le=1_000_000)
    resolve_within: Duration = timedelta(hours=24)
    overflow: str | None = None
    escalate_to: str | None = None
    # Fields this handler must not see, as dotted paths into the record (`*` for every list
    # item or key), e.g. context.profile.name, context.recent_events.*.detail (which holds for
    # the same events in context.evidence too)
    redact: list[str] = []


class RouteNode(BaseModel):
    """One node of the declared tree."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(default=None, pattern=_NAME)
    handler: str | None = None
    match: list[str | list[str]] = []
    continue_: bool = Field(default=False, alias="continue")
    routes: list[RouteNode] = []


@dataclass(frozen=True)
class Route:
    """A compiled node: its stable path, its (inherited) handler, its conditions."""

    path: str
    handler: str
    matchers: tuple[tuple[Matcher, ...], ...]
    continue_: bool
    children: tuple[Route, ...]

    def match(self, view: Mapping[str, Any]) -> list[Route]:
        """The nodes an exception goes to: depth first, first matching child wins unless it
        says `continue`; a node without a matching child matches itself."""
        if self.matchers and not matches_any(self.matchers, view):
            return []
        found: list[Route] = []
        for child in self.children:
            matched = child.match(view)
            found.extend(matched)
            if matched and not child.continue_:
                break
        return found or [self]


def compile_tree(root: RouteNode, handlers: Mapping[str, Handler]) -> tuple[Route, list[str]]:
    """The compiled tree and every problem found, each as 'path: what to do'."""
    from pipeline.core.rules import parse_condition

    problems: list[str] = []
    known = ", ".join(sorted(handlers)) or "none"

    def check_handler(where: str, name: str | None) -> None:
        if name is not None and name not in handlers:
            problems.append(
                f"{where}: handler {name!r} is not defined under 'handlers' "
                f"(defined: {known}): define it or fix the name"
            )

    for name, h in handlers.items():
        check_handler(f"handlers.{name}.overflow", h.overflow)
        check_handler(f"handlers.{name}.escalate_to", h.escalate_to)
        if not re.match(_NAME, name):
            problems.append(
                f"handlers.{name}: a handler name is lower case letters, digits, _ or -"
            )

    if root.match:
        problems.append(
            "route.match: the root route matches every exception: remove 'match' "
            "(put conditions on a child under 'routes')"
        )
    if root.handler is None:
        problems.append(
            "route.handler: the root route needs a handler: the default for what no child matches"
        )
    if root.continue_:
        problems.append("route.continue: the root route has no siblings: remove 'continue'")

    def build(node: RouteNode, where: str, path: str, inherited: str) -> Route:
        check_handler(f"{where}.handler", node.handler)
        matchers: list[tuple[Matcher, ...]] = []
        for i, alternative in enumerate(node.match):
            group = []
            for text in [alternative] if isinstance(alternative, str) else alternative:
                try:
                    m = parse_condition(text)
                except ValueError as exc:
                    problems.append(f"{where}.match.{i}: {exc}")
                    continue
                if m.field not in ROUTE_FIELDS and not m.field.startswith("subject."):
                    problems.append(
                        f"{where}.match.{i}: unknown field {m.field!r}: routes match on "
                        f"{', '.join(ROUTE_FIELDS)} or subject.<field>"
                    )
                group.append(m)
            matchers.append(tuple(group))
        handler = node.handler or inherited
        seen: dict[str, int] = {}
        children = []
        for i, child in enumerate(node.routes):
            segment = child.name or child.handler or f"route{i}"
            if segment in seen:
                problems.append(
                    f"{where}.routes.{i}: two sibling routes would both have the path "
                    f"{path}/{segment}: give each a distinct 'name'"
                )
            seen[segment] = i
            children.append(build(child, f"{where}.routes.{i}", f"{path}/{segment}", handler))
        return Route(path, handler, tuple(matchers), node.continue_, tuple(children))

    return build(root, "route", "root", root.handler or ""), problems


def reachable_below_root(root: Route, known: Mapping[str, str]) -> bool:
    """Whether a node under the root may take an exception whose `known` fields have these
    values (a condition on any other field may hold). A node that matches takes what none of
    its children take, so one child of the root that may match is enough."""
    return any(
        not child.matchers
        or any(all(m.field not in known or m.matches(known) for m in g) for g in child.matchers)
        for child in root.children
    )


def routing_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat fields a route matches on, from an exception record (as a dict)."""
    context = record.get("context") or {}
    profile = context.get("profile") or {}
    view: dict[str, Any] = {
        k: record.get(k) for k in ("rule", "kind", "severity", "status", "customer_id")
    }
    view |= {k: profile.get(k) for k in ("tier", "segment", "region")}
    order = _order_at_stake(record, context)
    value = (order or {}).get("value") or {}
    view["value"] = value.get("amount")
    view["currency"] = value.get("currency")
    view["subject"] = dict(record.get("subject") or {})
    return view


def _order_at_stake(
    record: Mapping[str, Any], context: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    order_id = (record.get("subject") or {}).get("order_id")
    for order in context.get("open_orders") or ():
        if order.get("order_id") == order_id:
            return dict(order)
    return None


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """`rule=missing_delivery tier=gold subject.order_id=o-1` -> a routing view."""
    view: dict[str, Any] = {"subject": {}}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"{pair!r}: write field=value, e.g. rule=missing_delivery")
        if name.startswith("subject."):
            view["subject"][name.removeprefix("subject.")] = value
        elif name in ROUTE_FIELDS:
            view[name] = value
        else:
            raise ValueError(
                f"{pair!r}: unknown field {name!r}:{_did_you_mean(name, ROUTE_FIELDS)} use "
                f"{', '.join(ROUTE_FIELDS)} or subject.<field>"
            )
    return view


def check_assignments(view: Mapping[str, Any], known: Mapping[str, Sequence[str]]) -> None:
    """`ValueError` naming each value outside its field's known set (`known`: field -> the
    values it can take) and a `value` that is not a number."""
    problems = [
        f"unknown {field} {view[field]!r}:{_did_you_mean(view[field], values)} known: "
        f"{', '.join(values) or 'none'}"
        for field, values in known.items()
        if view.get(field) is not None and view[field] not in values
    ]
    if view.get("value") is not None:
        try:
            float(view["value"])
        except ValueError:
            problems.append(f"value {view['value']!r} is not a number: write e.g. value=500")
    if problems:
        raise ValueError("; ".join(problems))


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" did you mean {close[0]!r}?" if close else ""


REDACTED = "[redacted]"


_RECENT, _EVIDENCE = "context.recent_events", "context.evidence"


def redact(record: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A copy of `record` with the values at `paths` replaced by "[redacted]". A path into
    the recent events holds for the evidence events too (`context.recent_events.*.detail`
    blanks `context.evidence.*.detail`): they are the same events, listed twice."""
    if not paths:
        return record
    copy: dict[str, Any] = _copy(record)
    for path in paths:
        _blank(copy, path.split("."))
        if path == _RECENT or path.startswith(_RECENT + "."):
            _blank(copy, (_EVIDENCE + path.removeprefix(_RECENT)).split("."))
    return copy


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _blank(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [head] if head in node else []
        for key in keys:
            if rest:
                _blank(node[key], rest)
            elif node[key] is not None:
                node[key] = REDACTED
    elif isinstance(node, list) and head == "*":
        for i, item in enumerate(node):
            if rest:
                _blank(item, rest)
            elif item is not None:
                node[i] = REDACTED
