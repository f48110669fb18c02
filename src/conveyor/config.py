"""The `conveyor.yaml` schema, its loading, and errors that name file, line and key.

The file is parsed with PyYAML's node API so every key keeps its line number;
pydantic v2 validates it into the frozen dataclasses below; the checks that
need the whole file (stage graph, files on disk) follow and report through
the same `ConfigError`.

Validation depends only on the file's text, so its result is kept in
`.conveyor/config.json` under the text's digest: a run on an unchanged file
imports neither PyYAML nor pydantic (about 100 ms of a cached run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from conveyor import __version__, defaults
from conveyor.exceptions import ConfigError

if TYPE_CHECKING:
    import yaml
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

_Path = str
_STRICT = {"extra": "forbid"}  # pydantic reads __pydantic_config__ from plain dataclasses
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class StageConfig:
    """A command with declared inputs and outputs; cached by their content."""

    __pydantic_config__ = _STRICT

    cmd: str
    deps: list[_Path] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    outs: list[_Path] = field(default_factory=list)
    metrics: list[_Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require_text(cmd=self.cmd)

    @property
    def all_outs(self) -> list[str]:
        """Outs plus metrics files: both are products of the stage and cached."""
        return [*self.outs, *(m for m in self.metrics if m not in self.outs)]


@dataclass(frozen=True)
class TestsConfig:
    """The project's test command; its cache key is `deps` + the candidate digest."""

    __pydantic_config__ = _STRICT

    cmd: str
    deps: list[_Path] = field(default_factory=lambda: ["tests/"])

    def __post_init__(self) -> None:
        _require_text(cmd=self.cmd)


@dataclass(frozen=True)
class ModelConfig:
    __pydantic_config__ = _STRICT

    name: str
    path: _Path
    flavor: Literal["sklearn", "onnx", "pyfunc"] = "sklearn"

    def __post_init__(self) -> None:
        _require_text(path=self.path)
        if not _MODEL_NAME.fullmatch(self.name):
            raise ValueError(f"name: '{self.name}' must start with a letter or digit and use only letters, "
                             "digits, '.', '_' and '-'")


_METRIC_CHECKS = ("min", "max", "no_worse_than")
_MODEL_CHECKS = ("max_latency_ms", "max_size_mb")
_BOTH_TOLERANCES = ("tolerance_pct: give either tolerance (in the metric's units) or tolerance_pct "
                    "(a percentage of the baseline's value), not both")


def _check_gate_keys(data: Any) -> Any:
    """Reject keys whose mere presence is a mistake (what `__post_init__` cannot see)."""
    if isinstance(data, Mapping):
        if "higher_is_better" in data:
            raise ValueError("higher_is_better: was replaced by `direction: higher` or `direction: lower`")
        if "tolerance" in data and "tolerance_pct" in data:
            raise ValueError(_BOTH_TOLERANCES)
    return data


@dataclass(frozen=True)
class GateConfig:
    """A check a candidate must pass, in one of two forms.

    A metric gate names a logged `metric` and checks it against `min`, `max`
    and/or the version an alias points to (`no_worse_than`, allowed to be worse
    by `tolerance` in the metric's units or by `tolerance_pct` percent of the
    baseline's value). `direction` says which way is better; `slices: true`
    applies the checks to the metric in every slice of the candidate
    (`slices.<name>.<metric>`) instead of the overall value.

    A model gate measures the candidate itself: `max_latency_ms` bounds the p99
    time of a one-row predict, `max_size_mb` the size of the model directory.
    """

    __pydantic_config__ = _STRICT

    metric: str | None = None
    min: float | None = None
    max: float | None = None
    no_worse_than: str | None = None
    tolerance: float = 0.0
    tolerance_pct: float | None = None
    direction: Literal["higher", "lower"] = "higher"
    slices: bool = False
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Validate as a dataclass, after the checks that need to see which keys were written."""
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(_check_gate_keys, handler(source))

    def __post_init__(self) -> None:
        for key in ("min", "max", "tolerance", "tolerance_pct", "max_latency_ms", "max_size_mb"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number, not {value}")
        if self.max_latency_ms is not None or self.max_size_mb is not None:
            self._check_model_gate()
        else:
            self._check_metric_gate()

    def _check_model_gate(self) -> None:
        measured = next(key for key in _MODEL_CHECKS if getattr(self, key) is not None)
        for key in _MODEL_CHECKS:
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"{key}: must be more than 0, not {value}")
        if self.metric is not None:
            raise ValueError(f"metric: {measured} is measured on the model, not read from metrics; "
                             "put the metric's checks in a gate of their own")
        metric_keys = {**{key: getattr(self, key) is not None for key in _METRIC_CHECKS},
                       "tolerance": self.tolerance != 0, "tolerance_pct": self.tolerance_pct is not None,
                       "direction": self.direction != "higher", "slices": self.slices}
        for key, given in metric_keys.items():
            if given:
                raise ValueError(f"{key}: applies to a metric, not to {measured}; "
                                 "put it in a gate with a metric")

    def _check_metric_gate(self) -> None:
        if self.metric is None:
            raise ValueError("metric: required key is missing (or use max_latency_ms or max_size_mb, "
                             "which need no metric)")
        _require_text(metric=self.metric)
        if self.min is None and self.max is None and self.no_worse_than is None:
            raise ValueError("a gate needs at least one of min, max or no_worse_than")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"max: {self.max} is less than min {self.min}")
        for key in ("tolerance", "tolerance_pct"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"{key}: must be 0 or more, not {value}")
        if self.tolerance_pct is not None and self.tolerance != 0:
            raise ValueError(_BOTH_TOLERANCES)
        if self.no_worse_than is None:
            for key, given in (("tolerance", self.tolerance != 0), ("tolerance_pct", self.tolerance_pct is not None)):
                if given:
                    raise ValueError(f"{key}: only applies to no_worse_than (it is the slack allowed there); "
                                     f"add no_worse_than: production or remove {key}")
        elif not _ALIAS_NAME.fullmatch(self.no_worse_than):
            raise ValueError(f"no_worse_than: '{self.no_worse_than}' is not an alias name "
                             "(lower-case letters, digits, '_' and '-', such as production)")


@dataclass(frozen=True)
class CanaryConfig:
    __pydantic_config__ = _STRICT

    steps: list[float] = field(default_factory=lambda: list(defaults.CANARY_STEPS))
    interval_s: float = defaults.CANARY_INTERVAL_S
    min_requests: int = defaults.CANARY_MIN_REQUESTS
    max_error_rate: float = defaults.CANARY_MAX_ERROR_RATE
    max_p99_ms: float | None = None
    max_disagreement: float | None = None

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError(f"steps: must be rising percentages in (0, 100], such as [10, 50, 100], not {self.steps}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s: must be positive, not {self.interval_s}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests: must be at least 1, not {self.min_requests}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate: must be a fraction between 0 and 1, not {self.max_error_rate}")
        if self.max_p99_ms is not None and self.max_p99_ms <= 0:
            raise ValueError(f"max_p99_ms: must be positive, not {self.max_p99_ms}")
        if self.max_disagreement is not None and not 0 <= self.max_disagreement <= 1:
            raise ValueError(f"max_disagreement: must be a fraction between 0 and 1, not {self.max_disagreement}")


@dataclass(frozen=True)
class ShadowConfig:
    __pydantic_config__ = _STRICT

    share: float = defaults.SHADOW_SHARE

    def __post_init__(self) -> None:
        if not 0 < self.share <= 100:
            raise ValueError(f"share: must be a percentage in (0, 100], not {self.share}")


_IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class ContainerTargetConfig:
    """`deploy.container`: where `deploy.target: container` runs the model image (`name`: the
    deployment, default the model's name; its host port is `deploy.port`, then the next one in turn)."""

    __pydantic_config__ = _STRICT

    engine: Literal["podman", "docker"] = "podman"
    name: str | None = None
    ready_timeout_s: float = defaults.CONTAINER_READY_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.name is not None and not _IMAGE_NAME.fullmatch(self.name):
            raise ValueError(f"name: '{self.name}' must be lower-case letters, digits, '.', '_' and '-'")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s: must be positive, not {self.ready_timeout_s}")

    def deployment(self, model: str) -> str:
        """The deployment's name for `model`: `name`, else the model's name."""
        return self.name or model


@dataclass(frozen=True)
class KubernetesTargetConfig:
    """`deploy.kubernetes`: the Deployment `deploy.target: kubernetes` applies. The image is pushed
    to `registry` (REGISTRY/REPO) first, since a cluster pulls it from there."""

    __pydantic_config__ = _STRICT

    name: str | None = None
    registry: str | None = None
    tls_verify: bool = True
    replicas: int = 2
    max_replicas: int | None = None
    disruption_budget: bool = False
    kubectl: str = "kubectl"
    rollout_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.name is not None and not _IMAGE_NAME.fullmatch(self.name):
            raise ValueError(f"name: '{self.name}' must be lower-case letters, digits, '.', '_' and '-'")
        if self.replicas < 1:
            raise ValueError(f"replicas: must be at least 1, not {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas: must be at least replicas ({self.replicas}), not {self.max_replicas}")
        if self.rollout_timeout_s <= 0:
            raise ValueError(f"rollout_timeout_s: must be positive, not {self.rollout_timeout_s}")

    def deployment(self, model: str) -> str:
        """The Deployment's name for `model`: `name`, else the model's name."""
        return self.name or model


@dataclass(frozen=True)
class DeployConfig:
    __pydantic_config__ = _STRICT

    target: Literal["local", "container", "kubernetes"] = "local"
    host: str = defaults.HOST
    port: int = defaults.PORT
    workers: int = defaults.DEPLOY_WORKERS
    follow_interval_s: float = defaults.FOLLOW_INTERVAL_S
    strategy: Literal["replace", "canary", "shadow"] = "replace"
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    predictions_need_token: bool = False
    container: ContainerTargetConfig = field(default_factory=ContainerTargetConfig)
    kubernetes: KubernetesTargetConfig = field(default_factory=KubernetesTargetConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: must be between 1 and 65535, not {self.port}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers: must be between 1 and 64, not {self.workers}")
        if not 0.05 <= self.follow_interval_s <= 3600:
            raise ValueError(f"follow_interval_s: must be between 0.05 and 3600 seconds, not {self.follow_interval_s}")


@dataclass(frozen=True)
class PackageConfig:
    """How `conveyor package` builds the image: `base_image` (default a slim Python of
    `python`, itself defaulting to the Python the model was saved with) and `runtime`
    (`native`: the model's own flavor; `onnx`: a scikit-learn model converted to ONNX,
    verified against the original, served by onnxruntime without scikit-learn)."""

    __pydantic_config__ = _STRICT

    base_image: str | None = None
    python: str | None = None
    runtime: Literal["native", "onnx"] = "native"

    def __post_init__(self) -> None:
        if self.python is not None and not re.fullmatch(r"3\.[0-9]+", self.python):
            raise ValueError(f"python: '{self.python}' must be a Python version such as \"3.11\"")


@dataclass(frozen=True)
class TriggersConfig:
    __pydantic_config__ = _STRICT

    branch: str = defaults.BRANCH
    schedule: str | None = None  # cron, five fields: when `watch` and the CI files retrain

    def __post_init__(self) -> None:
        _require_text(branch=self.branch)
        if self.schedule is not None:
            _check_cron(self.schedule)


def _check_cron(expression: str) -> None:
    """Five-field cron only: GitHub Actions, GitLab and Jenkins all read that form, not croniter's seconds field."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"schedule: '{expression}' must have five fields (minute hour day month weekday), "
                         "such as '0 3 * * *'")
    try:
        from croniter import croniter
    except ImportError:  # the ci extra is not installed: the field count is all that can be checked
        return
    if not croniter.is_valid(expression):
        raise ValueError(f"schedule: '{expression}' is not a valid cron expression, such as '0 3 * * *'")


@dataclass(frozen=True)
class Config:
    """A whole `conveyor.yaml`."""

    __pydantic_config__ = _STRICT

    project: str
    stages: dict[str, StageConfig]
    model: ModelConfig
    tests: TestsConfig | None = None
    gates: list[GateConfig] = field(default_factory=list)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    triggers: TriggersConfig = field(default_factory=TriggersConfig)
    registry: str | None = None
    remote: str | None = None  # artifact remote (fsspec URL); CI files pull and push only when it is set
    package: PackageConfig = field(default_factory=PackageConfig)

    def __post_init__(self) -> None:
        _require_text(project=self.project)
        if not self.stages:
            raise ValueError("stages: declare at least one stage")


def _require_text(**values: str) -> None:
    for key, value in values.items():
        if not value.strip():
            raise ValueError(f"{key}: must not be empty")


def _rebuild(hint: Any, value: Any) -> Any:
    """Turn the JSON form of a validated config back into the dataclasses above."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _rebuild(hints[f.name], value[f.name])
                       for f in dataclasses.fields(hint) if f.name in value})
    if origin is list:
        return [_rebuild(typing.get_args(hint)[0], item) for item in value]
    if origin is dict:
        return {key: _rebuild(typing.get_args(hint)[1], item) for key, item in value.items()}
    if value is not None and origin in (typing.Union, __import__("types").UnionType):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _rebuild(inner, value)
    return value


class _LineTracker:
    """Maps a key path such as ('stages', 'train', 'deps', 0) to its line in the file."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}

    def build(self, node: yaml.Node, path: tuple[Any, ...] = ()) -> Any:
        import yaml

        scalars = yaml.SafeLoader("")  # resolves scalars through PyYAML's own tag rules
        return self._build(node, path, scalars)

    def _build(self, node: yaml.Node, path: tuple[Any, ...], scalars: yaml.SafeLoader) -> Any:
        import yaml

        if path:  # a key missing at the top level has no line to point to
            self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = scalars.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)):
                    raise ConfigError("", [(key_node.start_mark.line + 1, "", "keys must be plain names")])
                if key in result:
                    raise ConfigError("", [(key_node.start_mark.line + 1, str(key), "duplicate key")])
                result[key] = self._build(value_node, (*path, key), scalars)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, (*path, i), scalars) for i, item in enumerate(node.value)]
        return scalars.construct_object(node)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _humane(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key; check its spelling against the documented keys"
    if kind in ("missing", "missing_argument"):
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def parse(text: str, path: str = defaults.CONFIG_FILE) -> tuple[Config, _LineTracker]:
    """Validate the text of a `conveyor.yaml`; raise `ConfigError` naming every problem."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(path, [(line, "", f"not valid YAML: {exc.problem}")]) from None
    tracker = _LineTracker()
    try:
        data = tracker.build(node) if node is not None else None
    except ConfigError as exc:
        raise ConfigError(path, exc.problems) from None
    if not isinstance(data, dict):
        raise ConfigError(path, [(1, "", "expected a mapping of keys such as project, stages, model")])
    if isinstance(data.get("tests"), str):  # `tests: pytest -q` is short for `tests: {cmd: pytest -q}`
        data["tests"] = {"cmd": data["tests"]}
    try:
        config = TypeAdapter(Config).validate_python(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            message = _humane(error)
            key, colon, rest = message.partition(": ")
            if error["type"] == "value_error" and colon and key.isidentifier():  # raised as "key: problem"
                loc, message = (*loc, key), rest
            problems.append((tracker.line_of(loc), ".".join(map(str, loc)), message))
        raise ConfigError(path, problems) from None
    return config, tracker


def _cache_key(text: str) -> str:
    from conveyor.store import hash_bytes

    return hash_bytes(f"{__version__}\n{text}".encode())


def _read_cache(cache_file: Path, key: str) -> Config | None:
    try:
        entry = json.loads(cache_file.read_text(encoding="utf-8"))
        if entry.get("key") != key:
            return None
        config: Config = _rebuild(Config, entry["config"])
        return config
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a missing or corrupt entry is a miss


def load(root: Path, cache_dir: Path | None = None) -> Config:
    """Load and fully check the project's `conveyor.yaml`, including its stage graph.

    With `cache_dir`, a file whose text was validated before is not parsed again.
    """
    config_path = root / defaults.CONFIG_FILE
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(config_path), [(None, "", "file not found; run `conveyor init`")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(defaults.CONFIG_FILE, [(None, "", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    cache_file = cache_dir / "config.json" if cache_dir else None
    key = _cache_key(text)
    config = _read_cache(cache_file, key) if cache_file else None
    tracker: _LineTracker | None = None
    if config is None:
        config, tracker = parse(text, defaults.CONFIG_FILE)
        if cache_file and cache_dir and cache_dir.is_dir():
            from conveyor.store import atomic_write_text

            atomic_write_text(cache_file, json.dumps({"key": key, "config": dataclasses.asdict(config)}))
    problems = check_graph(config, tracker or _LineTracker()) + check_files(config, tracker or _LineTracker(), root)
    if problems and tracker is None:  # parse again, only to point at the lines
        config, tracker = parse(text, defaults.CONFIG_FILE)
        problems = check_graph(config, tracker) + check_files(config, tracker, root)
    if problems:
        raise ConfigError(defaults.CONFIG_FILE, problems)
    return config


def locate(root: Path, loc: tuple[Any, ...]) -> int | None:
    """The line of a key in the project's conveyor.yaml; for errors found after loading."""
    try:
        return parse((root / defaults.CONFIG_FILE).read_text(encoding="utf-8"))[1].line_of(loc)
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


def _norm(path: str) -> str:
    return Path(path).as_posix().rstrip("/") or "."


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


def producers(config: Config) -> dict[str, str]:
    """Map each declared out (normalised path) to the stage that writes it."""
    return {_norm(out): name for name, stage in config.stages.items() for out in stage.all_outs}


def stage_dependencies(config: Config) -> dict[str, set[str]]:
    """For each stage, the stages whose outs it depends on."""
    outs = producers(config)
    graph: dict[str, set[str]] = {name: set() for name in config.stages}
    for name, stage in config.stages.items():
        for dep in map(_norm, stage.deps):
            for out, producer in outs.items():
                if producer != name and (_within(dep, out) or _within(out, dep)):
                    graph[name].add(producer)
    return graph


def _path_problem(path: str, is_out: bool) -> str | None:
    """Why a declared path may not be used, or None: every path stays inside the project."""
    pure = Path(path)
    if not path.strip() or pure.as_posix() in (".", ""):
        return "must name a file or directory inside the project, not the project itself"
    if pure.is_absolute():
        return "must be relative to the project root, not absolute"
    if ".." in pure.parts:
        return "must stay inside the project ('..' is not allowed)"
    first = pure.parts[0]
    if first in (defaults.STATE_DIR, ".git"):
        return f"must not be inside {first}/"
    if is_out and _norm(path) in (defaults.CONFIG_FILE, defaults.PARAMS_FILE):
        return "is an input of the line; a stage cannot write it"
    return None


def _declared_paths(config: Config) -> list[tuple[tuple[Any, ...], str, bool]]:
    """(key path, path, is an out) for every path the config declares."""
    found: list[tuple[tuple[Any, ...], str, bool]] = []
    for name, stage in config.stages.items():
        found += [(("stages", name, "deps", i), dep, False) for i, dep in enumerate(stage.deps)]
        found += [(("stages", name, "outs", i), out, True) for i, out in enumerate(stage.outs)]
        found += [(("stages", name, "metrics", i), m, True) for i, m in enumerate(stage.metrics)]
    if config.tests is not None:
        found += [(("tests", "deps", i), dep, False) for i, dep in enumerate(config.tests.deps)]
    found.append((("model", "path"), config.model.path, False))
    return found


def check_graph(config: Config, tracker: _LineTracker) -> list[tuple[int | None, str, str]]:
    """Paths outside the project, two stages writing one out, a stage reading its own out, cycles."""
    problems: list[tuple[int | None, str, str]] = []
    for loc, path, is_out in _declared_paths(config):
        problem = _path_problem(path, is_out)
        if problem:
            key = ".".join(str(part) for part in loc if not isinstance(part, int))
            problems.append((tracker.line_of(loc), key, f"'{path}' {problem}"))
    if problems:
        return problems
    seen: dict[str, str] = {}
    for name, stage in config.stages.items():
        products = [("outs", i, out) for i, out in enumerate(stage.outs)]
        products += [("metrics", i, m) for i, m in enumerate(stage.metrics) if m not in stage.outs]
        for kind, i, out in products:
            key = _norm(out)
            for other, other_stage in seen.items():
                if other_stage != name and (_within(key, other) or _within(other, key)):
                    problems.append((
                        tracker.line_of(("stages", name, kind, i)),
                        f"stages.{name}.{kind}",
                        f"'{out}' is also written by stage '{other_stage}'; "
                        "each path must have exactly one producing stage",
                    ))
            seen[key] = name
        for i, dep in enumerate(stage.deps):
            if any(_within(_norm(dep), _norm(out)) for out in stage.all_outs):
                problems.append((
                    tracker.line_of(("stages", name, "deps", i)),
                    f"stages.{name}.deps",
                    f"'{dep}' is an out of the same stage; a stage cannot depend on its own output",
                ))
    if problems:
        return problems
    cycle = _find_cycle(stage_dependencies(config))
    if cycle:
        first = cycle[0]
        problems.append((
            tracker.line_of(("stages", first, "deps")),
            f"stages.{first}.deps",
            "stages depend on each other in a cycle: " + " -> ".join([*cycle, first])
            + "; remove one of these deps",
        ))
    return problems


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def check_files(config: Config, tracker: _LineTracker, root: Path) -> list[tuple[int | None, str, str]]:
    """Deps (of stages and tests) that exist neither on disk nor as a stage's out."""
    problems: list[tuple[int | None, str, str]] = []
    outs = producers(config)
    for name, stage in config.stages.items():
        for i, dep in enumerate(stage.deps):
            key = _norm(dep)
            produced = any(_within(key, out) for out in outs)
            pointed = any((root / f"{key}{suffix}").is_file() for suffix in (".conveyor", ".dvc"))  # tracked data
            if not produced and not pointed and not (root / dep).exists():
                problems.append((
                    tracker.line_of(("stages", name, "deps", i)),
                    f"stages.{name}.deps",
                    f"'{dep}' does not exist and no stage writes it; create it or fix the path",
                ))
    if config.tests is not None:
        for i, dep in enumerate(config.tests.deps):
            key = _norm(dep)
            if not any(_within(key, out) for out in outs) and not (root / dep).exists():
                problems.append((
                    tracker.line_of(("tests", "deps", i)),
                    "tests.deps",
                    f"'{dep}' does not exist and no stage writes it; the tests would never re-run "
                    "when it changes. Create it or fix the path",
                ))
    model_path = _norm(config.model.path)
    if not any(_within(model_path, out) for out in outs):
        problems.append((
            tracker.line_of(("model", "path")),
            "model.path",
            f"'{config.model.path}' is not an out of any stage; add it to the outs of the stage that trains the model",
        ))
    return problems
