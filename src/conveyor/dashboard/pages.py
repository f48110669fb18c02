"""What each dashboard page shows, as JSON-ready data: the `/api/…` twin is this data as it is,
the HTML page is this data through a template. Keeping them one function each means a script
and a person always see the same thing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor import defaults
from conveyor.dashboard import runs as run_pages
from conveyor.dashboard.live import Scrapes, live_servers
from conveyor.dashboard.reader import RegistryReader
from conveyor.lineage import data_digests, diff, lineage
from conveyor.project import Project
from conveyor.registry import ModelVersion
from conveyor.runs import Run, RunStore
from conveyor.store import ArtifactStore

PAGE_SIZE = 50
"""Runs or versions on one page."""

HISTORY_LIMIT = 100
"""Alias moves shown per model on the deployments page (newest first)."""


class _ReadOnlyStore(ArtifactStore):
    """The artifact store for reading sizes; a corrupt object is reported, never removed, from here."""

    def discard(self, digest: str) -> None:
        return None


@dataclass
class Sources:
    """Everything the pages read, opened once per dashboard process."""

    project: Project
    registry: RegistryReader
    runs: RunStore
    scrapes: Scrapes


def run_summary(run: Run) -> dict[str, Any]:
    """A run as a row of the runs list: no step data, no logs."""
    return {
        "id": run.id, "commit": run.commit, "branch": run.branch, "dirty": run.dirty, "trigger": run.trigger,
        "status": run.status, "started_at": run.started_at, "duration_s": run.duration_s, "error": run.error,
        "model": run.model,
        "steps": [{"name": s.name, "kind": s.kind, "status": s.status, "duration_s": s.duration_s,
                   "summary": s.summary} for s in run.steps],
    }


def runs_page(src: Sources, page: int) -> dict[str, Any]:
    found, where, unreadable = run_pages.page_of_runs(src.runs, page, PAGE_SIZE)
    return {"runs": [run_summary(run) for run in found], "page": where.as_dict(), "unreadable": unreadable}


def run_page(src: Sources, run_id: str) -> dict[str, Any]:
    run = run_pages.load_run(src.runs, run_id)
    logs = run_pages.step_logs(src.runs, run)
    return {
        "run": {**run_summary(run), "steps": [{**asdict(s), "log_text": logs[s.name].text if s.name in logs else None,
                                                "log_truncated": s.name in logs and logs[s.name].truncated}
                                               for s in run.steps]},
        "gates": run_pages.gate_results(run),
        "plots": [{"name": name, "url": f"/runs/{run.id}/plots/{name}"} for name in run_pages.plots(src.runs, run)],
    }


def version_row(version: ModelVersion, aliases: dict[str, int]) -> dict[str, Any]:
    """A version as a row of a model's versions table."""
    return {
        "name": version.name, "version": version.version, "digest": version.digest, "flavor": version.flavor,
        "metrics": version.metrics, "created_at": version.created_at, "run_id": version.run_id,
        "commit": version.lineage.get("git", {}).get("commit"),
        "aliases": sorted(a for a, v in aliases.items() if v == version.version),
    }


def models_page(src: Sources) -> dict[str, Any]:
    return {"models": [asdict(m) for m in src.registry.models()]}


def model_page(src: Sources, name: str, page: int) -> dict[str, Any]:
    versions, where = src.registry.versions(name, page, PAGE_SIZE)
    aliases = src.registry.aliases(name)
    series = src.registry.metric_series(name)
    metrics = sorted({key for _, values in series for key in values})
    return {
        "name": name, "aliases": aliases, "page": where.as_dict(),
        "versions": [version_row(v, aliases) for v in versions],
        "metrics": metrics,
        "series": {metric: [[v, values[metric]] for v, values in series if metric in values] for metric in metrics},
        "production": aliases.get(defaults.PRODUCTION_ALIAS),
    }


def _deployed_here(src: Sources, version: ModelVersion) -> list[str]:
    return [f"{server.target} {server.url} ({server.ref})" for server in live_servers(src.project)
            if server.digest == version.digest]


def version_page(src: Sources, name: str, number: int, against: int | None) -> dict[str, Any]:
    version = src.registry.version(name, number)
    aliases = src.registry.aliases(name)
    held = sorted(a for a, v in aliases.items() if v == number)
    found = lineage(version, held, _deployed_here(src, version))
    compared = None
    if against is not None:
        other = src.registry.version(name, against)
        compared = diff(other, version, root=src.project.root,
                        store=_ReadOnlyStore(src.project.cache_dir)).as_dict()
    return {
        "version": {**version_row(version, aliases), "signature": version.signature, "params": version.params,
                    "gates": version.gates, "lineage_record": version.lineage, "data": data_digests(version)},
        "lineage": found.as_dict(),
        "against": against,
        "diff": compared,
    }


def deployments_page(src: Sources) -> dict[str, Any]:
    servers = live_servers(src.project)
    history = {name: [asdict(move) for move in src.registry.history(name, HISTORY_LIMIT)]
               for name in src.registry.names()}
    return {"deployments": [s.as_dict() for s in servers], "history": history,
            "numbers": [src.scrapes.scrape(s.url).as_dict() for s in servers if s.status == "ready"]}


def live_numbers(src: Sources) -> dict[str, Any]:
    """The numbers the deployments page refreshes: rate, error rate, p99 of each live server."""
    return {"numbers": [src.scrapes.scrape(s.url).as_dict() for s in live_servers(src.project)
                        if s.status == "ready"]}


def jsonable(value: Any) -> Any:
    """`json.dumps`'s default: times as ISO 8601, paths as strings."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
