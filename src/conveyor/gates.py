"""Gate evaluation: may this candidate be promoted?

Each gate in `conveyor.yaml` checks one metric against fixed bounds and/or
against the version an alias (usually `production`) points to. Evaluation is a
pure function of the gates, the candidate's metrics and those baselines, so the
line, `conveyor models diff` and tests all get the same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.config import GateConfig
    from conveyor.registry import ModelVersion

__all__ = ["GateResult", "baseline_aliases", "evaluate", "passed"]

_RELATIVE_SLACK = 1e-9
"""Floating-point slack at a boundary, so 0.1 + 0.2 counts as meeting `min: 0.3`."""


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
    gate: GateConfig, actual: float | None, problem: str | None, baseline: ModelVersion | None
) -> GateResult:
    metric, alias, tolerance = gate.metric, gate.no_worse_than or "", gate.tolerance
    if baseline is None:
        description = f"{metric} no worse than {alias}"
        if actual is None:
            return GateResult(description, metric, None, f"no worse than {alias}", False, problem or "")
        return GateResult(
            description, metric, actual, f"no worse than {alias}", True, f"no {alias} version yet: passes"
        )
    reference = _number(baseline.metrics.get(metric))
    where = f"{alias} (v{baseline.version}"
    if reference is None:
        description = f"{metric} no worse than {alias} (v{baseline.version})"
        if actual is None:
            return GateResult(description, metric, None, f"no worse than {alias}", False, problem or "")
        return GateResult(
            description, metric, actual, f"no worse than {alias}", True,
            f"{where}) has no '{metric}' metric to compare with: passes",
        )
    sign = "-" if gate.higher_is_better else "+"
    description = f"{metric} no worse than {where}: {_fmt(reference)})"
    if tolerance:
        description += f" {sign} {_fmt(tolerance)}"
    if gate.higher_is_better:
        threshold, op = reference - tolerance, ">="
    else:
        threshold, op = reference + tolerance, "<="
    required = f"{op} {_fmt(threshold)}"
    if actual is None:
        return GateResult(description, metric, None, required, False, problem or "")
    ok = _at_least(actual, threshold) if gate.higher_is_better else _at_most(actual, threshold)
    if ok:
        detail = f"{metric} is {_fmt(actual)}; {where}) has {_fmt(reference)}"
        if tolerance:
            detail += f", tolerance {_fmt(tolerance)}"
    else:
        detail = (
            f"{metric} is {_fmt(actual)}, worse than {where}: {_fmt(reference)}) "
            f"by {_fmt(abs(actual - reference))}, more than the tolerance {_fmt(tolerance)}"
        )
    return GateResult(description, metric, actual, required, ok, detail)


def baseline_aliases(gates: Sequence[GateConfig]) -> list[str]:
    """The aliases the gates compare against: the keys `evaluate` needs in `baselines`."""
    return sorted({gate.no_worse_than for gate in gates if gate.no_worse_than is not None})


def evaluate(
    gates: Sequence[GateConfig],
    metrics: Mapping[str, float],
    baselines: Mapping[str, ModelVersion | None],
) -> list[GateResult]:
    """Check the candidate's `metrics` against every gate; one result per check, in order.

    `baselines` maps each alias in `baseline_aliases(gates)` to the version it
    points to, or None when the alias does not exist yet (that comparison passes).
    A metric the candidate did not log fails every check that needs it.
    """
    missing = [alias for alias in baseline_aliases(gates) if alias not in baselines]
    if missing:
        raise ValueError(
            f"baselines has no entry for alias(es) {', '.join(missing)}; "
            "map each alias in baseline_aliases(gates) to its version, or None if it does not exist"
        )
    results: list[GateResult] = []
    for gate in gates:
        problem = _missing(gate.metric, metrics)
        actual = None if problem else _number(metrics[gate.metric])
        if gate.min is not None:
            results.append(_bound(gate.metric, actual, problem, ">=", gate.min))
        if gate.max is not None:
            results.append(_bound(gate.metric, actual, problem, "<=", gate.max))
        if gate.no_worse_than is not None:
            results.append(_no_worse(gate, actual, problem, baselines[gate.no_worse_than]))
    return results


def passed(results: Sequence[GateResult]) -> bool:
    """True when every check passed (and so when there were no gates)."""
    return all(result.passed for result in results)
