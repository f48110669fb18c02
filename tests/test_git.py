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
