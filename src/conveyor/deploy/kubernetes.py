"""The Kubernetes target: manifests for a model image, applied with the `kubectl` already configured.

Conveyor renders; the cluster schedules. The Deployment rolls with
`maxUnavailable: 0` (a new pod must be ready before an old one goes), gates
traffic on `/readyz` and restarts on `/healthz`, runs as the image's non-root
user on a read-only root filesystem. Every applied set is kept under
`.conveyor/kubernetes/NAME/`, so a rollback re-applies the previous one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.packaging.context import USER_ID
from conveyor.packaging.runtime import PORT


@dataclass(frozen=True)
class Resources:
    """Requests (what the scheduler reserves) and limits (where the pod is throttled or killed)."""

    cpu_request: str = "250m"
    memory_request: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "512Mi"


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_percent: int = 70


def render(image: str, name: str, *, replicas: int = 2, resources: Resources = Resources(),
           autoscaling: Autoscaling | None = None, disruption_budget: bool = False,
           labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Deployment and Service (plus HorizontalPodAutoscaler and PodDisruptionBudget when asked) for `image`."""
    selector = {"app.kubernetes.io/name": name}
    meta = {"name": name, "labels": {**selector, "app.kubernetes.io/managed-by": "conveyor", **(labels or {})}}
    probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    pod = {
        "metadata": {"labels": meta["labels"]},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "model",
                "image": image,
                "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                "readinessProbe": probe,
                "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                "startupProbe": {**probe, "failureThreshold": 60},
                "resources": {"requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
                              "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    documents: list[dict[str, Any]] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": replicas, "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]
    if autoscaling is not None:
        documents.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                          "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                                   "minReplicas": autoscaling.min_replicas, "maxReplicas": autoscaling.max_replicas,
                                   "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                                       "type": "Utilization", "averageUtilization": autoscaling.cpu_percent}}}]}})
    if disruption_budget:
        documents.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
                          "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}}})
    return documents


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """The documents as one YAML stream, written out in full (no `&id001` anchors for shared labels)."""
    import yaml

    class _Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return "---\n".join(yaml.dump(doc, Dumper=_Plain, sort_keys=False) for doc in documents)


def _history(state_dir: Path, name: str) -> Path:
    return state_dir / "kubernetes" / name


def _kubectl(kubectl: str, *args: str, timeout_s: float) -> str:
    try:
        done = subprocess.run([kubectl, *args], capture_output=True, text=True, check=False, timeout=timeout_s + 30)
    except FileNotFoundError:
        raise ConveyorError(f"'{kubectl}' was not found; install kubectl and configure its context, "
                            "or pass --dry-run to only write the manifests") from None
    if done.returncode != 0:
        raise ConveyorError(f"kubectl {' '.join(args[:2])} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def apply(documents: list[dict[str, Any]], name: str, *, state_dir: Path, kubectl: str = "kubectl",
          timeout_s: float = 300.0) -> Path:
    """Apply the manifests, wait for `rollout status`, and keep them as the newest applied set."""
    history = _history(state_dir, name)
    history.mkdir(parents=True, exist_ok=True)
    number = max((int(p.stem) for p in history.glob("*.yaml") if p.stem.isdigit()), default=0) + 1
    path = history / f"{number:04d}.yaml"
    path.write_text(to_yaml(documents), encoding="utf-8")
    try:
        _kubectl(kubectl, "apply", "-f", str(path), timeout_s=timeout_s)
        _kubectl(kubectl, "rollout", "status", f"deployment/{name}", f"--timeout={int(timeout_s)}s",
                 timeout_s=timeout_s)
    except ConveyorError:
        path.rename(path.with_suffix(".failed"))  # not a set to roll back to
        raise
    return path


def applied_image(name: str, *, state_dir: Path) -> str | None:
    """The image of the newest set of manifests applied (and not rolled back) for `name`, if any."""
    import yaml

    applied = sorted(p for p in _history(state_dir, name).glob("*.yaml") if p.stem.isdigit())
    if not applied:
        return None
    for doc in yaml.safe_load_all(applied[-1].read_text(encoding="utf-8")):
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            return str(doc["spec"]["template"]["spec"]["containers"][0]["image"])
    return None


def rollback(name: str, *, state_dir: Path, kubectl: str = "kubectl", timeout_s: float = 300.0) -> Path:
    """Re-apply the set applied before the newest one, and wait for its rollout."""
    applied = sorted(p for p in _history(state_dir, name).glob("*.yaml") if p.stem.isdigit())
    if len(applied) < 2:
        raise ConveyorError(f"'{name}' has no earlier applied manifests under {_history(state_dir, name)} "
                            "to roll back to")
    previous = applied[-2]
    _kubectl(kubectl, "apply", "-f", str(previous), timeout_s=timeout_s)
    _kubectl(kubectl, "rollout", "status", f"deployment/{name}", f"--timeout={int(timeout_s)}s", timeout_s=timeout_s)
    applied[-1].rename(applied[-1].with_suffix(".rolled-back"))
    return previous
