"""What the line reads from git: commit, branch, and which changes make a tree dirty."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all, git

from conveyor import git as git_module
from conveyor.exceptions import ConveyorError


def test_clean_tree(tmp_repo: Path) -> None:
    state = git_module.state(tmp_repo)
    assert state.commit == git(tmp_repo, "rev-parse", "HEAD")
    assert state.branch == "main" and not state.dirty


def test_changes_make_it_dirty_but_products_do_not(tmp_repo: Path) -> None:
    (tmp_repo / "data.txt").write_text("4 5 6")
    (tmp_repo / "new file.txt").write_text("x")
    (tmp_repo / "out").mkdir()
    (tmp_repo / "out" / "model.bin").write_text("product")
    git(tmp_repo, "mv", "steps.py", "renamed.py")
    state = git_module.state(tmp_repo, ignore=("out/", ".conveyor"))
    assert sorted(state.dirty_paths) == ["data.txt", "new file.txt", "renamed.py"]


def test_detached_head_has_no_branch(tmp_repo: Path) -> None:
    git(tmp_repo, "checkout", "-q", "--detach")
    assert git_module.state(tmp_repo).branch is None


def test_project_in_a_subdirectory(tmp_path: Path) -> None:
    repo = tmp_path / "mono"
    (repo / "sub" / "model").mkdir(parents=True)
    (repo / "sub" / "train.py").write_text("")
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "monorepo")
    (repo / "sub" / "model" / "model.bin").write_text("product")
    state = git_module.state(repo / "sub", ignore=("model/",))
    assert not state.dirty
    (repo / "sub" / "train.py").write_text("changed")
    assert git_module.state(repo / "sub", ignore=("model/",)).dirty_paths == ("sub/train.py",)


def test_not_a_repository_and_no_commits(tmp_path: Path) -> None:
    with pytest.raises(ConveyorError, match="is not a git repository"):
        git_module.state(tmp_path)
    git(tmp_path, "init", "-q")
    with pytest.raises(ConveyorError, match="no commits yet"):
        git_module.state(tmp_path)


def test_ci_branch_comes_from_the_engines_variables() -> None:
    from conveyor.git import ci_branch

    assert ci_branch({"CI_COMMIT_BRANCH": "main"}) == "main"
    assert ci_branch({"BRANCH_NAME": "release"}) == "release"
    assert ci_branch({"GITHUB_REF_TYPE": "branch", "GITHUB_REF_NAME": "main"}) == "main"
    assert ci_branch({"GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1.0"}) is None  # a tag is not a branch
    assert ci_branch({"CI_COMMIT_BRANCH": " ", "HOME": "/root"}) is None


def test_a_detached_ci_checkout_takes_the_branch_the_engine_names(tmp_repo: Path) -> None:
    from conveyor.git import state

    head = git(tmp_repo, "rev-parse", "HEAD")
    assert state(tmp_repo, detached_branch="release").branch == "main"  # a checked-out branch wins
    git(tmp_repo, "checkout", "-q", "--detach", head)
    assert state(tmp_repo).branch is None
    detached = state(tmp_repo, detached_branch="main")
    assert (detached.branch, detached.commit) == ("main", head)


@pytest.mark.slow
def test_a_gitlab_run_on_a_detached_commit_records_and_promotes_on_its_branch(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from conveyor.scaffold import init_project

    tmp_repo = tmp_path / "iris"
    init_project(tmp_repo, "iris")
    git(tmp_repo, "checkout", "-q", "--detach", "HEAD")
    env = {**os.environ, "CI_COMMIT_BRANCH": "main", "CONVEYOR_TRIGGER": "ci"}
    done = subprocess.run([sys.executable, "-m", "conveyor", "run", "--no-deploy", "--json"], cwd=tmp_repo, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["branch"], record["trigger"], record["status"]) == ("main", "ci", "passed")
    promote = next(step for step in record["steps"] if step["name"] == "promote")
    assert promote["status"] == "ran", promote
