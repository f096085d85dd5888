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

from pipeline.cases.messages import problems as wording_problems
from pipeline.core.durations import Duration, parse_duration
from pipeline.core.errors import ConfigError
from pipeline.core.rules import Rule
from pipeline.problems import describe
from pipeline.routers.tree import Handler, Route, RouteNode, compile_tree, reachable_below_root
from pipeline.runtime.security import SOURCE, KafkaSecurity

__all__ = ["Config", "Duration", "Runtime", "load_config", "parse_duration", "review"]

DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "casewatch.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Words = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


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
    # Customer states stored compressed with a dictionary trained on states
    # (pipeline/core/state.py): smaller at equilibrium, and cheaper than compressing without one
    # (docs/performance.md, "State size", has the figures and the command). Either way, both are
    # read.
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


class CaseStates(_Section):
    """The words a customer reads for each state of a case (`resolved` may use
    {resolved_on}, the date written as `messages.day` writes it)."""

    noticed: _Words = "We noticed"
    on_it: _Words = "We are on it"
    escalated: _Words = "Escalated to a senior team"
    resolved: _Words = "Resolved on {resolved_on}"


class CasesSettings(_Section):
    """The case view (docs/cases.md): how long closed cases stay, how many per customer, and
    the words customers read. Templates are `str.format` text checked at load
    (pipeline/cases/messages.py); they are kept out of the rules, whose config hash is their
    version."""

    retention: Duration | None = None  # closed cases, after their last step; None: topics.retention
    max_per_customer: int = Field(default=50, ge=1, le=200)
    # how often each worker drops closed cases past the retention from the books it owns (a
    # customer no record comes for keeps them otherwise; the API never shows them)
    sweep_every: Duration = Field(default=timedelta(minutes=10), gt=timedelta(0))
    messages: dict[str, _Words] = {}  # rule name -> template
    default_message: _Words = "We noticed a problem on {detected_at} and are looking into it."
    states: CaseStates = CaseStates()


class Config(_Section):
    """The whole config file."""

    version: Literal[1] = 1
    pipeline: PipelineSettings = PipelineSettings()
    topics: TopicSettings = TopicSettings()
    rules: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")], Rule] = {}
    handlers: dict[str, Handler] = {"triage": Handler()}
    route: RouteNode = RouteNode(handler="triage")
    cases: CasesSettings = CasesSettings()
    _tree: tuple[Route, list[str]] | None = PrivateAttr(default=None)

    def router(self) -> Route:
        """The compiled routing tree (validated at load)."""
        return _compiled(self)[0]

    def handler_topic(self, name: str) -> str:
        """The Kafka topic of a handler: its `topic`, or the prefix + its name."""
        return self.handlers[name].topic or f"{self.topics.handler_prefix}{name}"

    def case_retention(self) -> timedelta:
        """How long a closed case stays in the case view: `cases.retention`, else the topics'."""
        return self.cases.retention or self.topics.retention


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the config file; `ConfigError` lists every problem found."""
    file = Path(path) if path else DEFAULT_CONFIG
    try:
        return _load(file)
    except RecursionError:  # PyYAML composes, and pydantic validates, by recursion
        raise ConfigError(
            str(file),
            [
                "(top level): too deeply nested to load: a config is a few levels deep; "
                "check that this is the file you meant"
            ],
        ) from None


def _load(file: Path) -> Config:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            str(file),
            [
                f"line {line} (byte offset {exc.start}): 0x{raw[exc.start]:02x} is not UTF-8: "
                "save the file as UTF-8"
            ],
        ) from None
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
        raise ConfigError(str(file), describe(exc.errors(include_url=False), Config)) from None
    problems = _compiled(config)[1] + wording_problems(config.cases, config.rules)
    if problems:
        raise ConfigError(str(file), problems)
    return config


def review(config: Config) -> tuple[list[str], list[str]]:
    """What makes a valid config unfit to run (errors), and what is likely a mistake (warnings).

    Apart from `load_config` so that a routing or dispatch test may load a tree without rules;
    every command that runs a config calls both.
    """
    errors = [] if config.rules else [NO_RULES]
    root = config.router()
    warnings = [
        f"rules.{name}: no route under 'route.routes' can match it: all of its exceptions go "
        f"to the root's handler {root.handler!r}: add a route for it (e.g. match: "
        f"['rule = {name}']), or check the spelling of the rule in the routes"
        for name, rule in config.rules.items()
        if not reachable_below_root(
            root, {"rule": name, "kind": rule.kind, "severity": rule.severity}
        )
    ]
    return errors, warnings


NO_RULES = (
    "rules: no rules: a config without rules watches nothing: add one under 'rules' "
    "(docs/detectors.md, 'Kinds')"
)


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


class Runtime(BaseModel):
    """Where this process runs, from the environment (never from the rules file)."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    config_path: str | None = None
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # 0: no metrics server
    # The case API (pipeline/runtime/api.py) on Faust's web server: the port, the address it
    # listens on, and the host name the other workers reach this one by.
    api_port: int = Field(default=6066, ge=0, le=65535)  # 0: no API (e.g. a test harness)
    api_bind: str = "0.0.0.0"
    api_host: str | None = None  # None: this machine's host name
    state_dir: str = "./casewatch-data"
    # memory:// rebuilds from the changelog at every start. rocksdb:// restarts faster after a
    # clean stop; after an unclean one its tables are deleted and rebuilt
    # (pipeline/runtime/durable.py).
    store: str = "memory://"
    # exactly_once: Faust's Kafka transactions (docs/reliability.md says what the chaos harness
    # found); at_least_once: duplicates are possible and removable by exception_id + status.
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    security: KafkaSecurity = KafkaSecurity()  # KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Runtime:
        """Read `KAFKA_BOOTSTRAP_SERVERS`, the Kafka security variables
        (pipeline/runtime/security.py) and the `CASEWATCH_*` variables."""
        e = os.environ if env is None else env
        fields: dict[str, Any] = {f: e.get(var) for f, (var, _) in ENV.items()}
        fields["security"] = KafkaSecurity.from_env(e)
        try:
            return cls.model_validate({k: v for k, v in fields.items() if v})
        except ValidationError as exc:
            wrong = dict.fromkeys(str(err["loc"][0]) for err in exc.errors())
            raise ConfigError(
                SOURCE,
                [f"{ENV[f][0]}={fields[f]!r} is not valid: expected {ENV[f][1]}" for f in wrong],
            ) from None

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, colon, port = server.strip().rpartition(":")
            if not colon:
                host, port = port, "9092"  # Kafka's default port, as aiokafka and Faust assume
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(server)
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not value.startswith(("memory://", "rocksdb://")):
            raise ValueError(value)
        return value


# Runtime field -> its environment variable, and the form a value takes (in the error)
ENV = {
    "bootstrap_servers": (
        "KAFKA_BOOTSTRAP_SERVERS",
        "host:port, or several separated by commas, e.g. k1:9092,k2:9092",
    ),
    "config_path": ("CASEWATCH_CONFIG", "the path of a config file"),
    "metrics_port": ("CASEWATCH_METRICS_PORT", "a port number 1-65535, or 0 for no metrics server"),
    "api_port": ("CASEWATCH_API_PORT", "a port number 1-65535, or 0 for no case API"),
    "api_bind": ("CASEWATCH_API_BIND", "an address to listen on, e.g. 0.0.0.0 or 127.0.0.1"),
    "api_host": (
        "CASEWATCH_API_HOST",
        "the host name or address the other workers reach this worker's API by",
    ),
    "state_dir": ("CASEWATCH_STATE_DIR", "a folder"),
    "store": ("CASEWATCH_STORE", "memory:// or rocksdb://"),
    "guarantee": ("CASEWATCH_PROCESSING_GUARANTEE", "at_least_once or exactly_once"),
}
