"""`conveyor hooks install|uninstall` and `conveyor watch`: run the line without a CI server."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from conveyor import defaults

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


@click.command("watch")
@click.option("--branch", default=None, help="Branch to follow (default: triggers.branch).")
@click.option("--remote", default=None, help="Fetch the branch from this remote (e.g. origin) instead of reading the local one.")
@click.option("--interval", "interval_s", type=click.FloatRange(1), default=None,
              help=f"Seconds between looks (default {defaults.WATCH_INTERVAL_S:g}).")
@click.option("--once", is_flag=True, help="Look once, run what is new, and exit (for cron or a test).")
@click.option("--webhook", metavar="HOST:PORT", default=None,
              help="Receive GitHub/GitLab push events here instead of polling (secret: CONVEYOR_WEBHOOK_SECRET).")
def watch(branch: str | None, remote: str | None, interval_s: float | None, once: bool, webhook: str | None) -> None:
    """Run the line for every new commit on a branch, in order, and on triggers.schedule.

    Commits run in the watcher's own worktree (your checkout is untouched); a
    restarted watcher skips what it already ran.

    \b
    Examples:
      conveyor watch
      conveyor watch --branch main --remote origin --interval 60
      conveyor watch --once
      CONVEYOR_WEBHOOK_SECRET=… conveyor watch --webhook 0.0.0.0:9000 --remote origin
    """
    import os
    import threading

    from conveyor import config as config_module
    from conveyor.project import Project
    from conveyor.triggers.watch import Outcome, Watcher, environment

    project = Project.find()
    config = config_module.load(project.root, project.state_dir)

    def report(outcome: Outcome) -> None:
        verdict = click.style("passed", fg="green") if outcome.exit_code == 0 else click.style("failed", fg="red")
        click.echo(f"  {outcome.trigger}: {outcome.commit[:10]} {verdict}")

    watcher = Watcher(project.root, branch=branch or config.triggers.branch, remote=remote,
                      schedule=config.triggers.schedule, env=environment(os.environ), on_outcome=report)
    source = f"{remote}/{watcher.branch}" if remote else watcher.branch
    if webhook is not None:
        from conveyor.exceptions import ConveyorError
        from conveyor.triggers.webhook import serve

        host, _, port_text = webhook.rpartition(":")
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConveyorError(f"--webhook {webhook}: give HOST:PORT, such as 127.0.0.1:9000")

        def listening(bound_host: str, bound_port: int) -> None:
            click.echo(f"listening on http://{bound_host}:{bound_port}/ for pushes to {source}; Ctrl-C stops",
                       nl=True)
            sys.stdout.flush()

        serve(watcher, host.strip("[]"), int(port_text), os.environ.get("CONVEYOR_WEBHOOK_SECRET", ""),
              threading.Event(), on_listen=listening)
        return
    if once:
        if not watcher.tick():
            click.echo(f"  nothing new on {source}")
        return
    click.echo(f"watching {source} every {interval_s or defaults.WATCH_INTERVAL_S:g} s"
               f"{f', retraining on {watcher.schedule}' if watcher.schedule else ''}; Ctrl-C stops")
    watcher.loop(interval_s or defaults.WATCH_INTERVAL_S, threading.Event())
