"""Gather what a report shows: the run's steps and gates, and the candidate against production."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor import defaults
from conveyor.lineage import data_digests
from conveyor.runs import Run, RunStore

if TYPE_CHECKING:
    from conveyor.registry import ModelVersion, Registry

HISTORY_VERSIONS = 10
"""Versions shown in the metric-history plot."""


@dataclass(frozen=True)
class MetricRow:
    name: str
    candidate: float | None
    production: float | None

    @property
    def delta(self) -> float | None:
        if self.candidate is None or self.production is None:
            return None
        return self.candidate - self.production


@dataclass(frozen=True)
class Change:
    key: str
    production: Any
    candidate: Any


@dataclass
class ReportData:
    """Everything a report shows; `candidate`/`production` are None when the run registered nothing
    or no production version existed before it."""

    project: str
    run: Run
    gates: list[dict[str, Any]]
    candidate: str | None = None
    production: str | None = None
    metrics: list[MetricRow] = field(default_factory=list)
    params: list[Change] = field(default_factory=list)
    data: list[Change] = field(default_factory=list)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (version, metrics), oldest first
    confusion_matrix: Path | None = None


def _baseline(registry: Registry, run: Run, name: str) -> ModelVersion | None:
    """Production as the run's gates saw it: the version this run's promotion moved away from,
    else what production points to now (the run did not promote)."""
    from conveyor.exceptions import ModelNotFound

    for move in registry.alias_history(name, defaults.PRODUCTION_ALIAS):  # newest first
        if move.run_id == run.id:
            return registry.get(name, move.from_version) if move.from_version is not None else None
    try:
        return registry.resolve(f"{name}@{defaults.PRODUCTION_ALIAS}")
    except ModelNotFound:
        return None


def _changes(production: dict[str, Any], candidate: dict[str, Any]) -> list[Change]:
    keys = sorted(set(production) | set(candidate))
    return [Change(k, production.get(k), candidate.get(k)) for k in keys if production.get(k) != candidate.get(k)]


def build(root: Path, project: str, runs: RunStore, run_id: str | None, registry: Registry | None,
          confusion_matrix: Path | None = None) -> ReportData:
    """The report of run `run_id` (a prefix; None: the latest run).

    `registry` may be None when the run registered no model; `confusion_matrix`
    is the project's `confusion_matrix.json`, drawn when it exists.
    """
    run = runs.latest(run_id or "")
    gates_step = run.step("gates")
    report = ReportData(project=project, run=run, gates=list(gates_step.data.get("results", [])) if gates_step else [])
    if confusion_matrix is not None and confusion_matrix.is_file():
        report.confusion_matrix = confusion_matrix
    if registry is None or not run.model:
        return report
    name = str(run.model["name"])
    candidate = registry.get(name, int(run.model["version"]))
    production = _baseline(registry, run, name)
    report.candidate = candidate.ref
    report.production = production.ref if production is not None else None
    base_metrics = production.metrics if production is not None else {}
    report.metrics = [MetricRow(k, candidate.metrics.get(k), base_metrics.get(k))
                      for k in sorted(set(candidate.metrics) | set(base_metrics))]
    if production is not None:
        report.params = _changes(production.params, candidate.params)
        report.data = _changes(data_digests(production), data_digests(candidate))
    versions = [v for v in registry.versions(name) if v.version <= candidate.version]
    report.history = [(v.version, v.metrics) for v in sorted(versions, key=lambda v: v.version)[-HISTORY_VERSIONS:]]
    return report
