"""The buildah builder: the same image, built from nothing by buildah instead of podman, serves predictions."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_packaging import (  # noqa: F401
    _free_port,
    _Images,
    _podman,
    _wait_ready,
    container,
    images,
    iris_project,
    podman_env,
)

from conveyor.packaging.package import SHARED_LAYERS_LABEL, package
from conveyor.project import Project
from conveyor.registry import Registry
from conveyor.store import ArtifactStore


@pytest.fixture
def buildah() -> Iterator[str]:
    found = shutil.which("buildah")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("buildah is not installed; .ci/run installs it")
        pytest.skip("buildah is not installed (.ci/run installs it)")
    yield found


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_buildah_builds_every_layer_and_the_image_serves(
        buildah: str, iris_project: Path, podman_env: dict[str, str], images: _Images,  # noqa: F811
        container: list[str], tmp_path: Path) -> None:  # noqa: F811
    project = Project(iris_project)
    tag = images.name("iris:buildah")
    with Registry(project.default_registry_url, create=False) as registry:
        made = package(project, registry, ArtifactStore(project.cache_dir), "iris@1", output=tmp_path / "ctx",
                       cache_dir=tmp_path / "cache", base_image=podman_env["CONVEYOR_BASE_IMAGE"], builder="buildah",
                       tag=tag, use_cache=False)
    assert made.builder == "buildah" and len(made.layers) >= 5  # base, venv + user, packages, Conveyor, model
    info = json.loads(_podman("image", "inspect", tag).stdout)[0]
    assert info["Labels"][SHARED_LAYERS_LABEL] == made.labels[SHARED_LAYERS_LABEL]
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"])  # docker format keeps the HEALTHCHECK

    name, port = f"conveyor-test-{uuid.uuid4().hex[:8]}", _free_port()
    container.append(name)
    _podman("run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:8080", tag)
    url = f"http://127.0.0.1:{port}"
    assert _wait_ready(url, name)["model"]["version"] == 1
    answer = httpx.post(f"{url}/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
