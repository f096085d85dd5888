"""The config file: defaults load, and every problem names the file, the place and the fix."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.config import Runtime, load_config, parse_duration
from pipeline.errors import ConfigError

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
            ["pipeline.partitons: unknown key: remove it or check its spelling"],
        ),
        (
            "pipeline:\n  idle_after: soon\n",
            [
                "pipeline.idle_after: 'soon' is not a duration: write a number and a unit, e.g. 90s, 5m, 4h, 30d"
            ],
        ),
        (
            "pipeline:\n  compress_state: maybe\n",
            ["pipeline.compress_state: Input should be a valid boolean, unable to interpret input"],
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
            ["pipeline.partitions: Input should be greater than or equal to 1"],
        ),
        ("version: 2\n", ["version: Input should be 1"]),
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
