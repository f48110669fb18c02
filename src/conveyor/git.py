"""What the line needs to know about the repository: commit, branch, dirty paths.

Plain `git` subprocesses with argument lists (never a shell); a lineage
record is only as good as these answers, so failures are errors, not guesses.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conveyor.exceptions import ConveyorError


@dataclass(frozen=True)
class GitState:
    commit: str
    branch: str | None
    dirty_paths: tuple[str, ...]

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_paths)

    def as_dict(self) -> dict[str, object]:
        return {"commit": self.commit, "branch": self.branch, "dirty": self.dirty}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ConveyorError("git is not installed; Conveyor records the commit behind every model") from None


def _status_path(entry: str) -> str | None:
    """The path of one `git status --porcelain=v2 -z` record (None for headers)."""
    kind = entry[:1]
    fields_before_path = {"1": 8, "2": 9, "u": 10, "?": 1, "!": 1}.get(kind)
    if fields_before_path is None:
        return None
    return entry.split(" ", fields_before_path)[-1]


def ci_branch(environ: Mapping[str, str]) -> str | None:
    """The branch a CI engine built, from its variables: GitLab and Jenkins check out a
    detached commit, so without this their runs could never promote.

    CONVEYOR_BRANCH is Conveyor's own (`conveyor watch` sets it for its
    worktree); GitLab sets CI_COMMIT_BRANCH (not for tags or merge requests),
    Jenkins' multibranch pipelines BRANCH_NAME, GitHub GITHUB_REF_NAME, which
    names a branch only when GITHUB_REF_TYPE is `branch`.
    """
    for name in ("CONVEYOR_BRANCH", "CI_COMMIT_BRANCH", "BRANCH_NAME"):
        if environ.get(name, "").strip():
            return environ[name].strip()
    if environ.get("GITHUB_REF_TYPE") == "branch" and environ.get("GITHUB_REF_NAME", "").strip():
        return environ["GITHUB_REF_NAME"].strip()
    return None


def state(root: Path, ignore: tuple[str, ...] = (), detached_branch: str | None = None) -> GitState:
    """Commit, branch and uncommitted paths of the repository at `root`, from one `git status`.

    Paths equal to or under an entry of `ignore` (stage outs, `.conveyor/`) are
    products of the line, not changes to it, and do not make the tree dirty.
    `detached_branch` (from `ci_branch`) names the branch of a detached checkout;
    a checked-out branch always wins over it.
    """
    status = _git(root, "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all")
    if status.returncode != 0:
        raise ConveyorError(
            f"{root} is not a git repository ({status.stderr.strip()}); "
            "run `git init` and commit the project first"
        )
    commit: str | None = None
    branch: str | None = None
    dirty: list[str] = []
    records = iter(status.stdout.split("\0"))
    # git reports paths from the repository's top; a project may live in a subdirectory of it.
    top = "" if (root / ".git").exists() else _git(root, "rev-parse", "--show-prefix").stdout.strip()
    ignore = tuple(top + p.rstrip("/") for p in ignore)
    prefixes = tuple(p + "/" for p in ignore)
    for record in records:
        if record.startswith("# branch.oid "):
            commit = record.removeprefix("# branch.oid ")
        elif record.startswith("# branch.head "):
            head = record.removeprefix("# branch.head ")
            branch = detached_branch if head == "(detached)" else head
        elif (path := _status_path(record)) is not None:
            if record.startswith("2 "):
                next(records, None)  # a rename's record is followed by its source path
            if not any(path == p or path.startswith(prefix) for p, prefix in zip(ignore, prefixes)):
                dirty.append(path)
    if commit is None or commit == "(initial)":
        raise ConveyorError("the repository has no commits yet; commit the project first")
    return GitState(commit=commit, branch=branch, dirty_paths=tuple(dirty))


def user(root: Path) -> str:
    """Who moves an alias: git's author identity (config or GIT_AUTHOR_* variables), else the login name."""
    ident = _git(root, "var", "GIT_AUTHOR_IDENT").stdout
    if "<" in ident and ">" in ident:
        email = ident[ident.index("<") + 1:ident.index(">")].strip()
        if email:
            return email
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
