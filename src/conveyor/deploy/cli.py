"""`conveyor deploy` and `conveyor deployments restart`: the local deployment from the command line.

Thin: options are resolved here (flag > CONVEYOR_* environment > conveyor.yaml
> defaults) and `conveyor.deploy.local` does the work.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from conveyor import defaults
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


def _steps(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        steps = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a list of percentages such as 10,50,100") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
        raise click.BadParameter(f"'{value}': steps must be rising percentages in (0, 100], such as 10,50,100")
    return steps


@click.command()
@click.argument("ref")
@click.option("--strategy", type=click.Choice(["replace", "canary", "shadow"]), default=None,
              help="replace: hot swap; canary: traffic in steps, judged, rolled back on a breach; "
                   "shadow: a copy of requests, answers from stable (default: deploy.strategy).")
@click.option("--steps", default=None, metavar="PCTS", help="Canary steps, e.g. 10,50,100 (default: deploy.canary.steps).")
@click.option("--interval", "interval_s", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
              help="Seconds per canary step or shadow run (default: deploy.canary.interval_s).")
@click.option("--min-requests", type=click.IntRange(1), default=None, help="Requests needed to judge a step.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=None, help="Largest share of failed predictions.")
@click.option("--max-p99-ms", type=click.FloatRange(0, min_open=True), default=None, help="Largest p99 prediction latency.")
@click.option("--max-disagreement", type=click.FloatRange(0, 1), default=None, metavar="F",
              help="Largest share of requests on which the canary's predictions may differ from stable's "
                   "(stable predicts them too; default: deploy.canary.max_disagreement, not checked).")
@click.option("--shadow-share", type=click.FloatRange(0, 100, min_open=True), default=None, metavar="PCT",
              help="Percent of requests copied to a shadow candidate.")
@click.option("--alias", default=defaults.PRODUCTION_ALIAS, show_default=True,
              help="Alias the server follows; a canary moves it (and back on a breach).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port of the local server (default: deploy.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes when a server is started (default: deploy.workers).")
@click.option("--target", type=click.Choice(["local", "container", "kubernetes"]), default=None,
              help="local: the server on this machine; container: the model's image run by podman or docker "
                   "(deploy.container); kubernetes: the image pushed and applied with kubectl "
                   "(deploy.kubernetes). Default: deploy.target.")
@click.option("--dry-run", is_flag=True, help="kubernetes: only render the manifests (print them, or write --output).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="kubernetes --dry-run: directory for the manifests.")
@click.option("--push", metavar="REGISTRY/REPO", default=None,
              help="kubernetes: where to push the image (default: deploy.kubernetes.registry).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def deploy(ref: str, strategy: str | None, steps: str | None, interval_s: float | None, min_requests: int | None,
           max_error_rate: float | None, max_p99_ms: float | None, max_disagreement: float | None,
           shadow_share: float | None, alias: str, port: int | None, workers: int | None, target: str | None,
           dry_run: bool, output: Path | None, push: str | None, as_json: bool) -> None:
    """Serve REF: on the local server (default), in a container, or on Kubernetes, without downtime.

    With the replace strategy (default), REF is NAME@ALIAS (the server follows
    the alias: a promotion or `conveyor rollback` is live within a second) or
    NAME@VERSION (pinned); the new version is loaded and warmed beside the old
    one and swapped in on every worker. With canary or shadow, REF is the
    candidate NAME@VERSION and the server must follow NAME@ALIAS already.

    With --target container, REF's image is built (only the model layer when
    the dependencies are unchanged); a running container with the same
    dependencies gets the new model by hot swap, else a new container takes
    over once it answers /readyz (`conveyor containers rollback` undoes either).
    With --target kubernetes, the image is pushed and the manifests applied.

    \b
    Examples:
      conveyor deploy iris@production
      conveyor deploy iris@3 --port 8001
      conveyor deploy iris@4 --strategy canary --steps 10,50,100 --interval 30 --max-error-rate 0.01
      conveyor deploy iris@4 --strategy canary --max-disagreement 0.05
      conveyor deploy iris@4 --strategy shadow --shadow-share 50 --interval 60
      conveyor deploy iris@production --target container --port 8080
      conveyor deploy iris@production --target kubernetes --dry-run --output k8s/
      conveyor deploy iris@production --target kubernetes --push registry.example.com/ml/iris
    """
    from conveyor import config as config_module
    from conveyor.deploy import local
    from conveyor.registry import Registry

    project = Project.find()
    config = config_module.load(project.root, project.state_dir)
    registry_url = _registry_url(project, config.registry)
    chosen = strategy or config.deploy.strategy
    where = target or config.deploy.target
    if where != "kubernetes" and (dry_run or output or push):
        raise click.UsageError("--dry-run, --output and --push apply to --target kubernetes")
    if where != "local" and chosen != "replace":
        raise click.UsageError(f"the {chosen} strategy runs on the local server; the {where} target replaces "
                               "(hot swap or a new container/rollout): pass --strategy replace")
    with Registry(registry_url, create=False) as registry:
        version = registry.resolve(ref)  # a reference that names nothing fails here, before anything is touched
        if where != "local":
            _place(project, config, registry, version, where, port=_port(port, config.deploy.port), dry_run=dry_run,
                   output=output, push=push, as_json=as_json)
            return
        if chosen != "replace":
            _roll_out(project, config, registry, version, chosen, alias, as_json, steps=_steps(steps),
                      interval_s=interval_s, min_requests=min_requests, max_error_rate=max_error_rate,
                      max_p99_ms=max_p99_ms, max_disagreement=max_disagreement, shadow_share=shadow_share)
            return
    started = time.perf_counter()
    live = local.ensure_serving(project, ref, host=config.deploy.host, port=_port(port, config.deploy.port),
                                registry_url=registry_url, expected_digest=version.digest,
                                workers=workers or config.deploy.workers,
                                follow_interval_s=config.deploy.follow_interval_s,
                                predictions_need_token=config.deploy.predictions_need_token)
    took = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({"ref": live.ref, "name": live.name, "version": live.version, "digest": live.digest,
                               "url": live.url, "pid": live.pid, "seconds": round(took, 3)}, indent=2))
        return
    click.echo(f"{live.ref}: {live.name}@{live.version} is live at {live.url} (pid {live.pid}, {took:.2f}s)")


def _place(project: Project, config: Any, registry: Any, version: Any, where: str, *, port: int, dry_run: bool,
           output: Path | None, push: str | None, as_json: bool) -> None:
    from dataclasses import asdict

    from conveyor.deploy import targets

    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}", err=True))
    started = time.perf_counter()
    if where == "container":
        placed = targets.to_container(project, config, registry, version, port=port, progress=say)
    else:
        placed = targets.to_kubernetes(project, config, registry, version, dry_run=dry_run, output=output, push=push,
                                       progress=say)
    took = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({**asdict(placed), "seconds": round(took, 3)}, indent=2))
    elif placed.manifests is not None:  # a dry run's manifests are the output
        click.echo(placed.manifests, nl=False)
    else:
        click.echo(f"{placed.summary} ({took:.2f}s)")


def _roll_out(project: Project, config: Any, registry: Any, target: Any, strategy: str, alias: str, as_json: bool,
              *, steps: tuple[float, ...] | None, interval_s: float | None, min_requests: int | None,
              max_error_rate: float | None, max_p99_ms: float | None, max_disagreement: float | None,
              shadow_share: float | None) -> None:
    from dataclasses import asdict

    from conveyor.deploy.rollout import Policy, roll_out
    from conveyor.serving.rollout import Criteria

    canary = config.deploy.canary
    policy = Policy(
        strategy=strategy,  # type: ignore[arg-type]  # click.Choice checked it
        steps=steps or tuple(canary.steps), interval_s=interval_s or canary.interval_s,
        criteria=Criteria(max_error_rate=canary.max_error_rate if max_error_rate is None else max_error_rate,
                          max_p99_ms=max_p99_ms or canary.max_p99_ms,
                          min_requests=min_requests or canary.min_requests,
                          max_disagreement=canary.max_disagreement if max_disagreement is None else max_disagreement),
        shadow_share=shadow_share or config.deploy.shadow.share,
    )
    from conveyor.cli import _actor

    actor = _actor(project)
    outcome = roll_out(project, registry, target.name, target.version, policy, alias=alias, actor=actor,
                       on_step=(lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}")))
    if as_json:
        click.echo(json.dumps(asdict(outcome), indent=2))
    else:
        click.echo(f"{strategy} of {target.name}@{outcome.candidate} (stable v{outcome.stable}): "
                   f"{outcome.result}: {outcome.reason}")
    if outcome.result == "rolled back":
        sys.exit(1)


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


@click.command("traffic")
@click.argument("percent", type=click.FloatRange(0, 100))
@click.option("--alias", default=defaults.PRODUCTION_ALIAS, show_default=True, help="Alias the server follows.")
def traffic(percent: float, alias: str) -> None:
    """Steer the rollout in progress by hand: 0 rolls it back, 100 promotes it, anything else holds that share.

    For a rollout whose `conveyor deploy` is no longer running; the alias
    moves (and is recorded) as an automatic rollback or promotion would move it.

    \b
    Examples:
      conveyor deployments traffic 0
      conveyor deployments traffic 25
    """
    from conveyor import config as config_module
    from conveyor.cli import _actor
    from conveyor.deploy.rollout import set_share
    from conveyor.registry import Registry

    project = Project.find()
    config = config_module.load(project.root, project.state_dir)
    with Registry(_registry_url(project, config.registry), create=False) as registry:
        click.echo(set_share(project, registry, percent, alias=alias, actor=_actor(project)))


__all__ = ["deploy", "restart", "traffic"]
