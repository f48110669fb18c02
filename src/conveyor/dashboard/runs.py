"""The run store as the dashboard reads it: a page of runs, one run's logs, gates and plots.

A page costs one directory listing and one `run.json` read per run shown, so
the runs page of a store of 10,000 runs reads 50 small files, not 10,000.
Nothing here writes (`RunStore.load` only reads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.dashboard.reader import Page
from conveyor.exceptions import ConveyorError, RunNotFound
from conveyor.runs import Run, RunStore

PLOT_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
"""Files in a run's directory shown as its plots, by suffix, with the type they are served as."""

LOG_LIMIT_BYTES = 256 * 1024
"""Most of a step's log a run page shows: the end of it, where a failure is."""


@dataclass(frozen=True)
class StepLog:
    name: str
    text: str
    truncated: bool


def _ids(store: RunStore) -> list[str]:
    """Run ids, newest first, from one listing (ids sort by their UTC timestamp)."""
    try:
        with os.scandir(store.root) as entries:
            names = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    except FileNotFoundError:
        return []
    return sorted(names, reverse=True)


def page_of_runs(store: RunStore, page: int, size: int) -> tuple[list[Run], Page, list[str]]:
    """One page of runs, newest first, and the ids on it whose record cannot be read."""
    ids = _ids(store)
    where = Page(max(1, page), size, len(ids))
    runs: list[Run] = []
    unreadable: list[str] = []
    for run_id in ids[where.offset:where.offset + size]:
        try:
            runs.append(store.load(run_id))
        except ConveyorError:
            unreadable.append(run_id)
    return runs, where, unreadable


def load_run(store: RunStore, run_id: str) -> Run:
    """One run by its exact id; `RunNotFound` for anything else."""
    if not run_id or run_id.startswith(".") or "/" in run_id or "\\" in run_id:
        raise RunNotFound(run_id)
    return store.load(run_id)


def step_logs(store: RunStore, run: Run) -> dict[str, StepLog]:
    """The end of each step's log, by step name (steps without a log are left out)."""
    logs: dict[str, StepLog] = {}
    for step in run.steps:
        if not step.log or "/" in step.log:
            continue
        path = store.run_dir(run.id) / step.log
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                handle.seek(max(0, size - LOG_LIMIT_BYTES))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        logs[step.name] = StepLog(step.name, text, size > LOG_LIMIT_BYTES)
    return logs


def gate_results(run: Run) -> list[dict[str, Any]]:
    """The gate table the run's gates step recorded (empty when it did not get there)."""
    step = run.step("gates")
    results = step.data.get("results", []) if step is not None else []
    return [r for r in results if isinstance(r, dict)]


def plots(store: RunStore, run: Run) -> list[str]:
    """Names of the plot files (PNG, SVG) in the run's directory, sorted."""
    directory = store.run_dir(run.id)
    try:
        return sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PLOT_TYPES and p.is_file())
    except OSError:
        return []


def plot_path(store: RunStore, run: Run, name: str) -> Path:
    """The file of one of the run's plots; `RunNotFound` for a name that is not one of them."""
    if name not in plots(store, run):
        raise RunNotFound(f"{run.id}/{name}")
    return store.run_dir(run.id) / name
