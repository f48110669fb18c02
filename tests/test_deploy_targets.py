"""`deploy.target: container | kubernetes`: the line and `conveyor deploy --target` with real podman containers,
a real registry on loopback, and a stand-in kubectl (no cluster runs here)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import commit_all
from test_deploy_container import deployment  # noqa: F401
from test_deploy_kubernetes import STAND_IN_KUBECTL, _image_in, _validator
from test_deploy_live import _Load
from test_packaging import (  # noqa: F401
    READY_TIMEOUT_S,
    _conveyor,
    _free_port,
    _podman,
    local_registry,
    podman_env,
)

from conveyor.deploy import container

ROWS = {"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


def _project(parent: Path, deploy: dict[str, object]) -> Path:
    """The iris example with `deploy:` replaced by `deploy`."""
    root = parent / "iris"
    _conveyor(parent, "init", str(root), "--example", "iris")
    config = yaml.safe_load((root / "conveyor.yaml").read_text())
    config["deploy"] = deploy
    (root / "conveyor.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    commit_all(root, "deploy elsewhere")
    return root


def _new_model(root: Path, c: str) -> None:
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("C: 1.0", f"C: {c}"))
    commit_all(root, f"C = {c}")


def _line(root: Path) -> dict[str, dict[str, object]]:
    """`conveyor run`; its steps by name."""
    _conveyor(root, "run")
    run = json.loads(_conveyor(root, "runs", "show", "--json"))
    return {step["name"]: step for step in run["steps"]}


def _version(url: str) -> str:
    answer = httpx.post(f"{url}/predict", json=ROWS, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_the_line_deploys_to_a_container_and_hot_swaps_a_model_only_change_under_load(
        tmp_path: Path, podman_env: dict[str, str], deployment: str) -> None:  # noqa: F811
    port = _free_port(2)
    root = _project(tmp_path, {"target": "container", "port": port,
                               "container": {"name": deployment, "ready_timeout_s": READY_TIMEOUT_S}})

    steps = _line(root)
    assert steps["deploy"]["status"] == "ran", steps["deploy"]
    url = f"http://127.0.0.1:{port}"
    assert _version(url) == "1"
    [first] = container.containers(deployment)
    assert first.running and first.labels["io.conveyor.model.version"] == "1"

    _new_model(root, "0.5")
    with _Load(port) as load:  # client threads, a new connection per request
        steps = _line(root)
        assert "hot-swapped" in str(steps["deploy"]["summary"]), steps["deploy"]
        assert _version(url) == "2"  # live when the line's deploy step is done
    assert load.failures == []
    assert {version for version, _, _ in load.answers} == {1, 2}
    first_new = min(received for version, _, received in load.answers if version == 2)
    assert all(version == 2 for version, sent, _ in load.answers if sent > first_new)  # never back to v1
    assert [c.name for c in container.containers(deployment)] == [first.name]  # no new container

    steps = _line(root)  # nothing changed: the deploy step sees v2 served and does nothing
    assert steps["deploy"]["status"] == "cached", steps["deploy"]
    image = json.loads(_conveyor(root, "models", "lineage", "iris@2", "--json"))["image"]
    assert image, "the hot-swapped version's image is built and recorded too"

    out = _conveyor(root, "rollback", "iris")  # one command: the alias moves back and the container follows
    assert "v2 → v1" in out and "iris@1 hot-swapped" in out and _version(url) == "1"

    from conveyor.dashboard.live import live_servers
    from conveyor.project import Project

    [shown] = live_servers(Project(root))  # what the dashboard's deployments page lists
    assert (shown.target, shown.ref, shown.version, shown.url, shown.status) == ("container", "iris@1", 1, url, "ready")


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_deploy_target_container_refuses_a_tampered_model_rolls_back_and_survives_a_restart(
        tmp_path: Path, podman_env: dict[str, str], deployment: str) -> None:  # noqa: F811
    port = _free_port(2)
    root = _project(tmp_path, {"target": "local", "port": port, "container": {"name": deployment}})
    _conveyor(root, "run", "--no-deploy")
    _new_model(root, "0.5")
    _conveyor(root, "run", "--no-deploy")

    placed = json.loads(_conveyor(root, "deploy", "iris@1", "--target", "container", "--json"))
    assert placed["changed"] and placed["url"] == f"http://127.0.0.1:{port}"
    url = placed["url"]
    [serving] = container.containers(deployment)
    assert _version(url) == "1"

    # A copy of iris@2 whose model was altered after packaging: the container re-hashes it and refuses.
    context = Path(json.loads(_conveyor(root, "package", "iris@2", "--json", "--builder", "podman"))["context"])
    tampered = container.swap_dir(root / ".conveyor", deployment, serving.name) / "iris@2"
    shutil.copytree(context / "app", tampered)
    with (tampered / "model" / "model.joblib").open("ab") as artifact:
        artifact.write(b"\0")
    done = subprocess.run([sys.executable, "-m", "conveyor", "deploy", "iris@2", "--target", "container"],
                          cwd=root, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 1 and "refused to serve iris@2" in done.stderr and "digest" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert _version(url) == "1"  # still serving the version it served
    shutil.rmtree(tampered)

    out = _conveyor(root, "deploy", "iris@2", "--target", "container")
    assert "hot-swapped" in out and _version(url) == "2"
    listed = json.loads(_conveyor(root, "containers", "list", "--name", deployment, "--json"))
    assert [(c["name"], c["model"]) for c in listed] == [(serving.name, "iris@2")]

    # A restarted container serves what was swapped in last. (Stop, then start: podman 4.3's `restart` can
    # race with the exiting instance's network cleanup, which then removes the new instance's port mapping.)
    _podman("stop", "--time", "10", serving.name)
    _podman("start", serving.name)
    _wait_answering(url, serving.name)
    assert _version(url) == "2"

    out = _conveyor(root, "containers", "rollback", "--name", deployment)
    assert "swapped back from iris@2 to iris@1" in out and _version(url) == "1"
    out = _conveyor(root, "deploy", "iris@1", "--target", "container")
    assert "already served" in out


def _wait_answering(url: str, name: str) -> None:
    import time

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if _podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip() != "running":
            break
        time.sleep(0.5)
    state = _podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name, check=False).stdout
    inside = _podman("exec", name, "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                     "'http://127.0.0.1:8080/readyz', timeout=5).status)", check=False)
    logs = _podman("logs", "--tail", "30", name, check=False)
    pytest.fail(f"{url} did not become ready after a restart; container {state.strip()}, /readyz from inside: "
                f"{(inside.stdout + inside.stderr).strip()[-300:]}; log:\n{(logs.stdout + logs.stderr)[-2000:]}")


def test_deploy_target_kubernetes_dry_run_writes_valid_manifests_without_building(tmp_path: Path) -> None:
    root = _project(tmp_path, {"target": "kubernetes", "kubernetes": {"name": "iris-prod", "replicas": 3,
                                                                      "max_replicas": 6, "disruption_budget": True}})
    _conveyor(root, "run", "--no-deploy")  # registers and promotes iris@1
    out = tmp_path / "k8s"
    _conveyor(root, "deploy", "iris@production", "--dry-run", "--output", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "horizontalpodautoscaler.yaml",
                                                      "poddisruptionbudget.yaml", "service.yaml"]
    deployment = yaml.safe_load((out / "deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == "iris-prod" and deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "conveyor/iris:1"
    checked = subprocess.run([_validator(), "--strict", *map(str, sorted(out.iterdir()))],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    printed = list(yaml.safe_load_all(_conveyor(root, "deploy", "iris@production", "--dry-run")))
    assert [doc["kind"] for doc in printed] == ["Deployment", "Service", "HorizontalPodAutoscaler",
                                                "PodDisruptionBudget"]  # stdout is the manifests alone
    assert printed[0] == deployment


def test_deploy_target_kubernetes_without_a_registry_says_what_to_set(tmp_path: Path) -> None:
    root = _project(tmp_path, {"target": "kubernetes"})
    _conveyor(root, "run", "--no-deploy")
    done = subprocess.run([sys.executable, "-m", "conveyor", "deploy", "iris@1"], cwd=root, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 1 and "deploy.kubernetes.registry" in done.stderr and "Traceback" not in done.stderr
    canary = subprocess.run([sys.executable, "-m", "conveyor", "deploy", "iris@1", "--strategy", "canary"],
                            cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert canary.returncode == 2 and "--strategy replace" in canary.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_the_line_pushes_and_applies_to_kubernetes_with_stand_in_kubectl(
        tmp_path: Path, podman_env: dict[str, str], local_registry: str) -> None:  # noqa: F811
    log, cluster, fail = tmp_path / "kubectl.log", tmp_path / "cluster.yaml", tmp_path / "fail"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(STAND_IN_KUBECTL.format(log=log, cluster=cluster, fail=fail))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    repository = f"{local_registry}/ml/iris"
    root = _project(tmp_path, {"target": "kubernetes", "kubernetes": {
        "registry": repository, "tls_verify": False, "kubectl": str(kubectl), "rollout_timeout_s": 60}})

    steps = _line(root)
    assert steps["deploy"]["status"] == "ran", steps["deploy"]
    applied = _image_in(cluster)
    assert applied.startswith(f"{repository}:1@sha256:")  # by digest: what runs is what was tested
    assert json.loads(_conveyor(root, "models", "lineage", "iris@1", "--json"))["image"] == applied.split("@")[1]
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["apply", "rollout"]
    pulled = httpx.get(f"http://{local_registry}/v2/ml/iris/manifests/1", timeout=30,
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                          "application/vnd.docker.distribution.manifest.v2+json"})
    assert pulled.status_code == 200

    steps = _line(root)  # the same version: nothing pushed or applied again
    assert steps["deploy"]["status"] == "cached", steps["deploy"]
    assert len(log.read_text().splitlines()) == 2

    _new_model(root, "0.5")
    steps = _line(root)
    assert steps["deploy"]["status"] == "ran" and _image_in(cluster).startswith(f"{repository}:2@sha256:")
    out = _conveyor(root, "rollback", "iris")  # one command: the alias moves back and the cluster follows
    assert "v2 → v1" in out and "rolled out" in out
    assert _image_in(cluster) == applied  # v1's image, by the same digest as before
    _podman("rmi", "--force", "--ignore", f"{repository}:1", f"{repository}:2", "conveyor/iris:1",
            "conveyor/iris:2", check=False)


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_an_onnx_container_hot_swaps_the_next_versions_onnx_form(
        tmp_path: Path, podman_env: dict[str, str], deployment: str) -> None:  # noqa: F811
    from conveyor import load_model

    port = _free_port(2)
    root = _project(tmp_path, {"target": "container", "port": port,
                               "container": {"name": deployment, "ready_timeout_s": READY_TIMEOUT_S}})
    config = yaml.safe_load((root / "conveyor.yaml").read_text())
    config["package"] = {"runtime": "onnx"}
    (root / "conveyor.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    commit_all(root, "serve with onnxruntime")

    steps = _line(root)
    assert steps["serving form"]["status"] == "ran" and steps["deploy"]["status"] == "ran", steps["deploy"]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/readyz", timeout=10).json()["model"]["flavor"] == "onnx"
    [first] = container.containers(deployment)
    assert first.labels["io.conveyor.model.runtime"] == "onnx"

    _new_model(root, "0.5")
    steps = _line(root)
    assert "hot-swapped" in str(steps["deploy"]["summary"]), steps["deploy"]
    assert _version(url) == "2" and [c.name for c in container.containers(deployment)] == [first.name]
    digest = json.loads(_conveyor(root, "models", "lineage", "iris@2", "--json"))["digest"]
    native = load_model(root / ".conveyor" / "models" / digest.removesuffix(".dir"))
    answer = httpx.post(f"{url}/predict", json=ROWS, timeout=30).json()
    assert answer["predictions"] == native.predict(ROWS["rows"]).tolist()
