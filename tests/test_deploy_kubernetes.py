"""The Kubernetes target: manifests validated offline, apply/rollout/rollback through kubectl."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from test_packaging import _free_port, _Images, _package, _podman, images, iris_project, podman_env  # noqa: F401

from conveyor.cli import main
from conveyor.deploy import kubernetes as k8s
from conveyor.exceptions import ConveyorError


def _validator() -> str:
    return shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")


def test_dry_run_writes_manifests_that_kubernetes_validate_accepts(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = CliRunner().invoke(main, ["kubernetes", "deploy", "registry.example/ml/iris:3", "--name", "iris",
                                       "--max-replicas", "6", "--pdb", "--dry-run", "--output", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["deployment.yaml", "horizontalpodautoscaler.yaml", "poddisruptionbudget.yaml", "service.yaml"]
    done = subprocess.run([_validator(), "--strict", *map(str, sorted(out.iterdir()))], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    deployment = yaml.safe_load((out / "deployment.yaml").read_text())
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    model = pod["containers"][0]
    assert model["image"] == "registry.example/ml/iris:3"
    assert model["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert model["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert model["resources"]["requests"] and model["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert model["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_broken_manifest_is_rejected_by_the_validator(tmp_path: Path) -> None:
    """The validation above can fail: a Deployment without a selector is refused."""
    broken = k8s.render("img:1", "iris")[0]
    del broken["spec"]["selector"]
    path = tmp_path / "broken.yaml"
    path.write_text(k8s.to_yaml([broken]))
    done = subprocess.run([_validator(), "--strict", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0


STAND_IN_KUBECTL = """#!/bin/sh
# A stand-in for kubectl: records its arguments; `apply -f F` makes F the cluster's state.
echo "$*" >> "{log}"
if [ "$1" = apply ]; then cp "$3" "{cluster}"; fi
if [ "$1" = rollout ] && [ -e "{fail}" ]; then echo "deployment exceeded its progress deadline" >&2; exit 1; fi
exit 0
"""


def _image_in(cluster: Path) -> str:
    deployment = next(yaml.safe_load_all(cluster.read_text()))
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_apply_waits_for_rollout_and_rollback_reapplies_the_previous_set_with_stand_in_kubectl(
        tmp_path: Path) -> None:
    log, cluster, fail = tmp_path / "kubectl.log", tmp_path / "cluster.yaml", tmp_path / "fail"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(STAND_IN_KUBECTL.format(log=log, cluster=cluster, fail=fail))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state"

    k8s.apply(k8s.render("reg/iris:1", "iris"), "iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    k8s.apply(k8s.render("reg/iris:2", "iris"), "iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    assert _image_in(cluster) == "reg/iris:2"
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["apply", "rollout", "apply", "rollout"]
    assert calls[1].startswith("rollout status deployment/iris")

    fail.touch()  # a rollout that never completes is an error, and not a set to roll back to
    with pytest.raises(ConveyorError, match="progress deadline"):
        k8s.apply(k8s.render("reg/iris:3", "iris"), "iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    fail.unlink()

    k8s.apply(k8s.render("reg/iris:2", "iris"), "iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    k8s.rollback("iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    assert _image_in(cluster) == "reg/iris:2"  # the set before the newest one
    k8s.rollback("iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)
    assert _image_in(cluster) == "reg/iris:1"
    with pytest.raises(ConveyorError, match="no earlier applied manifests"):
        k8s.rollback("iris", state_dir=state, kubectl=str(kubectl), timeout_s=60)


def test_apply_without_kubectl_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConveyorError, match="--dry-run"):
        k8s.apply(k8s.render("reg/iris:1", "iris"), "iris", state_dir=tmp_path,
                  kubectl=str(tmp_path / "no-kubectl"), timeout_s=5)
    assert os.listdir(tmp_path / "kubernetes" / "iris") == ["0001.failed"]


@pytest.mark.slow
@pytest.mark.xdist_group("containers")
def test_podman_kube_play_serves_a_prediction_from_the_rendered_deployment(
        iris_project: Path, podman_env: dict[str, str], images: _Images, tmp_path: Path) -> None:  # noqa: F811
    """The Deployment as rendered (non-root, read-only root filesystem, probes) runs a real pod."""
    image = images.name("iris:kube")
    _package(iris_project, "iris@1", image, podman_env)
    name = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    deployment = k8s.render(image, name, replicas=1)[0]
    port = _free_port()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["hostPort"] = port  # what a Service would do in a cluster
    container["imagePullPolicy"] = "Never"
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(k8s.to_yaml([deployment]))
    try:
        _podman("kube", "play", str(manifest))
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the pod did not answer /readyz within 180 s"
            time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == 1
    finally:
        _podman("kube", "down", str(manifest), check=False)
