"""`conveyor watch`: each new commit runs once, in order, in the watcher's own worktree; restarts skip what is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import commit_all, git
from conveyor.triggers.watch import Watcher, environment

pytestmark = pytest.mark.slow


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=600)


def _runs(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((root / ".conveyor" / "runs").glob("*/run.json"))]


@pytest.fixture
def iris(tmp_path: Path) -> Iterator[Path]:
    """The iris example, releasing from another branch so runs on main register and start no server."""
    from conveyor.scaffold import init_project

    root = tmp_path / "iris"
    init_project(root, "iris")
    config = root / "conveyor.yaml"
    config.write_text(config.read_text().replace("  branch: main\n", "  branch: release\n"))
    commit_all(root, "release from the release branch")
    yield root
    subprocess.run([sys.executable, "-m", "conveyor", "deployments", "stop"], cwd=root, capture_output=True,
                   check=False, timeout=120)  # none should have started; never leave one behind


def test_each_new_commit_runs_once_in_order_and_a_restart_skips_what_is_done(iris: Path) -> None:
    first = _cli(iris, "watch", "--branch", "main", "--once")
    assert first.returncode == 0, first.stdout + first.stderr
    tip = git(iris, "rev-parse", "HEAD")
    assert [(r["commit"], r["trigger"], r["branch"]) for r in _runs(iris)] == [(tip, "watch", "main")]

    readme = iris / "README.md"
    commits = []
    for n in (1, 2):
        readme.write_text(readme.read_text() + f"\nchange {n}\n")
        commits.append(commit_all(iris, f"change {n}"))
    (iris / "notes.txt").write_text("uncommitted work in the user's checkout\n")
    second = _cli(iris, "watch", "--branch", "main", "--once")
    assert second.returncode == 0, second.stdout + second.stderr
    assert [r["commit"] for r in _runs(iris)] == [tip, *commits]  # in commit order, each once
    assert all(r["status"] == "passed" for r in _runs(iris))

    again = _cli(iris, "watch", "--branch", "main", "--once")  # a restarted watcher
    assert "nothing new on main" in again.stdout
    assert len(_runs(iris)) == 3
    assert git(iris, "rev-parse", "HEAD") == commits[-1]  # the user's checkout was never touched
    assert (iris / "notes.txt").read_text() == "uncommitted work in the user's checkout\n"
    assert git(iris, "status", "--porcelain") == "?? notes.txt"


def test_a_remote_branch_is_fetched_and_a_schedule_retrains(iris: Path, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(iris), str(upstream)], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True)
    watcher = Watcher(clone, branch="main", remote="origin", schedule="0 3 * * *", env=environment(os.environ))
    assert [o.trigger for o in watcher.tick(now=1_000_000.0)] == ["watch"]
    readme = iris / "README.md"
    readme.write_text(readme.read_text() + "\npushed later\n")
    pushed = commit_all(iris, "pushed later")
    git(iris, "push", "-q", str(upstream), "main")
    next_retrain = 1_000_000.0 + 24 * 3600
    outcomes = watcher.tick(now=next_retrain)
    assert [(o.commit, o.trigger, o.exit_code) for o in outcomes] == [(pushed, "watch", 0), (pushed, "schedule", 0)]
    records = _runs(clone)
    assert [r["trigger"] for r in records] == ["watch", "watch", "schedule"]
    assert git(clone, "rev-parse", "HEAD") != pushed  # the clone's own checkout stayed where it was
