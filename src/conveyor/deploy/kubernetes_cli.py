"""`conveyor kubernetes`: the Kubernetes target's commands (deploy with --dry-run, rollback)."""

from __future__ import annotations

from pathlib import Path

import click

_KUBECTL = click.option("--kubectl", default="kubectl", show_default=True, envvar="CONVEYOR_KUBECTL",
                        help="kubectl to run (its current context is the cluster) [env CONVEYOR_KUBECTL].")
_TIMEOUT = click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=300.0, show_default=True,
                        help="Seconds to wait for `rollout status`.")


@click.group("kubernetes")
def kubernetes() -> None:
    """Render a model image's Kubernetes manifests and apply them with kubectl.

    \b
    Examples:
      conveyor kubernetes deploy registry.example.com/ml/iris:3 --name iris --dry-run --output k8s/
      conveyor kubernetes rollback --name iris
    """


@kubernetes.command("deploy")
@click.argument("image")
@click.option("--name", required=True, help="Name of the Deployment and Service.")
@click.option("--replicas", type=click.IntRange(1), default=2, show_default=True, help="Pods.")
@click.option("--max-replicas", type=click.IntRange(1), help="Add a HorizontalPodAutoscaler up to this many pods.")
@click.option("--pdb", is_flag=True, help="Add a PodDisruptionBudget (minAvailable 1).")
@click.option("--dry-run", is_flag=True, help="Only write the manifests (to --output, else print them).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Directory for --dry-run.")
@_KUBECTL
@_TIMEOUT
def deploy(image: str, name: str, replicas: int, max_replicas: int | None, pdb: bool, dry_run: bool,
           output: Path | None, kubectl: str, timeout_s: float) -> None:
    """Render the manifests for IMAGE and apply them, waiting for the rollout.

    \b
    Example:
      conveyor kubernetes deploy registry.example.com/ml/iris:3 --name iris --max-replicas 6 --pdb
    """
    from conveyor.deploy import kubernetes as k8s
    from conveyor.project import Project

    autoscaling = k8s.Autoscaling(min_replicas=replicas, max_replicas=max(max_replicas, replicas)) \
        if max_replicas else None
    documents = k8s.render(image, name, replicas=replicas, autoscaling=autoscaling, disruption_budget=pdb)
    if dry_run:
        if output is None:
            click.echo(k8s.to_yaml(documents), nl=False)
            return
        output.mkdir(parents=True, exist_ok=True)
        for doc in documents:
            path = output / f"{doc['kind'].lower()}.yaml"
            path.write_text(k8s.to_yaml([doc]), encoding="utf-8")
            click.echo(f"wrote {path}")
        return
    applied = k8s.apply(documents, name, state_dir=Project.find().state_dir, kubectl=kubectl, timeout_s=timeout_s)
    click.echo(f"{name}: {image} rolled out ({', '.join(d['kind'] for d in documents)}); manifests in {applied}")


@kubernetes.command("rollback")
@click.option("--name", required=True, help="Name of the Deployment.")
@_KUBECTL
@_TIMEOUT
def rollback(name: str, kubectl: str, timeout_s: float) -> None:
    """Re-apply the manifests applied before the newest ones and wait for the rollout.

    \b
    Example:
      conveyor kubernetes rollback --name iris
    """
    from conveyor.deploy import kubernetes as k8s
    from conveyor.project import Project

    previous = k8s.rollback(name, state_dir=Project.find().state_dir, kubectl=kubectl, timeout_s=timeout_s)
    click.echo(f"{name}: rolled back to {previous}")
