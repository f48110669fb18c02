"""`conveyor containers`: the container deploy target's commands (deploy, rollback, list)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

_ENGINE = click.option("--engine", type=click.Choice(["podman", "docker"]), default="podman", show_default=True,
                       help="Container engine.")
_NAME = click.option("--name", "deployment", default="conveyor", show_default=True, help="Deployment name.")


def _state_dir() -> Path | None:
    """The project's state directory when run inside one (hot swaps and the token live there)."""
    from conveyor.exceptions import NotAProjectError
    from conveyor.project import Project

    try:
        return Project.find().state_dir
    except NotAProjectError:
        return None


@click.group("containers")
def containers() -> None:
    """Run packaged model images as containers: health-gated switch, instant rollback.

    \b
    Examples:
      conveyor containers deploy conveyor/iris:3 --name iris --port 8080
      conveyor containers rollback --name iris
    """


@containers.command("deploy")
@click.argument("image")
@_NAME
@click.option("--port", type=click.IntRange(1, 65534), default=8080, show_default=True,
              help="Host port on 127.0.0.1; the next one is used in turn (blue/green).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds the new container has to answer /readyz.")
@_ENGINE
def deploy(image: str, deployment: str, port: int, timeout_s: float, engine: str) -> None:
    """Start IMAGE beside the serving container; stop the old one once the new answers /readyz.

    \b
    Example:
      conveyor package iris@production --tag conveyor/iris:prod && \\
      conveyor containers deploy conveyor/iris:prod --name iris
    """
    from conveyor.deploy import container

    switch = container.deploy(image, deployment=deployment, port=port, engine=engine, timeout_s=timeout_s,
                              state_dir=_state_dir())
    replaced = f"; {switch.replaced.name} stopped, kept for rollback" if switch.replaced else ""
    click.echo(f"{deployment}: {switch.serving.name} ({image}) serving at {switch.serving.url}{replaced}")


@containers.command("rollback")
@_NAME
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds the previous container has to answer /readyz.")
@_ENGINE
def rollback(deployment: str, timeout_s: float, engine: str) -> None:
    """Undo the last change: swap the serving container back to its previous model, or, when its
    model was never swapped, start the previous container again and stop the serving one once it is ready.

    \b
    Example:
      conveyor containers rollback --name iris
    """
    from conveyor.deploy import container

    undone = container.rollback(deployment, engine=engine, timeout_s=timeout_s, state_dir=_state_dir())
    if isinstance(undone, container.Swap):
        click.echo(f"{deployment}: {undone.container.name} swapped back from {undone.before} to "
                   f"{undone.after} at {undone.container.url}")
        return
    click.echo(f"{deployment}: rolled back to {undone.serving.name} ({undone.serving.image}) at {undone.serving.url}")


@containers.command("list")
@_NAME
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_ENGINE
def list_(deployment: str, as_json: bool, engine: str) -> None:
    """The deployment's containers, newest first.

    \b
    Example:
      conveyor containers list --name iris
    """
    from conveyor.deploy import container

    state_dir = _state_dir()
    found = container.containers(deployment, engine=engine)
    if as_json:
        click.echo(json.dumps([{**asdict(c), "model": container.serving_ref(state_dir, deployment, c)}
                               for c in found], indent=2))
        return
    for c in found:
        click.echo(f"{c.name:<22} {'serving' if c.running else 'stopped':<8} {c.url:<24} "
                   f"{container.serving_ref(state_dir, deployment, c):<14} {c.image}")
