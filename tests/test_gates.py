"""Gate evaluation: bounds, comparison with an alias's version, slices, latency and size, and their edge cases."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import commit_all
from hypothesis import given
from hypothesis import strategies as st

from conveyor import log_metrics, save_model
from conveyor.config import GateConfig
from conveyor.exceptions import ConveyorError
from conveyor.gates import (
    GateResult,
    baseline_aliases,
    check_version,
    evaluate,
    measure_latency_ms,
    model_size_mb,
    passed,
)
from conveyor.metrics import read_metrics
from conveyor.registry import ModelVersion


def version(metrics: dict[str, float], number: int = 1) -> ModelVersion:
    return ModelVersion(
        name="iris", version=number, digest=f"d{number}", flavor="sklearn", signature={},
        metrics=metrics, params={}, lineage={}, gates=[], run_id=None,
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )


def gate(**fields: Any) -> GateConfig:
    return GateConfig(metric=fields.pop("metric", "accuracy"), **fields)


def way(higher: bool) -> Literal["higher", "lower"]:
    return "higher" if higher else "lower"


def one(gate_config: GateConfig, metrics: dict[str, float], baseline: ModelVersion | None = None) -> GateResult:
    baselines = {gate_config.no_worse_than: baseline} if gate_config.no_worse_than else {}
    [result] = evaluate([gate_config], metrics, baselines)
    return result


# -- bounds -------------------------------------------------------------------


def test_min_bound() -> None:
    ok = one(gate(min=0.9), {"accuracy": 0.93})
    assert ok == GateResult("accuracy >= 0.9", "accuracy", 0.93, ">= 0.9", True, "accuracy is 0.93, at least 0.9")
    bad = one(gate(min=0.9), {"accuracy": 0.85})
    assert not bad.passed
    assert bad.detail == "accuracy is 0.85, below the minimum 0.9"


def test_max_bound() -> None:
    assert one(gate(metric="latency_ms", max=50), {"latency_ms": 50}).passed
    bad = one(gate(metric="latency_ms", max=50), {"latency_ms": 51})
    assert (bad.gate, bad.required, bad.passed) == ("latency_ms <= 50", "<= 50", False)
    assert bad.detail == "latency_ms is 51, above the maximum 50"


def test_bounds_are_inclusive_despite_float_rounding() -> None:
    assert one(gate(min=0.3), {"accuracy": 0.1 + 0.2}).passed
    assert one(gate(max=0.3), {"accuracy": 0.1 + 0.2}).passed
    assert not one(gate(min=0.3), {"accuracy": 0.2999}).passed


def test_each_check_of_a_gate_gives_one_result_in_order() -> None:
    results = evaluate(
        [gate(min=0.8, max=0.99, no_worse_than="production")],
        {"accuracy": 0.995},
        {"production": version({"accuracy": 0.9})},
    )
    assert [r.required for r in results] == [">= 0.8", "<= 0.99", ">= 0.9"]
    assert [r.passed for r in results] == [True, False, True]
    assert not passed(results)


# -- no worse than ------------------------------------------------------------


def test_no_worse_than_with_tolerance() -> None:
    g = gate(no_worse_than="production", tolerance=0.01)
    production = version({"accuracy": 0.95})
    within = one(g, {"accuracy": 0.941}, production)
    assert within.passed
    assert within.gate == "accuracy no worse than production (v1: 0.95) - 0.01"
    assert within.required == ">= 0.94"
    assert one(g, {"accuracy": 0.94}, production).passed
    worse = one(g, {"accuracy": 0.93}, production)
    assert not worse.passed
    assert worse.detail == (
        "accuracy is 0.93, worse than production (v1: 0.95) by 0.02, more than the tolerance 0.01"
    )


def test_no_worse_than_without_tolerance() -> None:
    result = one(gate(no_worse_than="production"), {"accuracy": 0.95}, version({"accuracy": 0.95}, 4))
    assert result.passed
    assert result.gate == "accuracy no worse than production (v4: 0.95)"


def test_direction_lower_flips_the_comparison() -> None:
    g = gate(metric="loss", no_worse_than="production", tolerance=0.02, direction="lower")
    production = version({"loss": 0.2})
    assert one(g, {"loss": 0.1}, production).passed
    within = one(g, {"loss": 0.21}, production)
    assert within.passed
    assert within.gate == "loss no worse than production (v1: 0.2) + 0.02"
    assert within.required == "<= 0.22"
    assert not one(g, {"loss": 0.25}, production).passed


def test_missing_baseline_passes_and_says_so() -> None:
    result = one(gate(no_worse_than="production"), {"accuracy": 0.5}, None)
    assert result.passed
    assert result.detail == "no production version yet: passes"


def test_baseline_without_the_metric_passes_and_says_so() -> None:
    result = one(gate(no_worse_than="production"), {"accuracy": 0.5}, version({"f1": 0.9}, 2))
    assert result.passed
    assert result.detail == "production (v2) has no 'accuracy' metric to compare with: passes"


def test_baselines_must_cover_every_alias() -> None:
    gates = [gate(no_worse_than="production"), gate(metric="f1", no_worse_than="staging", min=0.1)]
    assert baseline_aliases(gates) == ["production", "staging"]
    with pytest.raises(ValueError, match="staging"):
        evaluate(gates, {"accuracy": 1.0, "f1": 1.0}, {"production": None})


# -- missing or unusable metrics ----------------------------------------------


def test_missing_metric_fails_every_check_with_a_clear_detail() -> None:
    results = evaluate(
        [gate(metric="acc", min=0.9, no_worse_than="production")],
        {"accuracy": 0.95, "f1": 0.9},
        {"production": None},
    )
    assert [r.passed for r in results] == [False, False]
    assert all(r.actual is None for r in results)
    assert results[0].detail.startswith("metric 'acc' not found in metrics (have: accuracy, f1)")


def test_missing_metric_with_no_metrics_at_all() -> None:
    result = one(gate(min=0.9), {})
    assert not result.passed
    assert "(have: none were logged)" in result.detail


def test_nan_metric_fails_and_stays_json_safe() -> None:
    result = one(gate(min=0.9), {"accuracy": float("nan")})
    assert not result.passed and result.actual is None
    assert "not a finite number" in result.detail
    json.dumps(result.as_dict(), allow_nan=False)


def test_as_dict_and_passed() -> None:
    result = one(gate(min=0.9), {"accuracy": 0.95})
    assert result.as_dict() == {
        "gate": "accuracy >= 0.9", "metric": "accuracy", "actual": 0.95,
        "required": ">= 0.9", "passed": True, "detail": "accuracy is 0.95, at least 0.9",
    }
    assert passed([]) and passed([result])


# -- relative tolerance -------------------------------------------------------


def test_tolerance_pct_is_a_percentage_of_the_baseline() -> None:
    g = gate(no_worse_than="production", tolerance_pct=2)
    production = version({"accuracy": 0.95})
    within = one(g, {"accuracy": 0.932}, production)
    assert within.passed
    assert within.gate == "accuracy no worse than production (v1: 0.95) - 2%"
    assert within.required == ">= 0.931"
    assert within.detail == "accuracy is 0.932; production (v1) has 0.95, tolerance 2% of 0.95 = 0.019"
    worse = one(g, {"accuracy": 0.93}, production)
    assert not worse.passed
    assert worse.detail == (
        "accuracy is 0.93, worse than production (v1: 0.95) by 0.02, more than the tolerance 2% of 0.95 = 0.019"
    )


def test_tolerance_pct_with_direction_lower_and_a_negative_baseline() -> None:
    loss = gate(metric="loss", no_worse_than="production", tolerance_pct=10, direction="lower")
    assert one(loss, {"loss": 0.22}, version({"loss": 0.2})).required == "<= 0.22"
    assert not one(loss, {"loss": 0.23}, version({"loss": 0.2})).passed
    # The allowance is a percentage of the baseline's magnitude, so it never tightens the bound.
    score = gate(metric="score", no_worse_than="production", tolerance_pct=10)
    assert one(score, {"score": -1.1}, version({"score": -1.0})).required == ">= -1.1"


# -- slices -------------------------------------------------------------------

SLICED = {
    "accuracy": 0.95,
    "slices.setosa.accuracy": 1.0,
    "slices.versicolor.accuracy": 0.9,
    "slices.virginica.accuracy": 0.93,
    "slices.virginica.f1": 0.9,
}


def test_slices_check_every_slice_of_the_candidate() -> None:
    g = gate(slices=True, min=0.92, no_worse_than="production")
    production = version({"slices.setosa.accuracy": 1.0, "slices.versicolor.accuracy": 0.88,
                          "slices.virginica.accuracy": 0.95})
    results = evaluate([g], SLICED, {"production": production})
    assert [(r.metric, r.required, r.passed) for r in results] == [
        ("slices.setosa.accuracy", ">= 0.92", True),
        ("slices.setosa.accuracy", ">= 1", True),
        ("slices.versicolor.accuracy", ">= 0.92", False),
        ("slices.versicolor.accuracy", ">= 0.88", True),
        ("slices.virginica.accuracy", ">= 0.92", True),
        ("slices.virginica.accuracy", ">= 0.95", False),
    ]
    assert results[2].detail == "slices.versicolor.accuracy is 0.9, below the minimum 0.92"
    assert results[5].gate == "slices.virginica.accuracy no worse than production (v1: 0.95)"


def test_a_slice_missing_from_the_baseline_passes_and_says_so() -> None:
    g = gate(slices=True, no_worse_than="production", tolerance=0.01)
    results = evaluate([g], SLICED, {"production": version({"slices.setosa.accuracy": 1.0}, 3)})
    assert [r.passed for r in results] == [True, True, True]
    assert results[1].detail == "slice 'versicolor' is not in production (v3): passes"
    assert results[1].actual == 0.9


def test_slices_without_a_baseline_version_pass() -> None:
    results = evaluate([gate(slices=True, no_worse_than="production")], SLICED, {"production": None})
    assert len(results) == 3 and passed(results)
    assert results[0].detail == "no production version yet: passes"


def test_a_candidate_without_slices_of_the_metric_fails() -> None:
    [none] = evaluate([gate(slices=True, min=0.9)], {"accuracy": 0.95}, {})
    assert not none.passed and none.actual is None
    assert none.gate == "accuracy in every slice >= 0.9"
    assert "no 'slices.<name>.accuracy' metrics to check (no slices were logged)" in none.detail
    [other] = evaluate([gate(metric="recall", slices=True, no_worse_than="production")], SLICED,
                       {"production": version({})})
    assert not other.passed
    assert "(slices setosa, versicolor, virginica have no 'recall')" in other.detail


def test_slices_only_count_slices_that_have_the_metric() -> None:
    results = evaluate([gate(metric="f1", slices=True, min=0.5)], SLICED, {})
    assert [r.metric for r in results] == ["slices.virginica.f1"]


def test_a_non_finite_slice_value_fails_that_slice() -> None:
    metrics = {"slices.a.accuracy": float("nan"), "slices.b.accuracy": 0.99}
    results = evaluate([gate(slices=True, min=0.9)], metrics, {})
    assert [r.passed for r in results] == [False, True]
    assert "not a finite number" in results[0].detail


def test_log_metrics_writes_slices_that_read_back_as_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    log_metrics({"accuracy": 0.95}, path, slices={"setosa": {"accuracy": 1.0}, "virginica": {"accuracy": 0.9}})
    assert json.loads(path.read_text())["slices"] == {"setosa": {"accuracy": 1.0}, "virginica": {"accuracy": 0.9}}
    metrics = read_metrics(path)
    assert metrics == {"accuracy": 0.95, "slices.setosa.accuracy": 1.0, "slices.virginica.accuracy": 0.9}
    assert passed(evaluate([gate(slices=True, min=0.9)], metrics, {}))


@pytest.mark.parametrize(
    ("metrics", "slices", "message"),
    [
        ({}, {"a.b": {"accuracy": 1.0}}, "slice name 'a.b' must be non-empty and contain no '.'"),
        ({}, {"a": {"accuracy": float("inf")}}, "metric 'slices.a.accuracy' is inf"),
        ({"slices": 1.0}, {"a": {"accuracy": 1.0}}, "metric 'slices' clashes with the per-slice metrics"),
    ],
)
def test_log_metrics_rejects_bad_slices(
    tmp_path: Path, metrics: dict[str, float], slices: dict[str, dict[str, float]], message: str
) -> None:
    with pytest.raises(ConveyorError, match=re.escape(message)):
        log_metrics(metrics, tmp_path / "metrics.json", slices=slices)
    assert not (tmp_path / "metrics.json").exists()


# -- latency and size ---------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real iris classifier saved with conveyor.save_model."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(X, y)
    return save_model(model, tmp_path_factory.mktemp("latency") / "model", sample_input=X[:5])


def test_measure_latency_ms_times_one_row_predictions(model_dir: Path) -> None:
    latency = measure_latency_ms(model_dir, repeats=50)
    assert 0 < latency < 1000
    with pytest.raises(ValueError, match="repeats must be 1 or more"):
        measure_latency_ms(model_dir, repeats=0)


def test_max_latency_gate(model_dir: Path) -> None:
    [ok] = evaluate([GateConfig(max_latency_ms=10_000)], {}, {}, model_path=model_dir)
    assert ok.passed and ok.actual is not None and ok.actual > 0
    assert (ok.gate, ok.metric, ok.required) == ("p99 latency <= 10000 ms", "latency_p99_ms", "<= 10000")
    assert ok.detail.endswith("ms, at most 10000 ms (one-row predict)")
    [bad] = evaluate([GateConfig(max_latency_ms=1e-9)], {}, {}, model_path=model_dir)
    assert not bad.passed
    assert "above the maximum 1e-09 ms" in bad.detail


def test_latency_is_measured_once_per_evaluation(model_dir: Path) -> None:
    gates = [GateConfig(max_latency_ms=10_000), GateConfig(metric="accuracy", min=0.5),
             GateConfig(max_latency_ms=20_000, max_size_mb=100)]
    results = evaluate(gates, {"accuracy": 0.9}, {}, model_path=model_dir)
    assert [r.metric for r in results] == ["latency_p99_ms", "accuracy", "latency_p99_ms", "size_mb"]
    assert results[0].actual == results[2].actual  # two measurements would (almost) never agree to the ns
    assert passed(results)


def test_model_size(model_dir: Path) -> None:
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert model_size_mb(model_dir) == total / 1e6
    assert model_size_mb(model_dir / "model.joblib") == (model_dir / "model.joblib").stat().st_size / 1e6
    [ok] = evaluate([GateConfig(max_size_mb=100)], {}, {}, model_path=model_dir)
    assert ok.passed and ok.actual == total / 1e6 and ok.gate == "model size <= 100 MB"
    [bad] = evaluate([GateConfig(max_size_mb=0.0001)], {}, {}, model_path=model_dir)
    assert not bad.passed
    assert bad.detail == f"model size is {total / 1e6:.6g} MB, above the maximum 0.0001 MB"


def test_without_the_model_latency_and_size_gates_fail_as_not_measured() -> None:
    results = evaluate([GateConfig(max_latency_ms=5, max_size_mb=1)], {}, {})
    assert [(r.passed, r.actual) for r in results] == [(False, None), (False, None)]
    assert results[0].detail.startswith("not measured: the model's artifact is not in this machine's store")


def test_a_slice_missing_from_the_candidate_fails() -> None:
    gate = GateConfig(metric="accuracy", slices=True, no_worse_than="production")
    baseline = ModelVersion(name="m", version=1, digest="d", flavor="sklearn", signature={}, params={}, lineage={},
                            gates=[], run_id=None, created_at=datetime.now(timezone.utc),
                            metrics={"slices.a.accuracy": 0.9, "slices.b.accuracy": 0.9})
    results = evaluate([gate], {"slices.a.accuracy": 0.95}, {"production": baseline})
    assert [(r.metric, r.passed) for r in results] == [("slices.b.accuracy", False), ("slices.a.accuracy", True)]
    assert "did not log it" in results[0].detail


def test_an_unloadable_model_fails_the_measured_gates(tmp_path: Path) -> None:
    results = evaluate([GateConfig(max_latency_ms=5, max_size_mb=1)], {}, {}, model_path=tmp_path / "absent")
    assert [r.passed for r in results] == [False, False]
    assert results[0].detail.startswith("could not measure the p99 latency: ")
    assert "is not a Conveyor model directory" in results[0].detail
    assert results[1].detail.endswith("does not exist, so its size cannot be measured")


def test_a_model_that_cannot_predict_its_sample_row_is_reported(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    metadata = json.loads((broken / "conveyor-model.json").read_text())
    metadata["signature"]["inputs"] = metadata["signature"]["inputs"][:2]  # the estimator wants 4 columns
    metadata["sample"] = [row[:2] for row in metadata["sample"]]
    (broken / "conveyor-model.json").write_text(json.dumps(metadata))
    with pytest.raises(ConveyorError, match="raised ValueError .* predicting one row of its sample input"):
        measure_latency_ms(broken, repeats=1)


def test_latency_is_timed_on_the_saved_sample(model_dir: Path) -> None:
    from conveyor.model import read_metadata

    sample = read_metadata(model_dir).sample
    assert sample is not None and len(sample) == 5 and all(len(row) == 4 for row in sample)
    assert any(value != 0 for value in sample[0])  # real training rows, not a filler row of zeros
    assert measure_latency_ms(model_dir, repeats=5) > 0


# -- registered versions ------------------------------------------------------


def test_check_version_uses_the_stored_metrics(model_dir: Path) -> None:
    candidate = version({"accuracy": 0.96, "slices.setosa.accuracy": 1.0}, 5)
    production = version({"accuracy": 0.95, "slices.setosa.accuracy": 1.0}, 4)
    gates = [GateConfig(metric="accuracy", no_worse_than="production", tolerance_pct=1),
             GateConfig(metric="accuracy", slices=True, no_worse_than="production"),
             GateConfig(max_size_mb=100)]
    results = check_version(candidate, gates, {"production": production}, model_dir)
    assert [r.passed for r in results] == [True, True, True]
    assert results[0].actual == 0.96 and results[2].actual is not None
    unmeasured = check_version(candidate, gates, {"production": production}, None)
    assert unmeasured[2].detail.startswith("not measured")


def test_every_kind_of_result_is_json_ready(model_dir: Path) -> None:
    gates = [gate(min=0.9, max=1.0, no_worse_than="production", tolerance_pct=5),
             gate(slices=True, no_worse_than="production"), gate(metric="f1", slices=True, min=0.1),
             GateConfig(max_latency_ms=1000, max_size_mb=10)]
    results = evaluate(gates, {**SLICED, "accuracy": float("nan")}, {"production": version(SLICED)},
                       model_path=model_dir)
    stored = json.loads(json.dumps([r.as_dict() for r in results], allow_nan=False))
    assert [GateResult(**row) for row in stored] == results


# -- in the line --------------------------------------------------------------


@pytest.fixture
def gated_repo(tmp_repo: Path) -> Path:
    """The two-stage repository with a size gate its model (a few bytes) cannot pass."""
    config = tmp_repo / "conveyor.yaml"
    config.write_text(config.read_text() + "gates:\n  - max_size_mb: 0.000001\n")
    commit_all(tmp_repo, "size gate")
    return tmp_repo


def test_the_line_measures_the_candidate_model(gated_repo: Path) -> None:
    from conveyor.line import LineOptions, run_line
    from conveyor.project import Project

    record = run_line(Project(gated_repo), LineOptions(deploy=False))
    assert record.status == "failed"
    step = record.step("gates")
    assert step is not None and step.status == "failed"
    [result] = step.data["results"]
    size = (gated_repo / "model.txt").stat().st_size / 1e6
    assert (result["metric"], result["actual"], result["passed"]) == ("size_mb", size, False)


# -- properties ---------------------------------------------------------------

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
tolerances = st.floats(min_value=0, max_value=1e3, allow_nan=False)


@given(values, values, values, st.booleans())
def test_bounds_are_monotonic(bound: float, a: float, b: float, higher: bool) -> None:
    low, high = sorted((a, b))
    for g in (gate(min=bound, direction=way(higher)), gate(max=bound, direction=way(higher))):
        worse, better = (low, high) if g.min is not None else (high, low)
        if one(g, {"accuracy": worse}).passed:
            assert one(g, {"accuracy": better}).passed


@given(values, values, values, tolerances, st.booleans())
def test_no_worse_than_is_monotonic_in_the_metric(
    reference: float, a: float, b: float, tolerance: float, higher: bool
) -> None:
    g = gate(no_worse_than="production", tolerance=tolerance, direction=way(higher))
    production = version({"accuracy": reference})
    low, high = sorted((a, b))
    worse, better = (low, high) if higher else (high, low)
    if one(g, {"accuracy": worse}, production).passed:
        assert one(g, {"accuracy": better}, production).passed
    assert one(g, {"accuracy": reference}, production).passed


@given(values, values, tolerances, tolerances, st.booleans())
def test_more_tolerance_never_fails_a_passing_candidate(
    reference: float, actual: float, t1: float, t2: float, higher: bool
) -> None:
    small, large = sorted((t1, t2))
    production = version({"accuracy": reference})

    def verdict(tolerance: float) -> bool:
        g = gate(no_worse_than="production", tolerance=tolerance, direction=way(higher))
        return one(g, {"accuracy": actual}, production).passed

    if verdict(small):
        assert verdict(large)


@given(values, values, tolerances)
def test_direction_lower_mirrors_higher(reference: float, actual: float, tolerance: float) -> None:
    def verdict(higher: bool, sign: float) -> bool:
        g = gate(no_worse_than="production", tolerance=tolerance, direction=way(higher))
        return one(g, {"accuracy": sign * actual}, version({"accuracy": sign * reference})).passed

    assert verdict(True, 1.0) == verdict(False, -1.0)


@given(values, values, st.floats(min_value=0, max_value=100, allow_nan=False), st.booleans())
def test_tolerance_pct_equals_the_absolute_tolerance_it_stands_for(
    reference: float, actual: float, pct: float, higher: bool
) -> None:
    production = version({"accuracy": reference})
    relative = gate(no_worse_than="production", tolerance_pct=pct, direction=way(higher))
    absolute = gate(no_worse_than="production", tolerance=abs(reference) * pct / 100, direction=way(higher))
    assert one(relative, {"accuracy": actual}, production).passed == one(absolute, {"accuracy": actual}, production).passed
