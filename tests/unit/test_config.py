"""The config file: defaults load, and every problem names the file, the place and the fix."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.config import Config, Runtime, load_config, parse_duration, review
from pipeline.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def problems(tmp_path: Path, text: str) -> list[str]:
    file = tmp_path / "casewatch.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.file == str(file)
    assert str(info.value).startswith(f"{file}: ")
    return info.value.problems


def test_shipped_config_loads_with_contract_topic_names() -> None:
    config = load_config(REPO / "casewatch.yaml")
    assert config.topics.interactions == "casewatch.interactions"
    assert config.topics.dlq == "casewatch.dlq"
    assert config.pipeline.allowed_lateness == timedelta(minutes=5)
    assert config.pipeline.compress_state is True
    assert config.pipeline.fetch_min_bytes == 64 * 1024
    assert config.pipeline.fetch_max_wait == timedelta(milliseconds=50)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pipeline:\n  partitons: 3\n",
            ["pipeline.partitons: unknown field 'partitons': did you mean 'partitions'?"],
        ),
        (
            "pipeline:\n  idle_after: soon\n",
            [
                "pipeline.idle_after: 'soon' is not a duration: write a number and a unit, e.g. 90s, 5m, 4h, 30d"
            ],
        ),
        (
            "pipeline:\n  compress_state: maybe\n",
            ["pipeline.compress_state: expected true or false, got 'maybe'"],
        ),
        (
            "pipeline:\n  fetch_max_wait: 30s\n",
            [
                "pipeline.fetch_max_wait: must be between 1ms and 5s (a fetch held "
                "longer holds up every busy partition of its broker meanwhile)"
            ],
        ),
        (
            "pipeline:\n  partitions: 0\n",
            ["pipeline.partitions: expected at least 1, got 0"],
        ),
        ("version: 2\n", ["version: expected 1, got 2"]),
        ("- a\n- b\n", ["(top level): expected a mapping of sections, e.g. 'pipeline:'"]),
    ],
)
def test_bad_config_problems(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(tmp_path, text) == expected


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "pipeline:\n  partitons: 3\n  dedupe_window: 7 days\ntopics:\n  dql: x\n"
    )
    assert len(found) == 3


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "pipeline:\n  partitions: [1\n")
    assert found.startswith("line 3, column 1: not valid YAML")


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; a config edited by hand must not."""
    (found,) = problems(tmp_path, "pipeline:\n  partitions: 3\n  app_id: a\n  partitions: 4\n")
    assert found == (
        "line 4, column 3: 'partitions' is given twice in one section (first on line 2): keep one"
    )
    assert problems(tmp_path, "pipeline:\n  partitions: 3\ntopics:\n  partitions: 3\n") != []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file or directory"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("4h", 14400),
        ("30d", 2592000),
        ("1h30m", 5400),
        (15, 15),
        ("250ms", 0.25),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_runtime_comes_from_the_environment() -> None:
    runtime = Runtime.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "CASEWATCH_METRICS_PORT": "9500"}
    )
    assert runtime.bootstrap_servers == "k1:9092,k2:9092"
    assert runtime.metrics_port == 9500
    assert Runtime.from_env({}).bootstrap_servers == "127.0.0.1:9092"


RULE = "rules:\n  foo:\n    kind: threshold\n    when: ['type = interaction.contact']\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  foo:\n    kind: absense\n",
            "rules.foo.kind: unknown rule kind 'absense': did you mean 'absence'? "
            "(known: absence, match, threshold)",
        ),
        (
            "rules:\n  foo:\n    severity: high\n",
            "rules.foo.kind: required key is missing: add it (rule kinds: absence, match, "
            "threshold)",
        ),
        (
            RULE + "    count: three\n    window: 1h\n",
            "rules.foo.count: expected a whole number, got 'three'",
        ),
        (
            RULE + "    count: 2.5\n    window: 1h\n",
            "rules.foo.count: expected a whole number, got 2.5",
        ),
        (
            RULE + "    count: 5000\n    window: 1h\n",
            "rules.foo.count: expected at most 1000, got 5000",
        ),
        (
            RULE + "    count: 3\n    window: 1h\n    severity: hihg\n",
            "rules.foo.severity: expected one of low, medium, high, critical, got 'hihg': "
            "did you mean 'high'?",
        ),
        (
            RULE + "    count: 3\n    window: 1h\n    group_by: order_id\n",
            "rules.foo.group_by: expected a list, e.g. [a, b], got 'order_id'",
        ),
        (
            RULE + "    count: 3\n    window: 1h\n    description: 3\n",
            "rules.foo.description: expected text, got 3",
        ),
        (
            "rules:\n  foo:\n    kind: match\n    when: [3]\n",
            "rules.foo.when.0: expected text or a list, e.g. [a, b], got 3",
        ),
        (
            "rules:\n  foo:\n    kind: match\n    when: []\n",
            "rules.foo.when: expected at least 1 item, got 0",
        ),
        (
            "rules:\n  Foo-Bar:\n    kind: match\n    when: ['type = x']\n",
            "rules.Foo-Bar: 'Foo-Bar' is not a rule name: use lower case letters, digits and _, "
            "starting with a letter (at most 63)",
        ),
        (
            "rules:\n  foo:\n    kind: match\n    when: ['type = x']\n    wen: ['type = y']\n",
            "rules.foo.wen: unknown field 'wen': did you mean 'when'?",
        ),
        (
            "handlers:\n  x:\n    capcity: 3\n",
            "handlers.x.capcity: unknown field 'capcity': did you mean 'capacity'?",
        ),
        (
            "handlers:\n  x:\n    owner: ana\n",
            "handlers.x.owner: unknown field 'owner': remove it (known: description, topic, "
            "capacity, resolve_within, overflow, escalate_to, redact)",
        ),
        (
            "route:\n  handler: triage\n  routes:\n    - match: ['rule = a']\n      contnue: true\n",
            "route.routes.0.contnue: unknown field 'contnue': did you mean 'continue'?",
        ),
        (
            "pipelin:\n  partitions: 3\n",
            "pipelin: unknown field 'pipelin': did you mean 'pipeline'?",
        ),
        ("pipeline: 3\n", "pipeline: expected a mapping (key: value lines), got 3"),
        (
            "pipeline:\n  app_id: a b\n",
            "pipeline.app_id: 'a b' does not fit the pattern ^[A-Za-z0-9._-]{1,100}$: rename it",
        ),
    ],
)
def test_pydantic_errors_in_casewatch_words(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_an_untranslated_error_keeps_pydantics_text(tmp_path: Path) -> None:
    found = problems(tmp_path, "topics:\n  dlq: [a]\n")
    assert found == ["topics.dlq: expected text, got a list"]
    (other,) = problems(tmp_path, "pipeline:\n  compress_state: !!binary aGk=\n")
    assert other.startswith("pipeline.compress_state: ")


def load(tmp_path: Path, text: str) -> Config:
    file = tmp_path / "casewatch.yaml"
    file.write_text(text)
    return load_config(file)


def test_a_config_without_rules_loads_but_is_unfit_to_run(tmp_path: Path) -> None:
    for text in ("", "version: 1\n", "rules: {}\n"):
        errors, warnings = review(load(tmp_path, text))
        assert errors == [
            "rules: no rules: a config without rules watches nothing: add one under 'rules' "
            "(docs/detectors.md, 'Kinds')"
        ]
        assert warnings == []


ROUTED = RULE.replace("threshold", "match") + (
    "  other:\n    kind: match\n    severity: critical\n    when: ['type = order.cancelled']\n"
    "handlers:\n  triage: {}\n  team: {}\n"
    "route:\n  handler: triage\n  routes:\n"
)


@pytest.mark.parametrize(
    ("routes", "unrouted"),
    [
        ("    - {match: ['rule = foo'], handler: team}\n", ["other"]),
        ("    - {match: ['rule in foo,other'], handler: team}\n", []),
        ("    - {match: ['rule =~ fo.*'], handler: team}\n", ["other"]),
        # a route on a field a rule does not fix (tier) may take any rule's exceptions
        ("    - {match: ['tier = gold'], handler: team}\n", []),
        # severity and kind are the rule's own: they decide
        ("    - {match: ['severity = critical'], handler: team}\n", ["foo"]),
        ("    - {match: [['kind = match', 'rule != foo']], handler: team}\n", ["foo"]),
        ("    - {match: ['rule = fooo'], handler: team}\n", ["foo", "other"]),
        ("    - {handler: team}\n", []),
    ],
)
def test_a_rule_that_only_the_root_can_take_is_a_warning(
    tmp_path: Path, routes: str, unrouted: list[str]
) -> None:
    errors, warnings = review(load(tmp_path, ROUTED + routes))
    assert errors == []
    assert warnings == [
        f"rules.{name}: no route under 'route.routes' can match it: all of its exceptions go to "
        f"the root's handler 'triage': add a route for it (e.g. match: ['rule = {name}']), or "
        "check the spelling of the rule in the routes"
        for name in unrouted
    ]


def test_the_shipped_config_has_nothing_to_warn_about() -> None:
    assert review(load_config(REPO / "casewatch.yaml")) == ([], [])


FIELDS = "{order_id}, {event_id}, {rule}, {detected_at}, {routed_at}, {due}, {resolved_at}"


@pytest.mark.parametrize(
    ("wording", "expected"),
    [
        (
            "  messages:\n    delivery_failed: 'Order {oder_id} failed'\n",
            "cases.messages.delivery_failed: unknown field {oder_id}: did you mean {order_id}? "
            f"the fields it may use: {FIELDS}",
        ),
        (
            "  messages:\n    delivery_faild: 'Order {order_id} failed'\n",
            "cases.messages.delivery_faild: no rule 'delivery_faild' under 'rules': did you mean "
            "'delivery_failed'? a message belongs to a rule (rules: delivery_failed)",
        ),
        (
            "  messages:\n    delivery_failed: 'Order {order_id failed'\n",
            "cases.messages.delivery_failed: not a valid template (expected '}' before end of "
            "string): write fields as {name}, and a brace that is meant as text as {{ or }}",
        ),
        (
            "  messages:\n    delivery_failed: 'by {due:%d %B}'\n",
            "cases.messages.delivery_failed: {due:%d %B} has a conversion or a format spec: write "
            "the field alone, {due} (times are already written for people)",
        ),
        (
            "  default_message: 'Order {order_id}'\n",
            "cases.default_message: unknown field {order_id}: the fields it may use: {rule}, "
            "{detected_at}, {routed_at}, {due}, {resolved_at}",
        ),
        (
            "  states:\n    resolved: 'Closed {resolved_at}'\n",
            "cases.states.resolved: unknown field {resolved_at}: did you mean {resolved_on}? the "
            "fields it may use: {resolved_on}",
        ),
        ("  max_per_customer: 0\n", "cases.max_per_customer: expected at least 1, got 0"),
    ],
)
def test_customer_wording_is_checked_at_load(tmp_path: Path, wording: str, expected: str) -> None:
    text = (
        "rules:\n  delivery_failed:\n    kind: match\n    when: ['type = order.delivery_failed']\n"
        "    subject: [order_id]\ncases:\n" + wording
    )
    assert problems(tmp_path, text) == [expected]


def test_customer_wording_is_not_part_of_a_rules_version(tmp_path: Path) -> None:
    rule = "rules:\n  late:\n    kind: match\n    when: ['type = order.cancelled']\n"
    plain = load(tmp_path, rule)
    worded = load(tmp_path, rule + "cases:\n  messages:\n    late: 'Sorry about {event_id}'\n")
    assert worded.rules["late"].version() == plain.rules["late"].version()
    assert worded.cases.messages == {"late": "Sorry about {event_id}"}


def test_case_retention_defaults_to_the_topics() -> None:
    shipped = load_config(REPO / "casewatch.yaml")
    assert shipped.case_retention() == timedelta(days=7)
    assert set(shipped.cases.messages) == set(shipped.rules)
