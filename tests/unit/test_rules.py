"""Rules in the config file: the five defaults load and detect; bad rules name path and fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.core.rules import build, parse_condition

REPO = Path(__file__).resolve().parents[2]


def test_the_five_default_rules_ship_and_build() -> None:
    rules = load_config(REPO / "casewatch.yaml").rules
    assert {n: r.kind for n, r in rules.items()} == {
        "missing_delivery": "absence",
        "delivery_failed": "match",
        "repeat_maintenance": "threshold",
        "complaint_cluster": "threshold",
        "repeated_contact": "threshold",
    }
    for name, rule in rules.items():
        assert build(name, rule).rule == name


def test_default_repeat_maintenance_fires_on_the_second_leak() -> None:
    rule = load_config(REPO / "casewatch.yaml").rules["repeat_maintenance"]
    detector = build("repeat_maintenance", rule)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    state = detector.initial()
    found = []
    for n, days in enumerate([0, 8]):
        event = {
            "event_id": f"e-{n}",
            "customer_id": "c",
            "type": "interaction.maintenance_requested",
            "asset_id": "unit-12/kitchen-faucet",
            "occurred_at": t0 + timedelta(days=days),
        }
        step = detector.observe(state, event, 0.0)
        state, found = step.state, found + list(step.findings)
    assert [f.subject for f in found] == [{"asset_id": "unit-12/kitchen-faucet"}]


def problems(tmp_path: Path, rules: str) -> list[str]:
    file = tmp_path / "c.yaml"
    file.write_text("rules:\n" + rules)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    return info.value.problems


def test_unknown_kind_lists_the_valid_ones(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "  r1:\n    kind: sometimes\n")
    assert (
        found
        == "rules.r1.kind: unknown rule kind 'sometimes': use one of absence, match, threshold"
    )


def test_a_bad_condition_names_its_place_and_the_syntax(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "  r1:\n    kind: match\n    when: ['type is order.placed']\n")
    assert found == (
        "rules.r1.when: 'type is order.placed' is not a condition: "
        "write 'field op value' with op one of =, !=, =~, !~, in, >, >=, <, <="
    )


def test_a_threshold_without_window_or_count(tmp_path: Path) -> None:
    found = problems(tmp_path, "  r1:\n    kind: threshold\n    when: ['type = x']\n")
    assert found == [
        "rules.r1.count: required key is missing: add it",
        "rules.r1.window: required key is missing: add it",
    ]


def test_condition_syntax() -> None:
    assert parse_condition("tier in gold, platinum").value == ("gold", "platinum")
    assert parse_condition('category =~ "internet/.*"').op == "=~"
    with pytest.raises(ValueError, match="regular expression is invalid"):
        parse_condition("x =~ (")


def test_forget_after_at_its_default_keeps_the_rule_version(tmp_path: Path) -> None:
    """Rules written before `forget_after` existed keep their version (and so their customers'
    pending deadlines) across the upgrade; setting it changes the version and the detector."""
    rule = """
rules:
  missing_delivery:
    kind: absence
    key: order_id
    start: ["type = order.shipped"]
    expect: ["type = order.delivered"]
    delay: 72h
"""
    plain, default, short = (tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml"))
    plain.write_text(rule)
    default.write_text(rule + "    forget_after: 30d\n")
    short.write_text(rule + "    forget_after: 10d\n")
    rules = [load_config(f).rules["missing_delivery"] for f in (plain, default, short)]
    # the version of this rule before forget_after existed (its hash then)
    assert rules[0].version() == rules[1].version() == "2fd17fbeaa45"
    assert rules[2].version() != rules[0].version()
    assert build("missing_delivery", rules[2]).keep_closed == 10 * 86400


def test_a_rule_skipped_for_an_event_type_would_have_done_nothing_with_it() -> None:
    """The engine does not run a rule on an event whose type its `types()` leaves out: for
    every default rule, observing such events changes nothing and finds nothing, from the
    states the realistic workload leaves behind."""
    from bench import workload
    from pipeline.core.engine import Engine, event_dict
    from pipeline.core.ingest import parse_event
    from pipeline.core.state import CustomerState

    engine = Engine(load_config())
    states: dict[str, CustomerState] = {}
    msgs = workload.build(200, 6000, 1_790_000_000.0, 7 * 86400.0, "ty", seed=3, span_hours=168)
    checked = 0
    for m in msgs:
        data = event_dict(parse_event(m.value, 1 << 20))
        state = states.get(data["customer_id"], CustomerState())
        for r in engine.rules:
            types = r.detector.types()
            if types is None or data["type"] in types:
                continue
            before = engine._state(state.rules, r)
            step = r.detector.observe(before, data, 1_790_000_000.0 + 8 * 86400)
            assert step.state == before, (r.name, data["type"])
            assert not step.findings, (r.name, data["type"])
            checked += 1
        states[data["customer_id"]], _ = engine.observe(state, data, 0.0)
    assert checked > 10_000
    declared = {r.name: r.detector.types() for r in engine.rules}
    assert declared["repeat_maintenance"] == {"interaction.maintenance_requested"}
    assert declared["complaint_cluster"] is None  # "sentiment = negative" on any type
    assert declared["missing_delivery"] is None  # keyed by order_id, whatever the type


def test_the_types_a_condition_set_can_match() -> None:
    from pipeline.detectors.matchers import types_of

    def sets(*alternatives: list[str]) -> list[list[object]]:
        return [[parse_condition(c) for c in a] for a in alternatives]

    assert types_of(sets(["type = a"], ["type in b,c", "x = 1"])) == {"a", "b", "c"}
    assert types_of(sets(["type = a"], ["x = 1"])) is None  # the second: any type
    assert types_of(sets(["type != a"])) is None
    assert types_of([]) is None  # no conditions: everything matches


@pytest.mark.parametrize(
    "alternatives",
    [
        [["type = a"]],
        [["type = a"], ["type in b,c"]],
        [["type = a", "x = 1"]],
        [["type = a"], ["x = 1"]],
        [["type != a"]],
        [["type =~ a|b"]],
        [],
    ],
)
def test_a_rules_conditions_as_one_function_agree_with_matching_them_one_by_one(
    alternatives: list[list[str]],
) -> None:
    from pipeline.detectors.matchers import matches_any, predicate

    sets = [[parse_condition(c) for c in a] for a in alternatives]
    events = [{"type": t, "x": x} for t in ("a", "b", "c", "d") for x in ("1", 1, None)]
    events.append({"x": "1"})  # no type
    test = predicate(sets)  # type: ignore[arg-type]
    for event in events:
        assert test(event) is matches_any(sets, event), (alternatives, event)  # type: ignore[arg-type]
