"""conveyor.yaml validation: every mistake names file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import config
from conveyor.exceptions import ConfigError

VALID = """\
project: demo
stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    outs: [data/]
  train:
    cmd: python train.py
    deps: [train.py, data/]
    params: [train.C]
    outs: [model/]
    metrics: [metrics.json]
tests: pytest -q tests
model:
  name: demo
  path: model/
gates:
  - metric: accuracy
    min: 0.9
  - metric: accuracy
    no_worse_than: production
    tolerance: 0.01
"""


def _project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "conveyor.yaml").write_text(text)
    for name in ("prepare.py", "train.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "tests").mkdir(exist_ok=True)
    return tmp_path


def _problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(_project(tmp_path, text))
    return str(info.value)


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    loaded = config.load(_project(tmp_path, VALID))
    assert list(loaded.stages) == ["prepare", "train"]
    assert loaded.tests is not None and loaded.tests.cmd == "pytest -q tests"
    assert loaded.tests.deps == ["tests/"]
    assert loaded.deploy.port == 8000 and loaded.triggers.branch == "main"
    assert loaded.stages["train"].all_outs == ["model/", "metrics.json"]
    assert config.stage_dependencies(loaded) == {"prepare": set(), "train": {"prepare"}}


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    text = VALID.replace("    outs: [model/]", "    outs: [model/]\n    out: [extra/]")
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:12: stages.train.out: unknown key" in message


def test_wrong_type_names_line_and_key(tmp_path: Path) -> None:
    message = _problems(tmp_path, VALID.replace("    min: 0.9", "    min: high"))
    assert "conveyor.yaml:19: gates.0.min:" in message
    assert "number" in message


def test_missing_required_key(tmp_path: Path) -> None:
    text = VALID.replace("model:\n  name: demo\n  path: model/\n", "")
    assert "conveyor.yaml: model: required key is missing" in _problems(tmp_path, text)


def test_gate_without_a_check(tmp_path: Path) -> None:
    text = VALID.replace("    no_worse_than: production\n    tolerance: 0.01\n", "")
    assert "conveyor.yaml:20: gates.1: a gate needs at least one of min, max or no_worse_than" in _problems(tmp_path, text)


def test_missing_dep_file(tmp_path: Path) -> None:
    text = VALID.replace("deps: [train.py, data/]", "deps: [train.py, data/, raw.csv]")
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:9: stages.train.deps: 'raw.csv' does not exist and no stage writes it" in message


def test_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    text = VALID.replace("deps: [prepare.py]", "deps: [prepare.py, model/]")
    message = _problems(tmp_path, text)
    assert "cycle" in message and "prepare -> train -> prepare" in message
    assert "conveyor.yaml:5: stages.prepare.deps" in message


def test_two_stages_writing_one_out(tmp_path: Path) -> None:
    text = VALID.replace("outs: [data/]", "outs: [data/, model/]")
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:11: stages.train.outs: 'model/' is also written by stage 'prepare'" in message


def test_model_path_must_be_an_out(tmp_path: Path) -> None:
    message = _problems(tmp_path, VALID.replace("  path: model/", "  path: elsewhere/"))
    assert "conveyor.yaml:16: model.path: 'elsewhere/' is not an out of any stage" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = _problems(tmp_path, VALID.replace("    cmd: python train.py", "    cmd: [python"))
    assert message.startswith("conveyor.yaml:") and "not valid YAML" in message


def test_duplicate_key(tmp_path: Path) -> None:
    message = _problems(tmp_path, VALID + "project: again\n")
    assert "conveyor.yaml:23: project: duplicate key" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace("    min: 0.9", "    min: high").replace("project: demo", "project: demo\nstagez: {}")
    message = _problems(tmp_path, text)
    assert "stagez: unknown key" in message and "gates.0.min" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; run `conveyor init`"):
        config.load(tmp_path)


def test_constraint_errors_point_at_the_key(tmp_path: Path) -> None:
    text = VALID.replace("    tolerance: 0.01", "    tolerance: -1") + "deploy:\n  port: 70000\n"
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:22: gates.1.tolerance: must be 0 or more, not -1.0" in message
    assert "conveyor.yaml:24: deploy.port: must be between 1 and 65535, not 70000" in message


def test_empty_stages(tmp_path: Path) -> None:
    text = "project: x\nstages: {}\nmodel: {name: x, path: m}\n"
    assert "conveyor.yaml:2: stages: declare at least one stage" in _problems(tmp_path, text)


def test_tests_shorthand_and_long_form_agree(tmp_path: Path) -> None:
    short = config.parse(VALID)[0].tests
    long = config.parse(VALID.replace("tests: pytest -q tests", "tests:\n  cmd: pytest -q tests"))[0].tests
    assert short == long


def test_validated_config_is_reused_until_the_file_changes(tmp_path: Path) -> None:
    root = _project(tmp_path, VALID)
    state = root / ".conveyor"
    state.mkdir()
    first = config.load(root, state)
    assert (state / "config.json").is_file()
    assert config.load(root, state) == first
    # A fresh process loads the cached copy without importing PyYAML or pydantic.
    probe = (
        "import sys; from pathlib import Path; from conveyor import config; "
        f"config.load(Path({str(root)!r}), Path({str(state)!r})); "
        "print(sorted(m for m in ('yaml', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    (root / "conveyor.yaml").write_text(VALID.replace("min: 0.9", "min: 0.8"))
    assert config.load(root, state).gates[0].min == 0.8


def test_corrupt_cached_config_is_a_miss(tmp_path: Path) -> None:
    root = _project(tmp_path, VALID)
    state = root / ".conveyor"
    state.mkdir()
    config.load(root, state)
    (state / "config.json").write_text('{"key": "x", "config": [')
    assert config.load(root, state).project == "demo"


def test_graph_errors_from_a_cached_config_still_name_lines(tmp_path: Path) -> None:
    root = _project(tmp_path, VALID)
    state = root / ".conveyor"
    state.mkdir()
    config.load(root, state)
    (root / "train.py").unlink()
    with pytest.raises(ConfigError, match=r"conveyor.yaml:9: stages.train.deps: 'train.py' does not exist"):
        config.load(root, state)


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("outs: [model/]", "outs: [/tmp/victim]", "conveyor.yaml:11: stages.train.outs: '/tmp/victim' must be relative"),
        ("outs: [model/]", "outs: [./]", "conveyor.yaml:11: stages.train.outs: './' must name a file or directory inside"),
        ("outs: [data/]", "outs: [../data/]", "conveyor.yaml:6: stages.prepare.outs: '../data/' must stay inside"),
        ("outs: [data/]", "outs: [.git/hooks]", "conveyor.yaml:6: stages.prepare.outs: '.git/hooks' must not be inside .git/"),
        ("outs: [data/]", "outs: [conveyor.yaml]", "conveyor.yaml:6: stages.prepare.outs: 'conveyor.yaml' is an input"),
        ("deps: [prepare.py]", "deps: [/etc/passwd]", "conveyor.yaml:5: stages.prepare.deps: '/etc/passwd' must be relative"),
        ("metrics: [metrics.json]", "metrics: [../m.json]", "conveyor.yaml:12: stages.train.metrics: '../m.json' must stay"),
        ("  path: model/", "  path: /model", "conveyor.yaml:16: model.path: '/model' must be relative"),
    ],
)
def test_paths_must_stay_inside_the_project(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    assert expected in _problems(tmp_path, VALID.replace(replace, by))


def test_a_metrics_file_written_by_two_stages(tmp_path: Path) -> None:
    text = VALID.replace("    outs: [data/]", "    outs: [data/]\n    metrics: [metrics.json]")
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:13: stages.train.metrics: 'metrics.json' is also written by stage 'prepare'" in message


def test_missing_test_deps_are_reported(tmp_path: Path) -> None:
    text = VALID.replace("tests: pytest -q tests", "tests:\n  cmd: pytest -q tset\n  deps: [tset/]")
    message = _problems(tmp_path, text)
    assert "conveyor.yaml:15: tests.deps: 'tset/' does not exist" in message


GATE_FORMS = VALID + """\
  - metric: loss
    no_worse_than: production
    tolerance_pct: 5
    direction: lower
  - metric: accuracy
    slices: true
    min: 0.8
    no_worse_than: production
  - max_latency_ms: 50
  - max_latency_ms: 80
    max_size_mb: 10
"""


def test_every_gate_form_loads_and_survives_the_cache(tmp_path: Path) -> None:
    root = _project(tmp_path, GATE_FORMS)
    state = root / ".conveyor"
    state.mkdir()
    gates = config.load(root, state).gates
    assert [(g.metric, g.tolerance_pct, g.direction, g.slices, g.max_latency_ms, g.max_size_mb) for g in gates] == [
        ("accuracy", None, "higher", False, None, None),
        ("accuracy", None, "higher", False, None, None),
        ("loss", 5.0, "lower", False, None, None),
        ("accuracy", None, "higher", True, None, None),
        (None, None, "higher", False, 50.0, None),
        (None, None, "higher", False, 80.0, 10.0),
    ]
    assert config.load(root, state).gates == gates  # rebuilt from .conveyor/config.json


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("    tolerance: 0.01", "    tolerance: 0.01\n    higher_is_better: false",
         "conveyor.yaml:23: gates.1.higher_is_better: was replaced by `direction: higher` or `direction: lower`"),
        ("    tolerance: 0.01", "    tolerance: 0.01\n    tolerance_pct: 1",
         "conveyor.yaml:23: gates.1.tolerance_pct: give either tolerance (in the metric's units) or tolerance_pct"),
        ("    tolerance: 0.01", "    tolerance: 0\n    tolerance_pct: 1",
         "conveyor.yaml:23: gates.1.tolerance_pct: give either tolerance"),
        ("    tolerance: 0.01", "    tolerance_pct: -1",
         "conveyor.yaml:22: gates.1.tolerance_pct: must be 0 or more, not -1.0"),
        ("    min: 0.9", "    min: 0.9\n    tolerance_pct: 2",
         "conveyor.yaml:20: gates.0.tolerance_pct: only applies to no_worse_than"),
        ("    min: 0.9", "    min: 0.9\n    tolerance: 0.1",
         "conveyor.yaml:20: gates.0.tolerance: only applies to no_worse_than"),
        ("    min: 0.9", "    min: 0.9\n    max: 0.5", "conveyor.yaml:20: gates.0.max: 0.5 is less than min 0.9"),
        ("    min: 0.9", "    min: .nan", "conveyor.yaml:19: gates.0.min: must be a finite number, not nan"),
        ("    tolerance: 0.01", "    tolerance: 0.01\n    direction: up",
         "conveyor.yaml:23: gates.1.direction: Input should be 'higher' or 'lower'"),
        ("    min: 0.9", "    min: 0.9\n    slices: maybe", "conveyor.yaml:20: gates.0.slices:"),
    ],
)
def test_gate_key_errors_point_at_the_key(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    assert expected in _problems(tmp_path, VALID.replace(replace, by))


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ("  - metric: latency\n    max_latency_ms: 50\n",
         "conveyor.yaml:23: gates.2.metric: max_latency_ms is measured on the model, not read from metrics"),
        ("  - max_latency_ms: 0\n", "conveyor.yaml:23: gates.2.max_latency_ms: must be more than 0, not 0.0"),
        ("  - max_size_mb: -1\n", "conveyor.yaml:23: gates.2.max_size_mb: must be more than 0, not -1.0"),
        ("  - max_size_mb: 10\n    slices: true\n",
         "conveyor.yaml:24: gates.2.slices: applies to a metric, not to max_size_mb; put it in a gate with a metric"),
        ("  - max_latency_ms: 50\n    no_worse_than: production\n",
         "conveyor.yaml:24: gates.2.no_worse_than: applies to a metric, not to max_latency_ms"),
        ("  - max_latency_ms: 50\n    direction: lower\n", "conveyor.yaml:24: gates.2.direction: applies to a metric"),
        ("  - min: 0.9\n",
         "conveyor.yaml:23: gates.2.metric: required key is missing (or use max_latency_ms or max_size_mb, which need no metric)"),
        ("  - slices: true\n    metric: accuracy\n",
         "conveyor.yaml:23: gates.2: a gate needs at least one of min, max or no_worse_than"),
    ],
)
def test_gate_combinations_are_checked(tmp_path: Path, gate: str, expected: str) -> None:
    assert expected in _problems(tmp_path, VALID + gate)


def test_deploy_rollout_keys_load_and_survive_the_cache(tmp_path: Path) -> None:
    text = VALID + ("deploy:\n  workers: 3\n  follow_interval_s: 0.5\n  strategy: canary\n"
                    "  canary: {steps: [5, 25, 100], interval_s: 10, min_requests: 50, max_error_rate: 0.02, "
                    "max_p99_ms: 40, max_disagreement: 0.05}\n  shadow: {share: 20}\n  predictions_need_token: true\n")
    root = _project(tmp_path, text)
    for _ in range(2):  # parsed, then read back from the cache
        deploy = config.load(root, tmp_path / "state").deploy
        assert (deploy.workers, deploy.follow_interval_s, deploy.strategy) == (3, 0.5, "canary")
        assert deploy.canary.steps == [5, 25, 100] and deploy.canary.max_p99_ms == 40 and deploy.shadow.share == 20
        assert deploy.predictions_need_token is True
        assert deploy.canary.max_disagreement == 0.05


@pytest.mark.parametrize(("deploy", "expected"), [
    ("  canary: {steps: [50, 10]}", "deploy.canary.steps: must be rising percentages"),
    ("  canary: {max_error_rate: 2}", "deploy.canary.max_error_rate: must be a fraction between 0 and 1"),
    ("  canary: {max_disagreement: 1.5}", "deploy.canary.max_disagreement: must be a fraction between 0 and 1"),
    ("  canary: {interval: 3}", "deploy.canary.interval: unknown key"),
    ("  shadow: {share: 0}", "deploy.shadow.share: must be a percentage in (0, 100]"),
    ("  strategy: blue-green", "deploy.strategy: Input should be 'replace', 'canary' or 'shadow'"),
    ("  workers: 0", "deploy.workers: must be between 1 and 64"),
])
def test_bad_deploy_keys_name_line_and_key(tmp_path: Path, deploy: str, expected: str) -> None:
    text = VALID + "deploy:\n" + deploy + "\n"
    line = text.count("\n")  # the last line
    assert f"conveyor.yaml:{line}: {expected}" in _problems(tmp_path, text)
