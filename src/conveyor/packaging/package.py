"""`conveyor package`: a registered model version → build context → image → (registry push) → lineage."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import conveyor
from conveyor import flavors
from conveyor.exceptions import ConveyorError
from conveyor.model import materialize, read_metadata
from conveyor.packaging import builder as builders
from conveyor.packaging import context, runtime_deps, serving_form
from conveyor.store import hash_bytes, hash_path

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.project import Project
    from conveyor.registry import ModelVersion, Registry
    from conveyor.store import ArtifactStore

_RUNTIME_FILE = "Dockerfile.runtime"
_MODEL_FILE = "Dockerfile.model"

LABEL_PREFIX = "io.conveyor.model"
"""Prefix of the labels naming the model version an image serves."""

SHARED_LAYERS_LABEL = "io.conveyor.shared-layers"
"""Key of an image's shared layers (base, packages, Conveyor): images with the same key differ only in
the model, so the container target hot-swaps a running container to the other's model."""


@dataclass(frozen=True)
class Packaged:
    """What `package` made: always a build context; an image when a builder ran; a pushed reference."""

    ref: str
    context: Path
    dockerfile: Path
    base_image: str
    python: str
    requirements: list[str]
    labels: dict[str, str]
    builder: str | None = None
    tag: str | None = None
    image_id: str | None = None
    layers: list[str] = field(default_factory=list)
    pushed: str | None = None  # REGISTRY/REPO:TAG@sha256:…
    runtime: str = "native"
    serving: dict[str, Any] | None = None  # the ONNX serving form (`serving_form.ServingForm.as_dict`)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["context"], out["dockerfile"] = str(self.context), str(self.dockerfile)
        return out


def _source(root: Path) -> str:
    """Where the code came from: the git remote `origin`, else the repository's path."""
    found = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True,
                           check=False)
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else root.resolve().as_uri()


def labels(version: ModelVersion, source: str, serving_digest: str | None = None) -> dict[str, str]:
    """OCI labels tracing the image to its commit, plus the model version it serves (and, when it
    serves the version's ONNX form, that form's digest)."""
    git = version.lineage.get("git", {})
    found = {
        "org.opencontainers.image.revision": str(git.get("commit") or "unknown"),
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.version": str(version.version),
        "org.opencontainers.image.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "org.opencontainers.image.title": version.name,
        f"{LABEL_PREFIX}.name": version.name,
        f"{LABEL_PREFIX}.version": str(version.version),
        f"{LABEL_PREFIX}.digest": version.digest,
        f"{LABEL_PREFIX}.runtime": "onnx" if serving_digest else "native",
    }
    if serving_digest:
        found[f"{LABEL_PREFIX}.serving-digest"] = serving_digest
    return found


def _python_of(environment: dict[str, Any]) -> str:
    saved = str(environment.get("python") or platform.python_version())
    return ".".join(saved.split(".")[:2])


def package(
    project: Project,
    registry: Registry,
    store: ArtifactStore,
    ref: str,
    *,
    output: Path,
    cache_dir: Path,
    base_image: str | None = None,
    python: str | None = None,
    builder: str = "auto",
    build: bool = True,
    tag: str | None = None,
    push: str | None = None,
    tls_verify: bool = True,
    use_cache: bool = True,
    runtime: str = "native",
) -> Packaged:
    """Write the build context of `ref` at `output`, build it when a builder is there, push it to `push`.

    The image (id, tag, digest, pushed reference) is recorded in the version's lineage.
    `cache_dir` keeps prepared runtime packages between builds. `runtime="onnx"` serves a
    scikit-learn version's verified ONNX form (`serving_form`), made now if the line did not make it.
    """
    if runtime not in serving_form.RUNTIMES:
        raise ConveyorError(f"runtime '{runtime}' is not one of {', '.join(serving_form.RUNTIMES)}; "
                            "set package.runtime (or --runtime) to one of them")
    version = registry.resolve(ref)
    serving: serving_form.ServingForm | None = None
    if runtime == "onnx" and version.flavor != "onnx":  # an ONNX model is its own serving form
        serving, model_dir, converted_now = serving_form.ensure(registry, store, project.models_dir, version)
        if converted_now:  # the image's version record names its form: a container it is swapped into checks it
            version = registry.get(version.name, version.version)
    else:
        model_dir = materialize(store, project.models_dir, version.digest)
    metadata = read_metadata(model_dir)
    python = python or _python_of(metadata.environment)
    base_image = base_image or f"python:{python}-slim"
    saved_with = metadata.environment.get("packages", {})
    requirements = runtime_deps.runtime_requirements(
        flavors.serving_packages(metadata.flavor), saved_with if isinstance(saved_with, dict) else {},
        runtime_deps.requirement_pins(project.root / "requirements.txt"))
    tree = runtime_deps.prepare(requirements, python, cache_dir / "runtime")
    image_labels = labels(version, _source(project.root), serving.digest if serving else None)
    conveyor_dir = Path(conveyor.__file__).parent
    runtime_text = context.runtime_dockerfile(base_image, python)
    # The shared layers are built once per (Dockerfile, packages, Conveyor code) as their own image, so a
    # model-only rebuild builds one COPY instead of making the builder re-hash the packages to find its cache.
    runtime_key = hash_bytes("\n".join([runtime_text, tree.name, hash_path(conveyor_dir)]).encode())[:16]
    runtime_image = f"localhost/conveyor-runtime:{runtime_key}"
    image_labels[SHARED_LAYERS_LABEL] = runtime_key
    dockerfile = context.write(
        output, text=context.dockerfile(base_image, python, image_labels), runtime_tree=tree,
        conveyor_dir=conveyor_dir, model_dir=model_dir, version=version,
        expected_digest=serving.digest if serving else None,
        extra={_RUNTIME_FILE: runtime_text, _MODEL_FILE: context.model_dockerfile(runtime_image, image_labels)})
    made = Packaged(ref=version.ref, context=output, dockerfile=dockerfile, base_image=base_image, python=python,
                    requirements=requirements, labels=image_labels, runtime="onnx" if serving else "native",
                    serving=serving.as_dict() if serving else None)
    chosen = builders.detect(builder) if build or push else None
    if chosen is None:
        if push:
            raise ConveyorError("--push needs a builder (podman, buildah or docker), and none is installed")
        return made
    name = tag or f"conveyor/{version.name}:{version.version}"
    if not use_cache:
        image_id = builders.build(chosen, output, name, use_cache=False)
    else:
        if not builders.exists(chosen, runtime_image):
            builders.build(chosen, output, runtime_image, dockerfile=_RUNTIME_FILE)
        image_id = builders.build(chosen, output, name, dockerfile=_MODEL_FILE, intermediate=False)
    pushed = None
    if push:
        reference = push if ":" in push.rsplit("/", 1)[-1] else f"{push}:{version.version}"
        builders.tag(chosen, image_id, reference)
        pushed = f"{reference}@{builders.push(chosen, reference, tls_verify=tls_verify)}"
    record = {"id": image_id, "tag": name, "digest": pushed.rsplit("@", 1)[1] if pushed else image_id,
              "pushed": pushed, "base_image": base_image, "runtime": made.runtime,
              "built_at": image_labels["org.opencontainers.image.created"]}
    registry.record_image(version.name, version.version, record)
    return Packaged(**{**asdict(made), "builder": chosen, "tag": name, "image_id": image_id,
                       "layers": builders.layers(chosen, image_id), "pushed": pushed})


def cache_dir() -> Path:
    """Where prepared runtime packages are kept between builds (shared by every project)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conveyor"


def context_dir(project: Project, ref: str) -> Path:
    """The default build context directory of `ref`."""
    from conveyor.registry import parse_ref

    name, selector = parse_ref(ref)
    return project.state_dir / "package" / f"{name}-{selector or 'latest'}"


def configured_base_image(settings: Config, flag: str | None = None) -> str | None:
    """The base image: flag > CONVEYOR_BASE_IMAGE > `package.base_image` (None: a slim Python)."""
    return flag or os.environ.get("CONVEYOR_BASE_IMAGE") or settings.package.base_image
