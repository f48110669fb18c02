"""The `conveyor.yaml` schema, its loading, and errors that name file, line and key.

The file is parsed with PyYAML's node API so every key keeps its line number;
pydantic v2 validates the structure; the checks that need the whole file
(stage graph, files on disk) follow and report through the same `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conveyor import defaults
from conveyor.exceptions import ConfigError

_Path = str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(_Strict):
    """A command with declared inputs and outputs; cached by their content."""

    cmd: str = Field(min_length=1)
    deps: list[_Path] = []
    params: list[str] = []
    outs: list[_Path] = []
    metrics: list[_Path] = []

    @property
    def all_outs(self) -> list[str]:
        """Outs plus metrics files: both are products of the stage and cached."""
        return [*self.outs, *(m for m in self.metrics if m not in self.outs)]


class TestsConfig(_Strict):
    """The project's test command; its cache key is `deps` + the candidate digest."""

    cmd: str = Field(min_length=1)
    deps: list[_Path] = ["tests/"]


class ModelConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: _Path
    flavor: Literal["sklearn"] = "sklearn"


class GateConfig(_Strict):
    """A check a candidate must pass: bounds on a metric, or no worse than an alias."""

    metric: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    no_worse_than: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]*$")
    tolerance: float = Field(default=0.0, ge=0)
    higher_is_better: bool = True

    @model_validator(mode="after")
    def _has_a_check(self) -> GateConfig:
        if self.min is None and self.max is None and self.no_worse_than is None:
            raise ValueError("a gate needs at least one of min, max or no_worse_than")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class DeployConfig(_Strict):
    target: Literal["local"] = "local"
    host: str = defaults.HOST
    port: int = Field(default=defaults.PORT, ge=1, le=65535)


class TriggersConfig(_Strict):
    branch: str = defaults.BRANCH


class Config(_Strict):
    """A whole `conveyor.yaml`."""

    project: str = Field(min_length=1)
    stages: dict[str, StageConfig]
    tests: TestsConfig | None = None
    model: ModelConfig
    gates: list[GateConfig] = []
    deploy: DeployConfig = DeployConfig()
    triggers: TriggersConfig = TriggersConfig()
    registry: str | None = None

    @field_validator("tests", mode="before")
    @classmethod
    def _tests_shorthand(cls, value: Any) -> Any:
        return {"cmd": value} if isinstance(value, str) else value

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, value: dict[str, StageConfig]) -> dict[str, StageConfig]:
        if not value:
            raise ValueError("declare at least one stage")
        return value


class _LineTracker:
    """Maps a key path such as ('stages', 'train', 'deps', 0) to its line in the file."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        self._scalars = yaml.SafeLoader("")  # resolves scalars through PyYAML's own tag rules

    def build(self, node: yaml.Node, path: tuple[Any, ...] = ()) -> Any:
        if path:  # a key missing at the top level has no line to point to
            self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalars.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool)):
                    raise ConfigError("", [(key_node.start_mark.line + 1, "", "keys must be plain names")])
                if key in result:
                    raise ConfigError("", [(key_node.start_mark.line + 1, str(key), "duplicate key")])
                result[key] = self.build(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _key_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in ("function-after[_has_a_check()]",))


def _humane(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against the documented keys"
    if kind == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def parse(text: str, path: str = defaults.CONFIG_FILE) -> tuple[Config, _LineTracker]:
    """Validate the text of a `conveyor.yaml`; raise `ConfigError` naming every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
            problems.append((tracker.line_of(loc), _key_name(loc), _humane(error)))
        raise ConfigError(path, problems) from None
    return config, tracker


def load(root: Path) -> Config:
    """Load and fully check the project's `conveyor.yaml`, including its stage graph."""
    config_path = root / defaults.CONFIG_FILE
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(config_path), [(None, "", "file not found; run `conveyor init`")]) from None
    config, tracker = parse(text, defaults.CONFIG_FILE)
    problems = check_graph(config, tracker) + check_files(config, tracker, root)
    if problems:
        raise ConfigError(defaults.CONFIG_FILE, problems)
    return config


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


def check_graph(config: Config, tracker: _LineTracker) -> list[tuple[int | None, str, str]]:
    """Two stages writing one out, a stage reading its own out, and cycles."""
    problems: list[tuple[int | None, str, str]] = []
    seen: dict[str, tuple[str, int]] = {}
    for name, stage in config.stages.items():
        for i, out in enumerate(stage.outs):
            key = _norm(out)
            for other, (other_stage, _) in seen.items():
                if other_stage != name and (_within(key, other) or _within(other, key)):
                    problems.append((
                        tracker.line_of(("stages", name, "outs", i)),
                        f"stages.{name}.outs",
                        f"'{out}' is also written by stage '{other_stage}'; "
                        "each path must have exactly one producing stage",
                    ))
            seen[key] = (name, i)
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
    """Deps that exist neither on disk nor as another stage's out."""
    problems: list[tuple[int | None, str, str]] = []
    outs = producers(config)
    for name, stage in config.stages.items():
        for i, dep in enumerate(stage.deps):
            key = _norm(dep)
            produced = any(_within(key, out) for out in outs)
            if not produced and not (root / dep).exists():
                problems.append((
                    tracker.line_of(("stages", name, "deps", i)),
                    f"stages.{name}.deps",
                    f"'{dep}' does not exist and no stage writes it; create it or fix the path",
                ))
    model_path = _norm(config.model.path)
    if not any(_within(model_path, out) for out in outs):
        problems.append((
            tracker.line_of(("model", "path")),
            "model.path",
            f"'{config.model.path}' is not an out of any stage; add it to the outs of the stage that trains the model",
        ))
    return problems
