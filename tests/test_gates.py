"""Gate evaluation: bounds, comparison with an alias's version, and their edge cases."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.config import GateConfig
from conveyor.gates import GateResult, baseline_aliases, evaluate, passed
from conveyor.registry import ModelVersion


def version(metrics: dict[str, float], number: int = 1) -> ModelVersion:
    return ModelVersion(
        name="iris", version=number, digest=f"d{number}", flavor="sklearn", signature={},
        metrics=metrics, params={}, lineage={}, gates=[], run_id=None,
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )


def gate(**fields: Any) -> GateConfig:
    return GateConfig(metric=fields.pop("metric", "accuracy"), **fields)


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


def test_lower_is_better_flips_the_comparison() -> None:
    g = gate(metric="loss", no_worse_than="production", tolerance=0.02, higher_is_better=False)
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


# -- properties ---------------------------------------------------------------

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
tolerances = st.floats(min_value=0, max_value=1e3, allow_nan=False)


@given(values, values, values, st.booleans())
def test_bounds_are_monotonic(bound: float, a: float, b: float, higher: bool) -> None:
    low, high = sorted((a, b))
    for g in (gate(min=bound, higher_is_better=higher), gate(max=bound, higher_is_better=higher)):
        worse, better = (low, high) if g.min is not None else (high, low)
        if one(g, {"accuracy": worse}).passed:
            assert one(g, {"accuracy": better}).passed


@given(values, values, values, tolerances, st.booleans())
def test_no_worse_than_is_monotonic_in_the_metric(
    reference: float, a: float, b: float, tolerance: float, higher: bool
) -> None:
    g = gate(no_worse_than="production", tolerance=tolerance, higher_is_better=higher)
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
        g = gate(no_worse_than="production", tolerance=tolerance, higher_is_better=higher)
        return one(g, {"accuracy": actual}, production).passed

    if verdict(small):
        assert verdict(large)


@given(values, values, tolerances)
def test_lower_is_better_mirrors_higher_is_better(reference: float, actual: float, tolerance: float) -> None:
    def verdict(higher: bool, sign: float) -> bool:
        g = gate(no_worse_than="production", tolerance=tolerance, higher_is_better=higher)
        return one(g, {"accuracy": sign * actual}, version({"accuracy": sign * reference})).passed

    assert verdict(True, 1.0) == verdict(False, -1.0)
