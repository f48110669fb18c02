"""Gate evaluation: may this candidate be promoted?

Each gate in `conveyor.yaml` checks one metric (overall, or in every slice)
against fixed bounds and/or against the version an alias (usually
`production`) points to, or measures the model itself: its p99 predict time
and its size. Given the same metrics, baselines and measurements, evaluation
always gives the same verdicts, so the line, `conveyor gates` and tests agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError
from conveyor.metrics import SLICES, slice_values

if TYPE_CHECKING:
    from conveyor.config import GateConfig
    from conveyor.registry import ModelVersion

__all__ = [
    "GateResult", "baseline_aliases", "check_version", "evaluate", "measure_latency_ms", "model_size_mb", "passed",
]

_RELATIVE_SLACK = 1e-9
"""Floating-point slack at a boundary, so 0.1 + 0.2 counts as meeting `min: 0.3`."""

_WARMUP_CALLS = 20
"""Predictions made and thrown away before timing: the first calls pay for lazy imports and caches."""

LATENCY_METRIC = "latency_p99_ms"
"""The `metric` of a `max_latency_ms` result."""

SIZE_METRIC = "size_mb"
"""The `metric` of a `max_size_mb` result."""


@dataclass(frozen=True)
class GateResult:
    """The verdict of one check of one gate; `detail` says why, in words."""

    gate: str
    metric: str
    actual: float | None
    required: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (as stored with the model version and shown by `--json`)."""
        return asdict(self)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _slack(bound: float) -> float:
    return _RELATIVE_SLACK * max(1.0, abs(bound))


def _at_least(value: float, bound: float) -> bool:
    return value >= bound - _slack(bound)


def _at_most(value: float, bound: float) -> bool:
    return value <= bound + _slack(bound)


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not one (NaN, a string, …)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _missing(metric: str, metrics: Mapping[str, float]) -> str | None:
    """Why the candidate's `metric` cannot be checked, or None when it can."""
    if metric not in metrics:
        have = ", ".join(sorted(metrics)) or "none were logged"
        return (
            f"metric '{metric}' not found in metrics (have: {have}); "
            "log it in the stage's metrics file or fix the gate's metric name"
        )
    if _number(metrics[metric]) is None:
        return f"metric '{metric}' is {metrics[metric]!r}, not a finite number"
    return None


def _bound(metric: str, actual: float | None, problem: str | None, op: str, bound: float) -> GateResult:
    gate = f"{metric} {op} {_fmt(bound)}"
    required = f"{op} {_fmt(bound)}"
    if actual is None:
        return GateResult(gate, metric, None, required, False, problem or "")
    if op == ">=":
        ok = _at_least(actual, bound)
        detail = f"{metric} is {_fmt(actual)}, " + (
            f"at least {_fmt(bound)}" if ok else f"below the minimum {_fmt(bound)}"
        )
    else:
        ok = _at_most(actual, bound)
        detail = f"{metric} is {_fmt(actual)}, " + (
            f"at most {_fmt(bound)}" if ok else f"above the maximum {_fmt(bound)}"
        )
    return GateResult(gate, metric, actual, required, ok, detail)


def _no_worse(
    gate: GateConfig,
    metric: str,
    actual: float | None,
    problem: str | None,
    baseline: ModelVersion | None,
    reference_value: Any,
    absent: str,
) -> GateResult:
    """Compare `metric` (the gate's metric, or one slice of it) with the baseline's `reference_value`.

    `absent` is the detail when the baseline has no such value (the check passes).
    """
    alias = gate.no_worse_than or ""
    wanted = f"no worse than {alias}"
    if baseline is None:
        if actual is None:
            return GateResult(f"{metric} {wanted}", metric, None, wanted, False, problem or "")
        return GateResult(f"{metric} {wanted}", metric, actual, wanted, True, f"no {alias} version yet: passes")
    reference = _number(reference_value)
    where = f"{alias} (v{baseline.version}"
    if reference is None:
        description = f"{metric} {wanted} (v{baseline.version})"
        if actual is None:
            return GateResult(description, metric, None, wanted, False, problem or "")
        return GateResult(description, metric, actual, wanted, True, absent)
    higher = gate.direction == "higher"
    if gate.tolerance_pct is not None:
        allowed = abs(reference) * gate.tolerance_pct / 100
        slack = f"{_fmt(gate.tolerance_pct)}%"
        explained = f"{slack} of {_fmt(reference)} = {_fmt(allowed)}"
    else:
        allowed = gate.tolerance
        slack = explained = _fmt(allowed)
    description = f"{metric} no worse than {where}: {_fmt(reference)})"
    if allowed or gate.tolerance_pct:
        description += f" {'-' if higher else '+'} {slack}"
    threshold, op = (reference - allowed, ">=") if higher else (reference + allowed, "<=")
    required = f"{op} {_fmt(threshold)}"
    if actual is None:
        return GateResult(description, metric, None, required, False, problem or "")
    ok = _at_least(actual, threshold) if higher else _at_most(actual, threshold)
    if ok:
        detail = f"{metric} is {_fmt(actual)}; {where}) has {_fmt(reference)}"
        if allowed or gate.tolerance_pct:
            detail += f", tolerance {explained}"
    else:
        detail = (
            f"{metric} is {_fmt(actual)}, worse than {where}: {_fmt(reference)}) "
            f"by {_fmt(abs(actual - reference))}, more than the tolerance {explained}"
        )
    return GateResult(description, metric, actual, required, ok, detail)


def _metric_checks(
    gate: GateConfig, metric: str, metrics: Mapping[str, float], baseline: ModelVersion | None,
    absent: str | None = None,
) -> list[GateResult]:
    """The checks of a metric gate on one key of `metrics` (the metric, or one slice of it)."""
    problem = _missing(metric, metrics)
    actual = None if problem else _number(metrics[metric])
    results: list[GateResult] = []
    if gate.min is not None:
        results.append(_bound(metric, actual, problem, ">=", gate.min))
    if gate.max is not None:
        results.append(_bound(metric, actual, problem, "<=", gate.max))
    if gate.no_worse_than is not None:
        reference = baseline.metrics.get(metric) if baseline is not None else None
        if absent is None and baseline is not None:
            absent = f"{gate.no_worse_than} (v{baseline.version}) has no '{metric}' metric to compare with: passes"
        results.append(_no_worse(gate, metric, actual, problem, baseline, reference, absent or ""))
    return results


def _slice_checks(
    gate: GateConfig, metrics: Mapping[str, float], baseline: ModelVersion | None
) -> list[GateResult]:
    """The checks of a `slices: true` gate, slice by slice; no slices at all is a failure."""
    assert gate.metric is not None, "config validation requires a metric"
    candidate = slice_values(metrics, gate.metric)
    if not candidate:
        logged = sorted({key.split(".")[1] for key in metrics if key.startswith(f"{SLICES}.") and key.count(".") >= 2})
        why = f"slices {', '.join(logged)} have no '{gate.metric}'" if logged else "no slices were logged"
        wanted = " and ".join(_wanted(gate))
        return [GateResult(
            f"{gate.metric} in every slice {wanted}", gate.metric, None, wanted, False,
            f"no '{SLICES}.<name>.{gate.metric}' metrics to check ({why}); log them with "
            f"log_metrics(..., slices={{name: {{'{gate.metric}': value}}}})",
        )]
    reference = slice_values(baseline.metrics, gate.metric) if baseline is not None else {}
    results: list[GateResult] = []
    if baseline is not None and gate.no_worse_than is not None:
        for name in sorted(set(reference) - set(candidate)):  # a slice must not vanish to hide a regression
            results.append(GateResult(
                f"{gate.metric} in slice '{name}' no worse than {gate.no_worse_than}",
                f"{SLICES}.{name}.{gate.metric}", None, f"no worse than {gate.no_worse_than}", False,
                f"slice '{name}' is in {gate.no_worse_than} (v{baseline.version}) but the candidate did not log it",
            ))
    for name in sorted(candidate):
        absent = None
        if baseline is not None and name not in reference:
            absent = f"slice '{name}' is not in {gate.no_worse_than} (v{baseline.version}): passes"
        results += _metric_checks(gate, f"{SLICES}.{name}.{gate.metric}", metrics, baseline, absent)
    return results


def _wanted(gate: GateConfig) -> list[str]:
    wanted = [f">= {_fmt(gate.min)}"] if gate.min is not None else []
    wanted += [f"<= {_fmt(gate.max)}"] if gate.max is not None else []
    return wanted + ([f"no worse than {gate.no_worse_than}"] if gate.no_worse_than is not None else [])


# -- measured on the model --------------------------------------------------------------------


def measure_latency_ms(model_path: Path, *, repeats: int = 200) -> float:
    """The p99 time, in milliseconds, of `predict` on one row of the model's own sample input
    (kept by `save_model`; a row built from the signature for older model directories).

    The model at `model_path` is loaded (trusted: your own training output, or
    a verified materialised version) and warmed up first; the p99 is the
    nearest-rank 99th percentile of `repeats` timed calls.
    """
    from conveyor.model import load_model
    from conveyor.signature import sample_rows, to_array

    if repeats < 1:
        raise ValueError(f"repeats must be 1 or more, not {repeats}")
    model = load_model(model_path)
    stored = model.metadata.sample
    row = to_array(model.signature, stored[:1]) if stored else sample_rows(model.signature, n=1)
    timings: list[int] = []
    try:
        for _ in range(_WARMUP_CALLS):
            model.predict(row)
        for _ in range(repeats):
            start = time.perf_counter_ns()
            model.predict(row)
            timings.append(time.perf_counter_ns() - start)
    except ConveyorError:
        raise
    except Exception as exc:  # the model's own code failed; say so instead of a traceback
        raise ConveyorError(
            f"the model at {model_path} raised {type(exc).__name__} ({exc}) predicting one row of its "
            "sample input, so its latency cannot be measured"
        ) from exc
    timings.sort()
    return timings[math.ceil(0.99 * repeats) - 1] / 1e6


def model_size_mb(model_path: Path) -> float:
    """The size of the model at `model_path`: the sum of its files' sizes, in MB (10^6 bytes)."""
    if model_path.is_file():
        return model_path.stat().st_size / 1e6
    if not model_path.is_dir():
        raise ConveyorError(f"model path {model_path} does not exist, so its size cannot be measured")
    return sum(path.stat().st_size for path in model_path.rglob("*") if path.is_file()) / 1e6


class _Measurements:
    """Latency and size of one model, each measured at most once, on first use."""

    def __init__(self, model_path: Path | None) -> None:
        self.model_path = model_path
        self._done: dict[str, tuple[float | None, str]] = {}

    def get(self, metric: str) -> tuple[float | None, str]:
        """(value, "") once measured, or (None, why not)."""
        if metric not in self._done:
            if self.model_path is None:
                self._done[metric] = (None, "")
            else:
                try:
                    measure = measure_latency_ms if metric == LATENCY_METRIC else model_size_mb
                    self._done[metric] = (measure(self.model_path), "")
                except ConveyorError as exc:
                    self._done[metric] = (None, str(exc))
        return self._done[metric]


def _measured(metric: str, bound: float, measurements: _Measurements) -> GateResult:
    what, unit = ("p99 latency", "ms") if metric == LATENCY_METRIC else ("model size", "MB")
    gate, required = f"{what} <= {_fmt(bound)} {unit}", f"<= {_fmt(bound)}"
    actual, problem = measurements.get(metric)
    if actual is None:
        if not problem:  # unknown is not good enough: the gate exists to be sure
            return GateResult(gate, metric, None, required, False,
                              f"not measured: the model's artifact is not in this machine's store, so its {what} "
                              "cannot be measured here; pull it, or promote with --force")
        return GateResult(gate, metric, None, required, False, f"could not measure the {what}: {problem}")
    ok = _at_most(actual, bound)
    detail = f"{what} is {_fmt(actual)} {unit}, " + (
        f"at most {_fmt(bound)} {unit}" if ok else f"above the maximum {_fmt(bound)} {unit}"
    )
    if metric == LATENCY_METRIC:
        detail += " (one-row predict)"
    return GateResult(gate, metric, actual, required, ok, detail)


# -- evaluation ---------------------------------------------------------------------------------


def baseline_aliases(gates: Sequence[GateConfig]) -> list[str]:
    """The aliases the gates compare against: the keys `evaluate` needs in `baselines`."""
    return sorted({gate.no_worse_than for gate in gates if gate.no_worse_than is not None})


def evaluate(
    gates: Sequence[GateConfig],
    metrics: Mapping[str, float],
    baselines: Mapping[str, ModelVersion | None],
    *,
    model_path: Path | None = None,
) -> list[GateResult]:
    """Check the candidate against every gate; one result per check (and per slice), in order.

    `baselines` maps each alias in `baseline_aliases(gates)` to the version it
    points to, or None when the alias does not exist yet (that comparison passes).
    A metric the candidate did not log fails every check that needs it.
    `model_path` is the candidate's model directory, measured (once) for
    `max_latency_ms` and `max_size_mb` gates; None fails them as "not measured".
    """
    missing = [alias for alias in baseline_aliases(gates) if alias not in baselines]
    if missing:
        raise ValueError(
            f"baselines has no entry for alias(es) {', '.join(missing)}; "
            "map each alias in baseline_aliases(gates) to its version, or None if it does not exist"
        )
    measurements = _Measurements(model_path)
    results: list[GateResult] = []
    for gate in gates:
        if gate.max_latency_ms is not None:
            results.append(_measured(LATENCY_METRIC, gate.max_latency_ms, measurements))
        if gate.max_size_mb is not None:
            results.append(_measured(SIZE_METRIC, gate.max_size_mb, measurements))
        if gate.metric is None:
            continue
        baseline = baselines[gate.no_worse_than] if gate.no_worse_than is not None else None
        if gate.slices:
            results += _slice_checks(gate, metrics, baseline)
        else:
            results += _metric_checks(gate, gate.metric, metrics, baseline)
    return results


def check_version(
    version: ModelVersion,
    gates: Sequence[GateConfig],
    baselines: Mapping[str, ModelVersion | None],
    model_path: Path | None,
) -> list[GateResult]:
    """Evaluate the gates on a registered `version`'s stored metrics (`conveyor gates`, `models promote`).

    `baselines` is as for `evaluate`; `model_path` is the version's materialised
    model directory, or None when this machine does not have it (latency and
    size gates then fail as "not measured").
    """
    return evaluate(gates, version.metrics, baselines, model_path=model_path)


def passed(results: Sequence[GateResult]) -> bool:
    """True when every check passed (and so when there were no gates)."""
    return all(result.passed for result in results)
