"""The pytest plugin, as a project's test suite meets it (pytester runs a real pytest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import conveyor

pytest_plugins = ["pytester"]

CONFIG = """\
project: p
stages:
  train:
    cmd: python train.py
    outs: [model/]
model:
  name: p
  path: model/
"""

TESTS = """\
def test_predicts_setosa(candidate_model):
    assert list(candidate_model.predict([[5.1, 3.5, 1.4, 0.2]])) == [0]

def test_fails_on_purpose(candidate_model):
    assert False
"""


def _save_model(path: Path) -> None:
    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    conveyor.save_model(model, path, sample_input=np.asarray(features[:3]))


def test_fixture_finds_the_model_from_conveyor_yaml(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", conveyor=CONFIG)
    _save_model(pytester.path / "model")
    pytester.makepyfile(test_model=TESTS)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1, failed=1)


def test_report_lists_failing_tests_for_the_line(pytester: pytest.Pytester, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "candidate"
    _save_model(elsewhere)
    monkeypatch.setenv("CONVEYOR_CANDIDATE_PATH", str(elsewhere))
    monkeypatch.setenv("CONVEYOR_TEST_REPORT", str(tmp_path / "report.json"))
    pytester.makepyfile(test_model=TESTS)
    pytester.runpytest_subprocess("-q").assert_outcomes(passed=1, failed=1)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] == 1 and report["failed"] == 1
    assert report["failures"] == ["test_model.py::test_fails_on_purpose"]


def test_no_model_yet_says_what_to_run(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", conveyor=CONFIG)
    pytester.makepyfile(test_model=TESTS)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*candidate_model: no model at * yet; run `conveyor run` first*"])


def test_projects_without_conveyor_are_untouched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    pytester.runpytest_subprocess("-q").assert_outcomes(passed=1)


PRODUCTION_TESTS = """\
import numpy as np

def test_no_worse_than_production_on_setosa(candidate_model, production_model):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2]])
    assert list(candidate_model.predict(rows)) == list(production_model.predict(rows))

def test_candidate_version(candidate_version):
    assert candidate_version.digest.endswith(".dir") and candidate_version.flavor == "sklearn"
    assert candidate_version.metrics == {"accuracy": 0.97}
"""


def _project_with_candidate(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", conveyor=CONFIG.replace("    outs: [model/]", "    outs: [model/]\n    metrics: [m.json]"))
    _save_model(pytester.path / "model")
    conveyor.log_metrics({"accuracy": 0.97}, pytester.path / "m.json")
    pytester.makepyfile(test_model=PRODUCTION_TESTS)


def test_production_model_skips_until_there_is_one(pytester: pytest.Pytester) -> None:
    _project_with_candidate(pytester)
    result = pytester.runpytest_subprocess("-q", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*no production version of p yet*"])


def test_production_model_is_the_verified_production_version(pytester: pytest.Pytester) -> None:
    from conveyor.project import Project
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    _project_with_candidate(pytester)
    project = Project(pytester.path)
    digest = ArtifactStore(project.cache_dir).put(pytester.path / "model")
    registry = Registry(project.default_registry_url)
    try:
        version, _ = registry.register(name="p", digest=digest, flavor="sklearn", signature={}, metrics={},
                                       params={}, lineage={}, gates=[], run_id=None)
        registry.set_alias("p", "production", version.version, actor="tests", reason="first")
    finally:
        registry.close()
    pytester.runpytest_subprocess("-q").assert_outcomes(passed=2)
