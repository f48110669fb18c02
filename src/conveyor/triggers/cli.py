"""`conveyor hooks install|uninstall` and `conveyor watch`: run the line without a CI server."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from conveyor.triggers.hooks import HookName


@click.group("hooks")
def hooks() -> None:
    """Run the line from git hooks, in the background, on every commit (or push).

    \b
    Examples:
      conveyor hooks install
      conveyor hooks install --pre-push
      conveyor hooks uninstall
    """


def _name(pre_push: bool) -> HookName:
    return "pre-push" if pre_push else "post-commit"


@hooks.command("install")
@click.option("--pre-push", is_flag=True, help="Run on `git push` instead of after each commit.")
def hooks_install(pre_push: bool) -> None:
    """Install the hook; an existing hook of yours is kept and runs first.

    \b
    Example:
      conveyor hooks install && git commit -m "new features"   # the line starts in the background
    """
    from conveyor.project import Project
    from conveyor.triggers.hooks import LOG_DIR, install

    project = Project.find()
    change = install(project.root, _name(pre_push), [sys.executable, "-m", "conveyor"])
    click.echo(f"  {click.style(change.action, fg='green')} {change.hook}")
    if change.kept_user_hook is not None:
        click.echo(f"  kept your hook as {change.kept_user_hook}; it runs first")
    click.echo(f"  runs log to {LOG_DIR}/; `conveyor runs list` shows them (trigger: hook)")


@hooks.command("uninstall")
@click.option("--pre-push", is_flag=True, help="Remove the pre-push hook instead of post-commit.")
def hooks_uninstall(pre_push: bool) -> None:
    """Remove Conveyor's hook and put back the one you had.

    \b
    Example:
      conveyor hooks uninstall
    """
    from conveyor.project import Project
    from conveyor.triggers.hooks import uninstall

    change = uninstall(Project.find().root, _name(pre_push))
    words = {"removed": "removed", "restored": "removed; your own hook is back at", "absent": "no hook at",
             "foreign": "left alone (not Conveyor's):"}
    click.echo(f"  {words[change.action]} {change.hook}")
