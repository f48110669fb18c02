"""What the line needs to know about the repository: commit, branch, dirty paths.

Plain `git` subprocesses with argument lists (never a shell); a lineage
record is only as good as these answers, so failures are errors, not guesses.
"""

from __future__ import annotations

import subprocess
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


def state(root: Path, ignore: tuple[str, ...] = ()) -> GitState:
    """Commit, branch and uncommitted paths of the repository at `root`.

    Paths equal to or under an entry of `ignore` (stage outs, `.conveyor/`) are
    products of the line, not changes to it, and do not make the tree dirty.
    """
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if head.returncode != 0:
        inside = _git(root, "rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0:
            raise ConveyorError(
                f"{root} is not a git repository; run `git init` and commit the project first"
            )
        raise ConveyorError("the repository has no commits yet; commit the project first")
    branch = _git(root, "symbolic-ref", "--short", "-q", "HEAD").stdout.strip() or None
    porcelain = _git(root, "status", "--porcelain", "-z", "--untracked-files=all")
    dirty = []
    entries = porcelain.stdout.split("\0")
    skip_next = False
    for entry in entries:
        if skip_next:
            skip_next = False
            continue
        if len(entry) < 4:
            continue
        if entry[0] in "RC":  # a rename is followed by its source path
            skip_next = True
        path = entry[3:]
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in ignore):
            dirty.append(path)
    return GitState(commit=head.stdout.strip(), branch=branch, dirty_paths=tuple(dirty))


def user(root: Path) -> str:
    """Who moves an alias: git's user.email, else the login name."""
    email = _git(root, "config", "user.email").stdout.strip()
    if email:
        return email
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
