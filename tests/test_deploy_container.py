"""The container deploy target with real podman containers: health-gated switch, kept old one, rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_packaging import _free_port, _Images, _package, _podman, images, iris_project, podman_env  # noqa: F401

from conveyor.deploy import container
from conveyor.exceptions import ConveyorError

ROWS = {"rows": [[5.1, 3.5, 1.4, 0.2]]}


def _free_pair() -> int:
    """A port whose successor is free too (blue/green uses both)."""
    return _free_port(2)


@pytest.fixture
def deployment(podman_env: dict[str, str]) -> Iterator[str]:  # noqa: F811
    name = f"conveyor-test-{__import__('uuid').uuid4().hex[:8]}"
    yield name
    for found in container.containers(name):
        _podman("rm", "--force", "--time", "5", found.name, check=False)


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_deploy_switches_after_readiness_keeps_the_old_one_and_rolls_back(
        iris_project: Path, podman_env: dict[str, str], images: _Images, deployment: str) -> None:  # noqa: F811
    image = images.name("iris:deploy")
    _package(iris_project, "iris@1", image, podman_env)
    port = _free_pair()

    first = container.deploy(image, deployment=deployment, port=port, timeout_s=180)
    assert first.replaced is None and first.serving.port == port
    assert httpx.post(f"{first.serving.url}/predict", json=ROWS, timeout=30).status_code == 200

    second = container.deploy(image, deployment=deployment, port=port, timeout_s=180)
    assert second.replaced is not None and second.replaced.name == first.serving.name
    assert second.serving.port == port + 1
    assert httpx.post(f"{second.serving.url}/predict", json=ROWS, timeout=30).status_code == 200
    states = {c.name: c.running for c in container.containers(deployment)}
    assert states == {first.serving.name: False, second.serving.name: True}  # the old one kept, stopped

    back = container.rollback(deployment, timeout_s=180)
    assert back.serving.name == first.serving.name and back.replaced is not None
    assert httpx.post(f"{first.serving.url}/predict", json=ROWS, timeout=30).status_code == 200
    states = {c.name: c.running for c in container.containers(deployment)}
    assert states == {first.serving.name: True, second.serving.name: False}


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_an_image_that_never_gets_ready_leaves_the_serving_container_alone(
        iris_project: Path, podman_env: dict[str, str], images: _Images, deployment: str) -> None:  # noqa: F811
    image = images.name("iris:deploy-ok")
    _package(iris_project, "iris@1", image, podman_env)
    port = _free_pair()
    serving = container.deploy(image, deployment=deployment, port=port, timeout_s=180).serving

    # The base image runs `python3` with no terminal: it exits at once and never answers /readyz.
    with pytest.raises(ConveyorError, match="exited"):
        container.deploy(podman_env["CONVEYOR_BASE_IMAGE"], deployment=deployment, port=port, timeout_s=60)
    found = container.containers(deployment)
    assert [(c.name, c.running) for c in found] == [(serving.name, True)]  # the failed one is removed
    assert httpx.post(f"{serving.url}/predict", json=ROWS, timeout=30).status_code == 200


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_a_port_already_taken_is_one_error_and_leaves_nothing_behind(
        iris_project: Path, podman_env: dict[str, str], images: _Images, deployment: str,  # noqa: F811
        tmp_path: Path) -> None:
    import socket

    image = images.name("iris:port-taken")
    _package(iris_project, "iris@1", image, podman_env)
    port = _free_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(ConveyorError, match="podman run failed"):
            container.deploy(image, deployment=deployment, port=port, timeout_s=60, state_dir=tmp_path)
    assert container.containers(deployment) == []
    assert [p.name for p in (tmp_path / "containers" / deployment).iterdir()] == ["token"]  # no swap directory
