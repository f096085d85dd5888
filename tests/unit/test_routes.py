"""The routing tree: table-driven matches over the shipped tree, and exact errors for bad trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.routers.tree import parse_assignments

REPO = Path(__file__).resolve().parents[2]
SHIPPED = load_config(REPO / "casewatch.yaml")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("rule=missing_delivery", [("root/logistics", "logistics")]),
        ("rule=delivery_failed tier=standard", [("root/logistics", "logistics")]),
        ("rule=missing_delivery tier=gold", [("root/vip", "vip")]),
        ("rule=complaint_cluster tier=platinum", [("root/vip", "vip")]),
        ("rule=repeat_maintenance", [("root/maintenance", "maintenance")]),
        ("rule=complaint_cluster", [("root/retention", "retention")]),
        ("rule=repeated_contact", [("root/service", "service")]),
        ("rule=something_new", [("root", "triage")]),
        ("", [("root", "triage")]),
    ],
)
def test_the_shipped_tree_routes_each_rule_to_its_team(
    fields: str, expected: list[tuple[str, str]]
) -> None:
    view = parse_assignments(fields.split())
    assert [(r.path, r.handler) for r in SHIPPED.router().match(view)] == expected


TREE = """
handlers:
  a: {capacity: 1}
  b: {capacity: 1}
  c: {capacity: 1}
  d: {capacity: 1}
route:
  handler: a
  routes:
    - name: big
      match: ["value >= 500"]
      handler: b
      continue: true
    - name: north
      match: [["region = north", "severity in high,critical"]]
      handler: c
      routes:
        - name: orders
          match: ["subject.order_id =~ o-.*"]
    - name: never
      match: ["rule = x"]
      handler: d
"""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # continue: the big-value route matches and the search goes on
        ("value=900 region=north severity=high", ["root/big:b", "root/north:c"]),
        ("value=900", ["root/big:b"]),
        ("value=499.99", ["root:a"]),
        # all conditions of one alternative must hold
        ("region=north severity=low", ["root:a"]),
        # a child inherits its parent's handler; the deepest match wins
        ("region=north severity=critical subject.order_id=o-7", ["root/north/orders:c"]),
        ("region=north severity=critical subject.asset_id=a-1", ["root/north:c"]),
    ],
)
def test_a_tree_with_continue_nesting_and_inheritance(
    tmp_path: Path, fields: str, expected: list[str]
) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(TREE)
    router = load_config(file).router()
    found = router.match(parse_assignments(fields.split()))
    assert [f"{r.path}:{r.handler}" for r in found] == expected


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        (
            "route:\n  handler: triage\n  routes:\n    - match: ['rule = x']\n      handler: logistcs\n",
            "route.routes.0.handler: handler 'logistcs' is not defined under 'handlers' "
            "(defined: triage): define it or fix the name",
        ),
        (
            "route:\n  handler: triage\n  match: ['tier = gold']\n",
            "route.match: the root route matches every exception: remove 'match' "
            "(put conditions on a child under 'routes')",
        ),
        (
            "route:\n  handler: triage\n  routes:\n    - match: ['teir = gold']\n      handler: triage\n",
            "route.routes.0.match.0: unknown field 'teir': routes match on rule, kind, severity, "
            "status, customer_id, tier, segment, region, value, currency or subject.<field>",
        ),
        (
            "handlers:\n  triage: {overflow: nobody}\n",
            "handlers.triage.overflow: handler 'nobody' is not defined under 'handlers' "
            "(defined: triage): define it or fix the name",
        ),
        (
            "route:\n  routes: []\n",
            "route.handler: the root route needs a handler: the default for what no child matches",
        ),
        (
            "route:\n  handler: triage\n  routes:\n    - {handler: triage, match: ['rule = a']}\n"
            "    - {handler: triage, match: ['rule = b']}\n",
            "route.routes.1: two sibling routes would both have the path root/triage: "
            "give each a distinct 'name'",
        ),
        (
            "handlers:\n  triage: {capacity: 0}\n",
            "handlers.triage.capacity: expected at least 1, got 0",
        ),
    ],
)
def test_a_bad_tree_is_refused_with_the_place_and_the_fix(
    tmp_path: Path, tree: str, problem: str
) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(tree)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.problems == [problem]


def test_every_handler_has_a_topic() -> None:
    assert SHIPPED.handler_topic("vip") == "casewatch.handler.vip"
    assert set(SHIPPED.handlers) == {
        "logistics",
        "maintenance",
        "retention",
        "service",
        "vip",
        "supervisors",
        "triage",
    }


def test_redaction_blanks_the_named_fields_and_only_those() -> None:
    from pipeline.routers.tree import redact

    record = {
        "customer_id": "c-1",
        "context": {
            "profile": {"name": "Ana Lopez", "tier": "gold"},
            "recent_events": [{"type": "a", "detail": "flat 3"}, {"type": "b", "detail": None}],
        },
    }
    private = redact(record, ["context.profile.name", "context.recent_events.*.detail", "no.such"])
    assert private["context"]["profile"] == {"name": "[redacted]", "tier": "gold"}
    assert private["context"]["recent_events"] == [
        {"type": "a", "detail": "[redacted]"},
        {"type": "b", "detail": None},
    ]
    assert record["context"]["profile"]["name"] == "Ana Lopez"  # the original is untouched


def test_a_redaction_of_recent_events_holds_for_the_same_events_in_the_evidence() -> None:
    """A handler that must not see recent events' details does not see them in the evidence
    list either; the evidence ids and times stay."""
    from pipeline.routers.tree import redact

    event = {"event_id": "e-1", "occurred_at": "2026-03-01T10:00:00Z", "type": "a"}
    record = {
        "evidence": ["e-1"],
        "context": {
            "evidence": [{**event, "detail": "flat 3"}],
            "recent_events": [{**event, "detail": "flat 3"}, {"type": "b", "detail": "x"}],
        },
    }
    private = redact(record, ["context.recent_events.*.detail"])
    assert private["context"]["evidence"] == [{**event, "detail": "[redacted]"}]
    assert [e["detail"] for e in private["context"]["recent_events"]] == ["[redacted]"] * 2
    assert private["evidence"] == ["e-1"]
    hidden = redact(record, ["context.recent_events"])["context"]
    assert hidden == {"evidence": "[redacted]", "recent_events": "[redacted]"}
    assert redact(record, ["context.evidence.*.type"])["context"]["recent_events"][0]["type"] == "a"


def test_the_maintenance_contractor_does_not_see_the_tenants_name() -> None:
    import io

    import orjson

    from pipeline.tools.replay import Replay

    lines = [
        orjson.dumps(
            {
                "event_id": f"e{i}",
                "type": t,
                "customer_id": "c-9",
                "occurred_at": f"2026-03-0{i + 1}T10:00:00Z",
                **fields,
            }
        )
        for i, (t, fields) in enumerate(
            [
                ("customer.profile", {"tier": "standard", "name": "Ben Okafor"}),
                (
                    "interaction.maintenance_requested",
                    {"asset_id": "unit-12/faucet", "category": "leak"},
                ),
                (
                    "interaction.maintenance_requested",
                    {"asset_id": "unit-12/faucet", "category": "leak"},
                ),
            ]
        )
    ]
    (record,) = list(Replay(SHIPPED, errors=io.StringIO()).feed(lines))
    assert record.route is not None
    assert record.route.handler == "maintenance"
    assert record.context["profile"]["name"] == "[redacted]"
    assert record.context["profile"]["tier"] == "standard"
