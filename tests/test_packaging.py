"""`conveyor package`: real images built with podman from the iris example, run, pushed and pulled back.

The container tests share one image store and one core: they are in one xdist group.
`scripts/containers.sh` configures podman for this machine and makes (or loads) the base image.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import commit_all

from conveyor.cli import main
from conveyor.packaging import context, runtime_deps

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180.0  # a cold start imports scikit-learn without bytecode on a busy machine

# -- no builder needed -----------------------------------------------------------------------

def test_requirement_pins_read_only_exact_pins(tmp_path: Path) -> None:
    file = tmp_path / "requirements.txt"
    file.write_text("scikit-learn==1.5.2  # pinned\nnumpy>=1.24\nJoblib == 1.4.0\n# comment\npandas\n")
    assert runtime_deps.requirement_pins(file) == {"scikit-learn": "1.5.2", "joblib": "1.4.0"}
    assert runtime_deps.requirement_pins(tmp_path / "missing.txt") == {}


def test_runtime_requirements_prefer_project_pins_then_saved_versions() -> None:
    found = runtime_deps.runtime_requirements(
        ("scikit-learn", "numpy", "joblib"), {"scikit-learn": "1.4.0", "numpy": "1.26.4", "joblib": None},
        {"numpy": "2.0.1"})
    assert "scikit-learn==1.4.0" in found  # the version the model was saved with
    assert "numpy==2.0.1" in found  # the project's pin wins
    assert any(line.startswith("starlette") for line in found)  # the serving stack comes too
    assert not any(line.startswith(("pytest", "PyYAML", "pandas")) for line in found)  # no training stack
    assert found == sorted(found)


def test_dockerfile_orders_layers_and_puts_labels_last() -> None:
    text = context.dockerfile("localhost/base:1", "3.11", {"org.opencontainers.image.revision": "abc"})
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    copies = [line.split()[1] for line in lines if line.startswith("COPY")]
    assert copies == ["runtime/", "conveyor/", "app/"]  # least to most often changed
    assert lines[0] == "FROM localhost/base:1"
    assert lines[-1].startswith("LABEL")  # changes every build: after every layer
    assert "USER 10001" in lines and "EXPOSE 8080" in lines
    assert "/opt/venv/lib/python3.11/site-packages/" in text


def test_package_base_image_key_is_checked(tmp_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor import config
    from conveyor.exceptions import ConfigError

    path = tmp_repo / "conveyor.yaml"
    original = path.read_text()
    path.write_text(original + "package:\n  base_image: localhost/py:3.11\n  python: '3.11'\n")
    loaded = config.load(tmp_repo, tmp_repo / ".conveyor")
    assert (loaded.package.base_image, loaded.package.python) == ("localhost/py:3.11", "3.11")
    path.write_text(original + "package:\n  python: eleven\n")
    with pytest.raises(ConfigError, match="python"):
        config.load(tmp_repo, tmp_repo / ".conveyor")


# -- real images ------------------------------------------------------------------------------

def _free_port(count: int = 1) -> int:
    """A port (and the `count - 1` after it) free on loopback for a container to publish.

    Chosen below the kernel's ephemeral range: a port picked there (bind to 0)
    and published only later can meanwhile be taken by any outgoing connection
    of the tests running beside this one, which has happened.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low - count), 200):
        try:
            with contextlib.ExitStack() as stack:
                for offset in range(count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    pytest.fail("no free port below the ephemeral range")


@pytest.fixture(scope="session")
def podman_env() -> Iterator[dict[str, str]]:
    """The environment podman runs with here (project-local config) and the base image's name."""
    if shutil.which("podman") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("podman is not installed; .ci/run installs it")
        pytest.skip("podman is not installed (.ci/run installs it)")
    done = subprocess.run(["bash", str(REPO / "scripts" / "containers.sh")], capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def _conveyor(root: Path, *args: str, timeout: float = 900) -> str:
    done = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"conveyor {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


class _Images:
    """Image names unique to this test session, removed at its end."""

    def __init__(self) -> None:
        self.prefix = f"localhost/conveyor-test-{uuid.uuid4().hex[:8]}"
        self.made: list[str] = []

    def name(self, what: str) -> str:
        self.made.append(f"{self.prefix}/{what}")
        return self.made[-1]


@pytest.fixture(scope="module")
def images(podman_env: dict[str, str]) -> Iterator[_Images]:
    made = _Images()
    yield made
    if made.made:
        _podman("rmi", "--force", "--ignore", *made.made, check=False)


@pytest.fixture(scope="module")
def iris_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris example, its line run once (iris@1), not deployed."""
    root = tmp_path_factory.mktemp("package") / "iris"
    _conveyor(root.parent, "init", str(root), "--example", "iris")
    _conveyor(root, "run", "--no-deploy")
    return root


def _package(root: Path, ref: str, tag: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = _conveyor(root, "package", ref, "--builder", "podman", "--base-image", env["CONVEYOR_BASE_IMAGE"],
                    "--tag", tag, "--json", *extra)
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Names of containers a test starts; each is removed (stopped first) at the end of the test."""
    names: list[str] = []
    yield names
    for name in names:
        _podman("rm", "--force", "--time", "5", name, check=False)


def _wait_ready(url: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=5)
            if answer.status_code == 200:
                ready: dict[str, Any] = answer.json()
                return ready
        except httpx.HTTPError:
            pass
        state = _podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state in ("exited", "stopped"):
            pytest.fail(f"container exited: {_podman('logs', name, check=False).stderr[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"{url}/readyz did not answer 200 within {READY_TIMEOUT_S} s")


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_image_serves_predictions_as_non_root_with_labels_and_lineage(
        iris_project: Path, podman_env: dict[str, str], images: _Images, container: list[str]) -> None:
    from conveyor import load_model

    tag = images.name("iris:1")
    made = _package(iris_project, "iris@1", tag, podman_env)
    assert made["image_id"].startswith("sha256:") and made["tag"] == tag

    info = json.loads(_podman("image", "inspect", tag).stdout)[0]
    labels = info["Labels"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=iris_project, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == commit
    assert labels["org.opencontainers.image.version"] == "1"
    assert labels["org.opencontainers.image.created"] and labels["org.opencontainers.image.source"]
    lineage = json.loads(_conveyor(iris_project, "models", "lineage", "iris@1", "--json"))
    assert labels["io.conveyor.model.name"] == "iris"
    assert labels["io.conveyor.model.digest"] == lineage["digest"]
    assert lineage["image"] == made["image_id"]  # recorded on the version
    assert info["Config"]["User"] == "10001"
    assert "8080/tcp" in info["Config"]["ExposedPorts"]
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"])  # podman shows it beside Config

    name, port = f"conveyor-test-{uuid.uuid4().hex[:8]}", _free_port()
    container.append(name)
    _podman("run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:8080", tag)
    url = f"http://127.0.0.1:{port}"
    ready = _wait_ready(url, name)
    assert ready["model"]["version"] == 1
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    answer = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    model_dir = iris_project / ".conveyor" / "models" / lineage["digest"].removesuffix(".dir")
    expected = load_model(model_dir).predict(rows).tolist()
    assert answer.json()["predictions"] == expected
    assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"

    _podman("stop", "--time", "30", name)  # SIGTERM; SIGKILL only after 30 s
    logs = _podman("logs", name).stderr
    assert "Application shutdown complete" in logs, logs[-2000:]
    assert _podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() != "137"  # not killed


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_generated_dockerfile_passes_hadolint(iris_project: Path, podman_env: dict[str, str],
                                              tmp_path: Path) -> None:
    out = tmp_path / "build-lint"  # outside the repository, which must stay clean for `conveyor run`
    _conveyor(iris_project, "package", "iris@1", "--no-build", "--output", str(out), "--base-image",
              podman_env["CONVEYOR_BASE_IMAGE"])
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(out / "Dockerfile")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (out / "runtime" / "pip").exists()  # nothing installs at run time


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_a_new_model_version_changes_only_the_model_layer(
        iris_project: Path, podman_env: dict[str, str], images: _Images) -> None:
    first = _package(iris_project, "iris@1", images.name("iris:layers-1"), podman_env)
    params = iris_project / "params.yaml"
    params.write_text(params.read_text().replace("C: 1.0", "C: 0.5"))
    commit_all(iris_project, "weaker regularisation")
    _conveyor(iris_project, "run", "--no-deploy")
    second = _package(iris_project, "iris@2", images.name("iris:layers-2"), podman_env)
    assert second["ref"] == "iris@2" and second["requirements"] == first["requirements"]
    assert len(first["layers"]) == len(second["layers"]) >= 4
    assert first["layers"][:-1] == second["layers"][:-1]  # base, venv, runtime packages, serving code
    assert first["layers"][-1] != second["layers"][-1]  # the model


@pytest.fixture(scope="module")
def iris_onnx_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris example with `package.runtime: onnx`, its line run once (iris@1 and its ONNX form)."""
    root = tmp_path_factory.mktemp("package-onnx") / "iris"
    _conveyor(root.parent, "init", str(root), "--example", "iris")
    config = root / "conveyor.yaml"
    config.write_text(config.read_text() + "\npackage:\n  runtime: onnx\n")
    commit_all(root, "serve with onnxruntime")
    _conveyor(root, "run", "--no-deploy")
    return root


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_onnx_image_serves_the_native_predictions_without_scikit_learn(
        iris_project: Path, podman_env: dict[str, str], images: _Images, container: list[str]) -> None:
    from sklearn.datasets import load_iris

    from conveyor import load_model

    tag = images.name("iris:onnx")
    made = _package(iris_project, "iris@1", tag, podman_env, "--runtime", "onnx")  # converted now: no form yet
    assert made["runtime"] == "onnx"
    packages = {line.split("==")[0] for line in made["requirements"]}
    assert {"onnxruntime", "numpy", "starlette"} <= packages
    assert not packages & {"scikit-learn", "scipy", "joblib", "onnx"}
    shown = json.loads(_conveyor(iris_project, "models", "show", "iris@1", "--json"))
    serving = shown["lineage"]["serving"]
    assert serving == made["serving"] and serving["converted_from"] == shown["digest"]
    labels = json.loads(_podman("image", "inspect", tag).stdout)[0]["Labels"]
    assert labels["io.conveyor.model.runtime"] == "onnx"
    assert labels["io.conveyor.model.serving-digest"] == serving["digest"]
    assert labels["io.conveyor.model.digest"] == shown["digest"]  # the version it stands for

    base = int(_podman("image", "inspect", "--format", "{{.Size}}", podman_env["CONVEYOR_BASE_IMAGE"]).stdout)
    added = int(_podman("image", "inspect", "--format", "{{.Size}}", tag).stdout) - base
    assert added < 150e6, f"the onnx image adds {added / 1e6:.1f} MB to the base"
    for module in ("sklearn", "scipy", "onnxruntime.quantization"):
        done = _podman("run", "--rm", tag, "python3", "-c", f"import {module}", check=False)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, module
    session = ("import numpy, onnxruntime; s = onnxruntime.InferenceSession('/app/model/model.onnx', "
               "providers=['CPUExecutionProvider']); "
               "print(s.run(None, {s.get_inputs()[0].name: numpy.array([[5.1, 3.5, 1.4, 0.2]])})[0].tolist())")
    assert _podman("run", "--rm", tag, "python3", "-c", session).stdout.strip() == "[0]"  # trimmed, still runs

    name, port = f"conveyor-test-{uuid.uuid4().hex[:8]}", _free_port()
    container.append(name)
    _podman("run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:8080", tag)
    url = f"http://127.0.0.1:{port}"
    ready = _wait_ready(url, name)
    assert ready["model"]["version"] == 1 and ready["model"]["flavor"] == "onnx"
    rows = load_iris().data[::5].tolist()
    answer = httpx.post(f"{url}/predict", json={"rows": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    native = load_model(iris_project / ".conveyor" / "models" / shown["digest"].removesuffix(".dir"))
    assert answer.json()["predictions"] == native.predict(rows).tolist()
    assert len(set(answer.json()["predictions"])) == 3
    assert "telemetry" not in _podman("logs", name).stderr  # ORT_DISABLE_TELEMETRY=1


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_an_onnx_model_only_rebuild_changes_only_the_model_layer(
        iris_onnx_project: Path, podman_env: dict[str, str], images: _Images) -> None:
    first = _package(iris_onnx_project, "iris@1", images.name("iris:onnx-layers-1"), podman_env)
    lineage = json.loads(_conveyor(iris_onnx_project, "models", "show", "iris@1", "--json"))["lineage"]
    assert first["runtime"] == "onnx" and first["serving"] == lineage["serving"]  # made by the line
    params = iris_onnx_project / "params.yaml"
    params.write_text(params.read_text().replace("C: 1.0", "C: 0.5"))
    commit_all(iris_onnx_project, "weaker regularisation")
    assert "serving form" in _conveyor(iris_onnx_project, "run", "--no-deploy")
    second = _package(iris_onnx_project, "iris@2", images.name("iris:onnx-layers-2"), podman_env)
    assert second["ref"] == "iris@2" and second["requirements"] == first["requirements"]
    assert second["serving"]["digest"] != first["serving"]["digest"]
    assert len(first["layers"]) == len(second["layers"]) >= 4
    assert first["layers"][:-1] == second["layers"][:-1]  # base, venv, runtime packages, serving code
    assert first["layers"][-1] != second["layers"][-1]  # the model


@pytest.fixture
def local_registry(tmp_path: Path) -> Iterator[str]:
    """Debian's `docker-registry` (distribution v2) on a free loopback port, with its own storage."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed; .ci/run installs it")
        pytest.skip("docker-registry is not installed (.ci/run installs it)")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"""\
version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {tmp_path / 'registry-data'}}}
http:
  addr: 127.0.0.1:{port}
""")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "docker-registry did not answer /v2/ within 60 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_push_to_a_registry_records_the_reference_and_pulls_back_by_digest(
        iris_project: Path, podman_env: dict[str, str], images: _Images, local_registry: str) -> None:
    repository = f"{local_registry}/conveyor/iris"
    made = _package(iris_project, "iris@1", images.name("iris:push"), podman_env, "--push", repository,
                    "--no-tls-verify")
    reference, _, digest = made["pushed"].partition("@")
    assert reference == f"{repository}:1" and digest.startswith("sha256:")
    images.made.append(reference)
    lineage = json.loads(_conveyor(iris_project, "models", "lineage", "iris@1", "--json"))
    assert lineage["image"] == digest

    pulled = f"{repository}@{digest}"
    _podman("rmi", "--force", reference)
    _podman("pull", "--tls-verify=false", pulled)
    images.made.append(pulled)
    info = json.loads(_podman("image", "inspect", pulled).stdout)[0]
    assert info["Id"] == made["image_id"].removeprefix("sha256:")
    assert info["Labels"]["io.conveyor.model.version"] == "1"


def test_package_without_a_project_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["package", "iris@1", "--no-build"])
    assert result.exit_code != 0
    assert result.output.startswith("Error:") and "Traceback" not in result.output
