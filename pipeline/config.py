"""The typed config file (`casewatch.yaml`) and runtime settings from the environment.

The file says *what* Casewatch does (topics, limits, clocks, rules, handlers, routes); the
environment says *where* it runs (brokers, secrets, ports, state directory). The whole file is
validated at load and every problem is reported with the file, the path inside it and the fix.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from pipeline.durations import Duration, parse_duration
from pipeline.errors import ConfigError
from pipeline.routers.tree import Handler, Route, RouteNode, compile_tree
from pipeline.rules import Rule
from pipeline.security import KafkaSecurity

__all__ = ["Config", "Duration", "Runtime", "load_config", "parse_duration"]

DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "casewatch.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSettings(_Section):
    """How the pipeline runs: group id, partitions, clocks and limits."""

    app_id: str = Field(default="casewatch", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    partitions: int = Field(default=6, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)
    allowed_lateness: Duration = timedelta(minutes=5)
    idle_after: Duration = timedelta(seconds=1)
    session_timeout: Duration = timedelta(seconds=10)
    dedupe_window: Duration = timedelta(days=7)
    dedupe_max_ids: int = Field(default=256, ge=1, le=100_000)
    max_event_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Customer states stored compressed (pipeline/state.py): 2.3x smaller at equilibrium for
    # about a tenth of a worker's CPU (docs/performance.md). Either way, both are read.
    compress_state: bool = True
    # The worker's fetches (aiokafka's fetch_min_bytes, fetch_max_wait_ms): the broker answers
    # once it has this much, or after this long. Larger and longer: fewer, fuller fetches (less
    # CPU per event live), each hop up to `fetch_max_wait` later at low input
    # (docs/performance.md, "Fetches, and less per-event logic").
    fetch_min_bytes: int = Field(default=64 * 1024, ge=1, le=64 * 1024 * 1024)
    fetch_max_wait: Duration = timedelta(milliseconds=50)

    @field_validator("fetch_max_wait")
    @classmethod
    def _fetch_wait(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=1) <= value <= timedelta(seconds=5):
            raise ValueError(
                "must be between 1ms and 5s (a fetch held longer holds up every busy partition "
                "of its broker meanwhile)"
            )
        return value

    @field_validator("session_timeout")
    @classmethod
    def _session(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=6) <= value <= timedelta(minutes=30):
            raise ValueError(
                "must be between 6s and 30m (the brokers' group.min/max.session.timeout.ms)"
            )
        return value


class TopicSettings(_Section):
    """Topic names (the contract's defaults) and how long topics keep data."""

    interactions: str = "casewatch.interactions"
    orders: str = "casewatch.orders"
    resolutions: str = "casewatch.resolutions"
    exceptions: str = "casewatch.exceptions"
    dlq: str = "casewatch.dlq"
    handler_prefix: str = "casewatch.handler."
    retention: Duration = timedelta(days=7)
    dlq_retention: Duration = timedelta(days=30)


class Config(_Section):
    """The whole config file."""

    version: Literal[1] = 1
    pipeline: PipelineSettings = PipelineSettings()
    topics: TopicSettings = TopicSettings()
    rules: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")], Rule] = {}
    handlers: dict[str, Handler] = {"triage": Handler()}
    route: RouteNode = RouteNode(handler="triage")
    _tree: tuple[Route, list[str]] | None = PrivateAttr(default=None)

    def router(self) -> Route:
        """The compiled routing tree (validated at load)."""
        return _compiled(self)[0]

    def handler_topic(self, name: str) -> str:
        """The Kafka topic of a handler: its `topic`, or the prefix + its name."""
        return self.handlers[name].topic or f"{self.topics.handler_prefix}{name}"


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the config file; `ConfigError` lists every problem found."""
    file = Path(path) if path else DEFAULT_CONFIG
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        raise ConfigError(str(file), [_yaml_problem(exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(file), ["(top level): expected a mapping of sections, e.g. 'pipeline:'"]
        )
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(file), [_problem(e) for e in exc.errors(include_url=False)]) from None
    problems = _compiled(config)[1]
    if problems:
        raise ConfigError(str(file), problems)
    return config


def _compiled(config: Config) -> tuple[Route, list[str]]:
    if config._tree is None:
        config._tree = compile_tree(config.route, config.handlers)
    return config._tree


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML
    forbids it, and PyYAML would silently keep the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark
                raise _DuplicateKey(
                    problem=f"{key!r} is given twice in one section (first on line "
                    f"{first.line + 1}): keep one",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    what = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, _DuplicateKey):
        return f"{where}: {what}"
    return f"{where}: not valid YAML ({what}): check the indentation and quoting there"


def _problem(err: Any) -> str:
    path = (
        ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
    )
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key: remove it or check its spelling"
    if kind == "missing":
        return f"{path}: required key is missing: add it"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg}"


class Runtime(BaseModel):
    """Where this process runs, from the environment (never from the rules file)."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    config_path: str | None = None
    metrics_port: int = 9464
    state_dir: str = "./casewatch-data"
    # memory:// rebuilds from the changelog at every start. rocksdb:// restarts faster after a
    # clean stop; after an unclean one its tables are deleted and rebuilt (pipeline/durable.py).
    store: str = "memory://"
    # exactly_once: Faust's Kafka transactions (docs/reliability.md says what the chaos harness
    # found); at_least_once: duplicates are possible and removable by exception_id + status.
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    security: KafkaSecurity = KafkaSecurity()  # KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Runtime:
        """Read `KAFKA_BOOTSTRAP_SERVERS`, the Kafka security variables (pipeline/security.py)
        and the `CASEWATCH_*` variables."""
        e = os.environ if env is None else env
        fields: dict[str, Any] = {
            "bootstrap_servers": e.get("KAFKA_BOOTSTRAP_SERVERS"),
            "config_path": e.get("CASEWATCH_CONFIG"),
            "metrics_port": e.get("CASEWATCH_METRICS_PORT"),
            "state_dir": e.get("CASEWATCH_STATE_DIR"),
            "store": e.get("CASEWATCH_STORE"),
            "guarantee": e.get("CASEWATCH_PROCESSING_GUARANTEE"),
            "security": KafkaSecurity.from_env(e),
        }
        return cls.model_validate({k: v for k, v in fields.items() if v})
