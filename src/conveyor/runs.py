"""Run records: one pass of the line for one commit, its steps, logs and outcome.

A run is a directory under `.conveyor/runs/<id>/` holding `run.json`
(rewritten atomically after every step, so a crash leaves the last complete
state) and one log file per step. A run whose process died mid-way reads as
`interrupted`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError, RunNotFound
from conveyor.processes import alive
from conveyor.store import atomic_write_text

# Step statuses: ran, cached (nothing to do), restored (outs copied from cache),
# passed (gates), failed, skipped, running, interrupted.


@dataclass
class Step:
    name: str
    kind: str  # stage | tests | gates | register | promote | deploy
    status: str = "running"
    started_at: float = field(default_factory=time.time)
    duration_s: float | None = None
    exit_code: int | None = None
    summary: str = ""
    log: str | None = None  # file name inside the run directory
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    id: str
    commit: str | None
    branch: str | None
    dirty: bool
    trigger: str
    started_at: float
    pid: int
    status: str = "running"
    finished_at: float | None = None
    error: str | None = None
    model: dict[str, Any] | None = None  # {"name", "version", "digest", "new"}
    steps: list[Step] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _new_id() -> str:
    """A UTC timestamp to the millisecond (ids sort by time) and a random suffix."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


class RunStore:
    """Runs of one project, under `root` (normally `.conveyor/runs`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, *, commit: str | None, branch: str | None, dirty: bool, trigger: str) -> Run:
        run = Run(
            id=_new_id(), commit=commit, branch=branch, dirty=dirty, trigger=trigger,
            started_at=time.time(), pid=os.getpid(),
        )
        self.save(run)
        return run

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def log_path(self, run: Run, step_name: str) -> Path:
        safe = step_name.replace(":", "-").replace("/", "-")
        return self.run_dir(run.id) / f"{safe}.log"

    def save(self, run: Run) -> None:
        atomic_write_text(self.run_dir(run.id) / "run.json", json.dumps(run.as_dict(), indent=1))

    def load(self, run_id: str) -> Run:
        path = self.run_dir(run_id) / "run.json"
        if "/" in run_id or not path.is_file():
            raise RunNotFound(run_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            steps = [Step(**step) for step in data.pop("steps")]
            run = Run(**data, steps=steps)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConveyorError(f"the record of run {run_id} ({path}) is unreadable: {exc}") from None
        if run.status == "running" and not alive(run.pid):
            run.status = "interrupted"  # its process died without finishing the record
            for step in run.steps:
                if step.status == "running":
                    step.status = "interrupted"
        return run

    def latest(self, run_id_prefix: str = "") -> Run:
        """The newest run, or the one whose id starts with the given prefix."""
        ids = self.ids()
        matches = [i for i in ids if i.startswith(run_id_prefix)]
        if not matches:
            raise RunNotFound(run_id_prefix or "latest")
        return self.load(matches[0])

    def ids(self) -> list[str]:
        """Run ids, newest first (ids sort by their UTC timestamp)."""
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if (p / "run.json").is_file()), reverse=True)

    def recent(self, limit: int = 20) -> list[Run]:
        """The newest runs, newest first."""
        runs = []
        for run_id in self.ids()[:limit]:
            try:
                runs.append(self.load(run_id))
            except ConveyorError:
                continue  # an unreadable record: `runs show` names it, the list goes on
        return runs

    def log_tail(self, run: Run, step: Step, lines: int) -> list[str]:
        """The last lines of a step's log (none when it has no log)."""
        if not step.log:
            return []
        path = self.run_dir(run.id) / step.log
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]
