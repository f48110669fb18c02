"""`conveyor hooks`: a commit starts the line in the background; user hooks are kept and restored byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import commit_all, git
from conveyor.processes import alive

RUN_TIMEOUT_S = 180.0
"""Generous: the background run shares two cores with the rest of the suite."""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


def _runs(root: Path) -> list[dict[str, object]]:
    runs = root / ".conveyor" / "runs"
    if not runs.is_dir():
        return []
    records = []
    for path in sorted(runs.glob("*/run.json")):
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:
            continue  # being rewritten this instant
    return records


@pytest.fixture
def started_runs(tmp_repo: Path) -> Iterator[Path]:
    """The repo; afterwards, any run a hook started that is still going is stopped."""
    yield tmp_repo
    for record in _runs(tmp_repo):
        pid = int(str(record["pid"]))
        if record["status"] == "running" and alive(pid):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def iris(tmp_path: Path) -> Iterator[Path]:
    """The iris example; afterwards, any run a hook started that is still going is stopped."""
    from conveyor.scaffold import init_project

    root = tmp_path / "iris"
    init_project(root, "iris")
    yield root
    _cli(root, "deployments", "stop")
    for record in _runs(root):
        pid = int(str(record["pid"]))
        if record["status"] == "running" and alive(pid):
            os.kill(pid, signal.SIGTERM)


@pytest.mark.slow
def test_a_commit_starts_the_line_in_the_background_with_trigger_hook(iris: Path) -> None:
    root = iris
    done = _cli(root, "hooks", "install")
    assert done.returncode == 0, done.stderr
    assert "installed" in done.stdout
    config = root / "conveyor.yaml"  # release branch elsewhere: the run registers, and starts no server
    config.write_text(config.read_text().replace("  branch: main\n", "  branch: release\n"))
    head = commit_all(root, "release from the release branch")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        finished = [r for r in _runs(root) if r["status"] != "running"]
        if finished:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no run finished within {RUN_TIMEOUT_S} s of the commit")
    (record,) = finished
    assert (record["commit"], record["trigger"], record["status"]) == (head, "hook", "passed")
    logs = list((root / ".conveyor" / "hooks").glob("post-commit-*.log"))
    assert len(logs) == 1 and "conveyor run" in logs[0].read_text()


def test_install_is_idempotent_and_keeps_the_users_hook(tmp_repo: Path) -> None:
    hooks = tmp_repo / ".git" / "hooks"
    user_hook = hooks / "post-commit"
    original = b"#!/bin/sh\r\necho 'user hook ran' > user-hook.txt\r\n"
    user_hook.write_bytes(original)
    user_hook.chmod(0o750)
    first = _cli(tmp_repo, "hooks", "install")
    assert first.returncode == 0 and "kept your hook" in first.stdout
    ours = user_hook.read_text()
    second = _cli(tmp_repo, "hooks", "install")
    assert second.returncode == 0 and "updated" in second.stdout
    assert user_hook.read_text() == ours
    assert (hooks / "post-commit.conveyor-user").read_bytes() == original  # not overwritten by ours
    assert _cli(tmp_repo, "hooks", "uninstall").returncode == 0
    assert user_hook.read_bytes() == original
    assert user_hook.stat().st_mode & 0o777 == 0o750
    assert not (hooks / "post-commit.conveyor-user").exists()
    again = _cli(tmp_repo, "hooks", "uninstall")  # the user's hook is not ours to remove
    assert "left alone" in again.stdout and user_hook.read_bytes() == original


@pytest.mark.slow
def test_the_users_hook_runs_first_and_its_failure_stops_the_commit(started_runs: Path) -> None:
    root = started_runs
    hook = root / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho \"user pre-push $1\" > user-hook.txt\nexit 3\n")
    hook.chmod(0o755)
    assert _cli(root, "hooks", "install", "--pre-push").returncode == 0
    remote = root.parent / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(root, "remote", "add", "origin", str(remote))
    pushed = subprocess.run(["git", "push", "-q", "origin", "main"], cwd=root, capture_output=True, text=True,
                            check=False)
    assert pushed.returncode != 0  # the user's hook said no: the push, and the line, do not happen
    assert (root / "user-hook.txt").read_text() == "user pre-push origin\n"
    assert not (root / ".conveyor" / "hooks").exists()


def test_core_hooks_path_is_respected_and_a_foreign_hook_left_alone(tmp_repo: Path) -> None:
    git(tmp_repo, "config", "core.hooksPath", "githooks")
    assert _cli(tmp_repo, "hooks", "install").returncode == 0
    assert "conveyor-hook" in (tmp_repo / "githooks" / "post-commit").read_text()
    assert not (tmp_repo / ".git" / "hooks" / "post-commit").exists()
    assert _cli(tmp_repo, "hooks", "uninstall").returncode == 0
    assert not (tmp_repo / "githooks" / "post-commit").exists()
    foreign = tmp_repo / "githooks" / "post-commit"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    done = _cli(tmp_repo, "hooks", "uninstall")
    assert "left alone" in done.stdout and foreign.read_text() == "#!/bin/sh\nexit 0\n"
