"""Putting a version live on a target other than the local server: a container here, or a Kubernetes cluster.

`conveyor deploy --target` and the line's deploy step (`deploy.target`) come
here. The version is packaged first (`conveyor package`: a version with the
same dependencies rebuilds only the model layer, and the image is recorded in
its lineage). Then:

- container: a running container whose image has the same shared layers gets
  the new model by hot swap (same port, no request dropped); otherwise a new
  container starts beside it and takes over once it answers /readyz.
- kubernetes: the image is pushed to `deploy.kubernetes.registry` and the
  rendered manifests name it by digest (immutable), applied with kubectl and
  waited on; a version pushed there before (a rollback) reuses that image, so
  the cluster runs the same bytes again; `--dry-run` only renders them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError
from conveyor.packaging import package as packaging

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.project import Project
    from conveyor.registry import ModelVersion, Registry


@dataclass(frozen=True)
class Placed:
    """Where a version went live, in one line for the user; `changed` False when it already was."""

    target: str
    ref: str
    summary: str
    url: str | None = None
    image: str | None = None
    changed: bool = True
    manifests: str | None = None  # a dry run without an output directory: the YAML to print


Progress = Callable[[str], None]


def _package(project: Project, settings: Config, registry: Registry, version: ModelVersion, *, builder: str,
             push: str | None = None, tls_verify: bool = True) -> packaging.Packaged:
    from conveyor.store import ArtifactStore

    return packaging.package(project, registry, ArtifactStore(project.cache_dir), version.ref,
                             output=packaging.context_dir(project, version.ref), cache_dir=packaging.cache_dir(),
                             base_image=packaging.configured_base_image(settings), python=settings.package.python,
                             builder=builder, push=push, tls_verify=tls_verify, runtime=settings.package.runtime)


def to_container(project: Project, settings: Config, registry: Registry, version: ModelVersion, *, port: int,
                 progress: Progress = lambda _line: None) -> Placed:
    """Serve `version` from a container: hot swap when the running one has the same shared layers."""
    from conveyor.deploy import container

    options = settings.deploy.container
    deployment = options.deployment(version.name)
    running = next((c for c in container.containers(deployment, engine=options.engine) if c.running), None)
    if running is not None and container.serving_ref(project.state_dir, deployment, running) == version.ref:
        return Placed("container", version.ref, f"{version.ref} is already served by {running.name} at {running.url}",
                      url=running.url, image=running.image, changed=False)
    progress(f"packaging {version.ref} with {options.engine}")
    made = _package(project, settings, registry, version, builder=options.engine)
    assert made.tag is not None, "package() builds when a builder is named"
    swappable = (running is not None
                 and running.shared_layers_key == made.labels.get(packaging.SHARED_LAYERS_LABEL)
                 and container.swap_dir(project.state_dir, deployment, running.name).is_dir())
    if running is not None and swappable:
        progress(f"same dependencies as {running.name}: hot-swapping the model")
        swap = container.hot_swap(deployment, made.context / "app", version.ref, state_dir=project.state_dir,
                                  engine=options.engine, timeout_s=options.ready_timeout_s)
        return Placed("container", version.ref, f"{version.ref} hot-swapped into {running.name} (was {swap.before}) "
                      f"at {running.url}", url=running.url, image=made.tag)
    progress(f"starting {made.tag}" + (f" beside {running.name}" if running else ""))
    switch = container.deploy(made.tag, deployment=deployment, port=port, engine=options.engine,
                              timeout_s=options.ready_timeout_s, state_dir=project.state_dir)
    replaced = f"; {switch.replaced.name} stopped, kept for rollback" if switch.replaced else ""
    return Placed("container", version.ref, f"{version.ref} serving in {switch.serving.name} at "
                  f"{switch.serving.url}{replaced}", url=switch.serving.url, image=made.tag)


def to_kubernetes(project: Project, settings: Config, registry: Registry, version: ModelVersion, *,
                  dry_run: bool = False, output: Path | None = None, push: str | None = None,
                  progress: Progress = lambda _line: None) -> Placed:
    """Render `version`'s manifests (dry run: print or write them), else push its image and apply them."""
    from conveyor.deploy import kubernetes as k8s

    options = settings.deploy.kubernetes
    name = options.deployment(version.name)
    autoscaling = k8s.Autoscaling(min_replicas=options.replicas, max_replicas=options.max_replicas) \
        if options.max_replicas else None

    def render(image: str) -> list[dict[str, Any]]:
        return k8s.render(image, name, replicas=options.replicas, autoscaling=autoscaling,
                          disruption_budget=options.disruption_budget)

    if dry_run:
        recorded = version.lineage.get("image") or {}
        image = str(recorded.get("pushed") or recorded.get("tag") or f"conveyor/{version.name}:{version.version}")
        documents = render(image)
        if output is None:
            return Placed("kubernetes", version.ref, f"{version.ref}: manifests for {image} (dry run)",
                          image=image, changed=False, manifests=k8s.to_yaml(documents))
        output.mkdir(parents=True, exist_ok=True)
        for doc in documents:
            (output / f"{str(doc['kind']).lower()}.yaml").write_text(k8s.to_yaml([doc]), encoding="utf-8")
        return Placed("kubernetes", version.ref, f"{version.ref}: manifests for {image} written to {output} "
                      "(dry run)", image=image, changed=False)
    pushed_before = (version.lineage.get("image") or {}).get("pushed")
    if pushed_before and k8s.applied_image(name, state_dir=project.state_dir) == pushed_before:
        return Placed("kubernetes", version.ref, f"{version.ref} is already rolled out as deployment/{name} "
                      f"({pushed_before})", image=str(pushed_before), changed=False)
    target = push or options.registry
    if not target:
        raise ConveyorError("deploy.target kubernetes pushes the image for the cluster to pull: set "
                            "deploy.kubernetes.registry (REGISTRY/REPO) in conveyor.yaml or pass --push, "
                            "or use --dry-run to only render the manifests")
    if pushed_before and str(pushed_before).split("@", 1)[0] in (target, f"{target}:{version.version}"):
        image = str(pushed_before)  # pushed there before (a rollback, or CI's package step): the same bytes again
    else:
        progress(f"packaging {version.ref} and pushing it to {target}")
        made = _package(project, settings, registry, version, builder="auto", push=target,
                        tls_verify=options.tls_verify)
        assert made.pushed is not None, "package() pushes when asked"
        image = made.pushed
    progress(f"applying the manifests for {image} with {options.kubectl}")
    applied = k8s.apply(render(image), name, state_dir=project.state_dir, kubectl=options.kubectl,
                        timeout_s=options.rollout_timeout_s)
    return Placed("kubernetes", version.ref, f"{version.ref} rolled out as deployment/{name} ({image}); "
                  f"manifests in {applied}", image=image)
