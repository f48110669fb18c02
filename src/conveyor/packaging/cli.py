"""`conveyor package`: parse options, call `conveyor.packaging.package`, render the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.command("package")
@click.argument("ref")
@click.option("--builder", type=click.Choice(["auto", "podman", "buildah", "docker"]), default="auto",
              show_default=True, help="What builds the image (auto: the first installed).")
@click.option("--no-build", is_flag=True, help="Only write the build context and Dockerfile.")
@click.option("--push", "push", metavar="REGISTRY/REPO[:TAG]", help="Push the image there (tag: the version).")
@click.option("--tls-verify/--no-tls-verify", default=True, show_default=True,
              help="Check the registry's TLS certificate on push (off for a local plain-HTTP registry).")
@click.option("--base-image", help="Base image [env CONVEYOR_BASE_IMAGE; conveyor.yaml package.base_image; "
                                   "default python:X.Y-slim of the model's Python].")
@click.option("--runtime", type=click.Choice(["native", "onnx"]),
              help="What serves the model: native (its own flavor) or onnx (a scikit-learn model converted to "
                   "ONNX and checked against it; no scikit-learn in the image) [conveyor.yaml package.runtime; "
                   "default native].")
@click.option("--tag", help="Local image name [default conveyor/NAME:VERSION].")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Build context directory [default .conveyor/package/NAME-VERSION].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def package(ref: str, builder: str, no_build: bool, push: str | None, tls_verify: bool, base_image: str | None,
            runtime: str | None, tag: str | None, output: Path | None, as_json: bool) -> None:
    """Package a model version as a container image: REF is NAME, NAME@VERSION or NAME@ALIAS.

    Writes a build context (Dockerfile, runtime packages prepared on this machine,
    the model) and builds it with podman, buildah or docker when one is installed.
    The image is recorded in the version's lineage (`conveyor models lineage`).

    With --runtime onnx a scikit-learn model is served by onnxruntime: its ONNX form
    (made when the line registered it, else now) must predict the same labels, and
    numbers within 1e-4, on the sample rows and a few hundred rows drawn from them.

    \b
    Examples:
      conveyor package iris@production
      conveyor package iris@production --runtime onnx
      conveyor package iris@3 --push registry.example.com/ml/iris
      conveyor package iris@3 --no-build --output build/iris
    """
    from conveyor import config as config_module
    from conveyor.packaging import package as packaging
    from conveyor.project import Project
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    project = Project.find()
    settings = config_module.load(project.root, project.state_dir)
    with Registry(os.environ.get("CONVEYOR_REGISTRY_URL") or settings.registry
                  or project.default_registry_url, create=False) as registry:
        made = packaging.package(
            project, registry, ArtifactStore(project.cache_dir), ref,
            output=output or packaging.context_dir(project, ref), cache_dir=packaging.cache_dir(),
            base_image=packaging.configured_base_image(settings, base_image), python=settings.package.python,
            builder=builder, build=not no_build, tag=tag, push=push, tls_verify=tls_verify,
            runtime=runtime or settings.package.runtime,
        )
    if as_json:
        click.echo(json.dumps(made.as_dict(), indent=2))
        return
    click.echo(f"{made.ref}: build context {made.context} (base {made.base_image}, Python {made.python})")
    if made.serving:
        form = made.serving
        click.echo(f"  serving     onnx {form['digest'][:12]} (converted from {form['converted_from'][:12]}, "
                   f"checked {form['rows_checked']} rows, max difference {form['max_abs_difference']:.1g})")
    click.echo(f"  runtime     {' '.join(made.requirements)}")
    if made.image_id is None:
        click.echo("  image       not built (--no-build, or no podman/buildah/docker here)")
        return
    click.echo(f"  image       {made.tag} {made.image_id[:19]} ({len(made.layers)} layers) built with {made.builder}")
    if made.pushed:
        click.echo(f"  pushed      {made.pushed}")
