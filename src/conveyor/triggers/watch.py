"""`conveyor watch`: run the line once for each new commit on a branch, in order, and on a schedule.

Each commit is checked out in the watcher's own git worktree
(`.conveyor/watch/worktree`), so the user's checkout is never touched; that
worktree's `.conveyor` is a link to the project's, so runs, cache and registry
are the project's own and its lock keeps one run at a time. The last commit
handled is written atomically after each run: a restarted watcher goes on
from there and runs nothing twice.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from conveyor import defaults
from conveyor.exceptions import ConveyorError
from conveyor.store import atomic_write_text

SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
"""A full commit id (SHA-1 or SHA-256): the only form of a commit that reaches git from outside."""

RUN_WAIT_S = 3600
"""How long a watcher's run waits for another run of the project to finish."""


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ConveyorError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass
class Outcome:
    commit: str
    trigger: str
    exit_code: int


@dataclass
class Watcher:
    """Watches `branch` (of `remote`, fetched each time, or the local branch) of the project at `root`."""

    root: Path
    branch: str = defaults.BRANCH
    remote: str | None = None
    schedule: str | None = None
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "conveyor"])
    env: Mapping[str, str] = field(default_factory=dict)  # the environment runs get (the caller's, resolved at the edge)
    on_outcome: Callable[[Outcome], None] = lambda _outcome: None
    _next_schedule: float | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / defaults.STATE_DIR / "watch"

    @property
    def state_path(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.remote or 'local'}-{self.branch}")
        return self.state_dir / f"{safe}.json"

    @property
    def top(self) -> Path:
        return Path(_git(self.root, "rev-parse", "--show-toplevel"))

    def last_done(self) -> str | None:
        try:
            last = json.loads(self.state_path.read_text(encoding="utf-8")).get("last")
        except (OSError, ValueError, AttributeError):
            return None  # no state, or a corrupt one: start from the tip
        return last if isinstance(last, str) and SHA.fullmatch(last) else None

    def _mark_done(self, commit: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path, json.dumps({"last": commit, "at": datetime.now(timezone.utc).isoformat()}))

    def tip(self) -> str:
        """The branch's newest commit, after fetching it when watching a remote."""
        if self.remote:
            _git(self.root, "fetch", "--quiet", self.remote,
                 f"+refs/heads/{self.branch}:refs/remotes/{self.remote}/{self.branch}")
            ref = f"refs/remotes/{self.remote}/{self.branch}"
        else:
            ref = f"refs/heads/{self.branch}"
        tip = _git(self.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if not SHA.fullmatch(tip):
            raise ConveyorError(f"branch '{self.branch}' not found ({ref}); check --branch and --remote")
        return tip

    def pending(self, tip: str) -> list[str]:
        """Commits after the last one done, oldest first (the tip alone on a first start or after a force-push)."""
        last = self.last_done()
        if last == tip:
            return []
        if last is not None and subprocess.run(["git", "merge-base", "--is-ancestor", last, tip], cwd=self.root,
                                               capture_output=True, check=False).returncode == 0:
            return _git(self.root, "rev-list", "--reverse", "--first-parent", f"{last}..{tip}").split()
        return [tip]

    def _worktree(self) -> Path:
        """The watcher's checkout: created once, its `.conveyor` a link to the project's."""
        path = self.state_dir / "worktree"
        if not (path / ".git").exists():
            _git(self.root, "worktree", "prune")
            _git(self.root, "worktree", "add", "--quiet", "--detach", str(path), "HEAD")
        return path

    def run_commit(self, commit: str, trigger: str = "watch", force: bool = False) -> Outcome:
        """Check out `commit` in the watcher's worktree and run the line there (the project's state, lock, registry)."""
        if not SHA.fullmatch(commit):
            raise ConveyorError(f"'{commit}' is not a full commit id")
        worktree = self._worktree()
        _git(worktree, "checkout", "--quiet", "--force", "--detach", commit)
        _git(worktree, "clean", "-fdxq", "-e", defaults.STATE_DIR)  # last run's outs go; the cache restores them
        project = worktree / self.root.relative_to(self.top)
        state = project / defaults.STATE_DIR
        if not state.is_symlink():
            state.parent.mkdir(parents=True, exist_ok=True)
            state.symlink_to(self.root / defaults.STATE_DIR, target_is_directory=True)
        env = {**self.env, "CONVEYOR_TRIGGER": trigger, "CONVEYOR_BRANCH": self.branch}
        argv = [*self.command, "run", "--wait", str(RUN_WAIT_S), *(["--force"] if force else [])]
        done = subprocess.run(argv, cwd=project, env=env, check=False)
        return Outcome(commit, trigger, done.returncode)

    def schedule_due(self, now: float) -> bool:
        """Whether a scheduled retrain is due at `now`; the first call only sets the next time."""
        if self.schedule is None:
            return False
        from croniter import croniter

        if self._next_schedule is None:
            self._next_schedule = float(croniter(self.schedule, now).get_next(float))
            return False
        if now < self._next_schedule:
            return False
        self._next_schedule = float(croniter(self.schedule, now).get_next(float))
        return True

    def tick(self, now: float | None = None) -> list[Outcome]:
        """One look at the branch: run each new commit in order, then a scheduled retrain if one is due."""
        outcomes = []
        tip = self.tip()
        for commit in self.pending(tip):
            outcome = self.run_commit(commit)
            self._mark_done(commit)
            self.on_outcome(outcome)
            outcomes.append(outcome)
        if self.schedule_due(time.time() if now is None else now):
            outcome = self.run_commit(tip, trigger="schedule", force=True)
            self.on_outcome(outcome)
            outcomes.append(outcome)
        return outcomes

    def loop(self, interval_s: float, stop: threading.Event) -> None:
        """Tick every `interval_s` seconds until `stop` is set; a failed fetch is retried next time."""
        while not stop.is_set():
            try:
                self.tick()
            except ConveyorError as exc:
                print(f"watch: {exc}", file=sys.stderr, flush=True)
            stop.wait(interval_s)


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a watcher's runs inherit: the caller's environment without CI branch variables
    (the watcher names the branch itself)."""
    return {k: v for k, v in environ.items()
            if k not in ("CI_COMMIT_BRANCH", "BRANCH_NAME", "GITHUB_REF_NAME", "GITHUB_REF_TYPE", "CONVEYOR_TRIGGER")}

