"""`conveyor hooks install|uninstall`: a git hook that starts the line in the background.

The hook is a small sh script that returns at once (git waits for hooks): it
starts `conveyor run --wait` detached, logging under `.conveyor/hooks/`. A hook
the user already had is moved aside, run first by ours, and put back byte for
byte on uninstall. `git rev-parse --git-path hooks` finds the directory, so
`core.hooksPath` is respected.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from conveyor import defaults
from conveyor.exceptions import ConveyorError

HookName = Literal["post-commit", "pre-push"]

MARKER = "# conveyor-hook: written by `conveyor hooks install`"
"""Second line of every hook Conveyor writes; how uninstall and re-install recognise it."""

USER_SUFFIX = ".conveyor-user"
"""The user's own hook is kept beside ours under this suffix, and run first."""

HOOK_WAIT_S = 3600
"""How long a hook-started run waits for another run of the project to finish (`run --wait`)."""

LOG_DIR = f"{defaults.STATE_DIR}/hooks"
"""Where hook-started runs write their output, one log per start."""


@dataclass(frozen=True)
class HookChange:
    hook: Path
    action: str  # installed | updated | removed | restored | absent | foreign
    kept_user_hook: Path | None = None


def hooks_dir(root: Path) -> Path:
    """The directory git runs hooks from (core.hooksPath, else .git/hooks) for the repository at `root`."""
    done = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=root, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise ConveyorError(f"{root} is not a git repository ({done.stderr.strip()}); hooks need one")
    return (root / done.stdout.strip()).resolve()


def script(root: Path, name: HookName, command: list[str]) -> str:
    """The hook's text: run the user's hook (if kept), then start `command run` detached and return."""
    user = f'"$(dirname "$0")/{name}{USER_SUFFIX}"'
    run = [*command, "run", "--wait", str(HOOK_WAIT_S)]
    return "\n".join([
        "#!/bin/sh",
        MARKER,
        f"# Starts the line for the new commit in the background; log in {LOG_DIR}/. "
        "Remove with `conveyor hooks uninstall`.",
        f"if [ -x {user} ]; then {user} \"$@\" || exit $?; fi",
        f"cd {shlex.quote(str(root))} || exit 0",
        f"mkdir -p {LOG_DIR}",
        f'log="{LOG_DIR}/{name}-$(date +%Y%m%d-%H%M%S)-$$.log"',
        f'CONVEYOR_TRIGGER=hook nohup {shlex.join(run)} >"$log" 2>&1 </dev/null &',
        "exit 0",
        "",
    ])


def _ours(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return MARKER.encode() in handle.read(4096)
    except OSError:
        return False


def install(root: Path, name: HookName, command: list[str]) -> HookChange:
    """Install (or refresh) the hook; an existing user hook is moved aside and kept running first.

    `command` is how the hook calls Conveyor, e.g. `[sys.executable, "-m", "conveyor"]`, so it
    works without the virtualenv on PATH.
    """
    directory = hooks_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / name
    saved = directory / f"{name}{USER_SUFFIX}"
    action = "installed"
    if hook.is_symlink() or hook.exists():
        if _ours(hook):
            action = "updated"
        elif saved.exists() or saved.is_symlink():
            raise ConveyorError(f"{hook} is not Conveyor's and {saved} exists already; "
                                "move one of them away and install again")
        else:
            os.replace(hook, saved)  # a rename keeps its bytes, mode and symlink-ness
    from conveyor.store import atomic_write_text

    atomic_write_text(hook, script(root, name, command))
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    kept = saved if saved.exists() or saved.is_symlink() else None
    return HookChange(hook, action, kept)


def uninstall(root: Path, name: HookName) -> HookChange:
    """Remove Conveyor's hook and put back the user's; a hook that is not ours is left alone."""
    directory = hooks_dir(root)
    hook = directory / name
    saved = directory / f"{name}{USER_SUFFIX}"
    if not (hook.exists() or hook.is_symlink()):
        return HookChange(hook, "absent")
    if not _ours(hook):
        return HookChange(hook, "foreign")
    if saved.exists() or saved.is_symlink():
        os.replace(saved, hook)
        return HookChange(hook, "restored", hook)
    hook.unlink()
    return HookChange(hook, "removed")
