"""`conveyor deploy` and `conveyor deployments restart`: the local deployment from the command line.

Thin: options are resolved here (flag > CONVEYOR_* environment > conveyor.yaml
> defaults) and `conveyor.deploy.local` does the work.
"""

from __future__ import annotations

import json
import os
import time

import click

from conveyor.exceptions import ConveyorError
from conveyor.project import Project


def _registry_url(project: Project, configured: str | None) -> str:
    return os.environ.get("CONVEYOR_REGISTRY_URL") or configured or project.default_registry_url


def _port(flag: int | None, configured: int) -> int:
    if flag is not None:
        return flag
    from_env = os.environ.get("CONVEYOR_PORT")
    if not from_env:
        return configured
    if not from_env.isdigit() or not 1 <= int(from_env) <= 65535:
        raise ConveyorError(f"CONVEYOR_PORT must be a port number between 1 and 65535, not {from_env!r}")
    return int(from_env)


@click.command()
@click.argument("ref")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port of the local server (default: deploy.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes when a server is started (default: deploy.workers).")
@click.option("--json", "as_json", is_flag=True, help="Print what is live as JSON.")
def deploy(ref: str, port: int | None, workers: int | None, as_json: bool) -> None:
    """Serve REF on the local server: start it in the background, or switch the running one without downtime.

    REF is NAME@ALIAS (the server follows the alias: a promotion or `conveyor
    rollback` is live within a second) or NAME@VERSION (pinned). The new version
    is loaded and warmed beside the old one and swapped in on every worker.

    \b
    Examples:
      conveyor deploy iris@production
      conveyor deploy iris@3 --port 8001
    """
    from conveyor import config as config_module
    from conveyor.deploy import local
    from conveyor.registry import Registry

    project = Project.find()
    config = config_module.load(project.root, project.state_dir)
    registry_url = _registry_url(project, config.registry)
    with Registry(registry_url, create=False) as registry:
        target = registry.resolve(ref)  # a reference that names nothing fails here, before any server is touched
    started = time.perf_counter()
    live = local.ensure_serving(project, ref, host=config.deploy.host, port=_port(port, config.deploy.port),
                                registry_url=registry_url, expected_digest=target.digest,
                                workers=workers or config.deploy.workers,
                                follow_interval_s=config.deploy.follow_interval_s)
    took = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({"ref": live.ref, "name": live.name, "version": live.version, "digest": live.digest,
                               "url": live.url, "pid": live.pid, "seconds": round(took, 3)}, indent=2))
        return
    click.echo(f"{live.ref}: {live.name}@{live.version} is live at {live.url} (pid {live.pid}, {took:.2f}s)")


@click.command("restart")
def restart() -> None:
    """Replace the local server's workers one at a time, e.g. after upgrading Conveyor or the model's dependencies.

    Each new worker loads and warms the model before an old one is stopped;
    the listening socket stays open throughout, so no request is refused.

    \b
    Example:
      conveyor deployments restart
    """
    from conveyor.deploy import local

    started = time.perf_counter()
    live = local.restart_workers(Project.find())
    click.echo(f"Restarted the workers of {live.url} ({live.name}@{live.version}) in "
               f"{time.perf_counter() - started:.2f}s.")


__all__ = ["deploy", "restart"]
