"""`conveyor deploy` and `conveyor deployments restart|traffic` against a real background server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from conveyor.deploy import local
from conveyor.model import read_metadata, save_model
from conveyor.project import Project
from conveyor.registry import Registry
from conveyor.store import ArtifactStore

pytestmark = pytest.mark.slow  # starts servers that import scikit-learn


class _Project:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "conveyor.yaml").write_text(
            "project: iris\nstages:\n  train: {cmd: 'true', outs: [model/]}\nmodel: {name: iris, path: model/}\n"
            "deploy: {workers: 1, follow_interval_s: 0.2}\n"
        )
        self.root = root
        self.project = Project(root)
        self.registry = Registry(self.project.default_registry_url)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        X, y = load_iris(return_X_y=True)
        for C in (1.0, 0.05):
            path = save_model(LogisticRegression(C=C, max_iter=1000).fit(X, y), root / "build" / str(C), X[:5])
            self.registry.register(name="iris", digest=ArtifactStore(self.project.cache_dir).put(path),
                                   flavor="sklearn", signature=read_metadata(path).signature, metrics={}, params={},
                                   lineage={}, gates=[], run_id=None)
        self.registry.set_alias("iris", "production", 1, actor="test", reason="test")

    def shown(self) -> str:
        """`conveyor deployments`, whitespace normalised."""
        return " ".join(self.cli("deployments").stdout.split())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=self.root, capture_output=True, text=True,
                              timeout=120, check=False, env={**os.environ, "CONVEYOR_PORT": str(self.port),
                                                              "CONVEYOR_ACTOR": "tester"})


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[_Project]:
    built = _Project(tmp_path / "proj")
    yield built
    local.stop(built.project, timeout_s=20)
    built.registry.close()


def test_deploy_starts_then_switches_the_same_server(proj: _Project) -> None:
    started = proj.cli("deploy", "iris@production", "--json")
    assert started.returncode == 0, started.stderr
    first = json.loads(started.stdout)
    assert (first["ref"], first["version"]) == ("iris@production", 1)
    pinned = proj.cli("deploy", "iris@2")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.startswith(f"iris@2: iris@2 is live at http://127.0.0.1:{proj.port} (pid {first['pid']},")
    assert f"iris@2 (iris@2) at http://127.0.0.1:{proj.port} · pid {first['pid']} · 100% of traffic" in proj.shown()
    missing = proj.cli("deploy", "iris@7")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and "Traceback" not in missing.stderr


def test_a_canary_needs_a_server_that_follows_the_alias(proj: _Project) -> None:
    alone = proj.cli("deploy", "iris@2", "--strategy", "canary")
    assert alone.returncode == 1
    assert alone.stderr.startswith("Error: a canary rollout needs the local server to follow iris@production")
    nothing = proj.cli("deployments", "traffic", "0")
    assert nothing.returncode == 1 and "no local server is running" in nothing.stderr


def test_traffic_by_hand_rolls_back_or_promotes_a_rollout_left_behind(proj: _Project) -> None:
    assert proj.cli("deploy", "iris@production").returncode == 0
    assert "no rollout is in progress" in proj.cli("deployments", "traffic", "0").stderr
    # what a `conveyor deploy --strategy canary` killed mid-way leaves: the alias moved, the split in force
    local.set_traffic(proj.project, "iris@2", 30)
    proj.registry.set_alias("iris", "production", 2, actor="test", reason="canary", kind="canary")
    assert "iris@1 (iris@production)" in proj.shown() and "70% of traffic, canary iris@2 30%" in proj.shown()

    held = proj.cli("deployments", "traffic", "50")
    assert held.returncode == 0 and "holding: 50% of traffic to iris@2 (canary), the rest to iris@1" in held.stdout
    back = proj.cli("deployments", "traffic", "0")
    assert back.returncode == 0 and "rolled back: iris@1 answers every request" in back.stdout
    last = proj.registry.alias_history("iris", "production")[0]
    assert (last.kind, last.to_version, last.actor) == ("rollback", 1, "tester") and "by hand" in last.reason
    assert local.deployment_state(proj.project)["traffic"] is None

    local.set_traffic(proj.project, "iris@2", 30)
    promoted = proj.cli("deployments", "traffic", "100")
    assert promoted.returncode == 0 and "promoted: iris@2 answers every request" in promoted.stdout
    assert proj.registry.aliases("iris")["production"] == 2
    assert local.current(proj.project) is not None and local.current(proj.project).version == 2  # type: ignore[union-attr]


def test_restart_replaces_the_workers(proj: _Project) -> None:
    assert proj.cli("deploy", "iris@production").returncode == 0
    before = local.deployment_state(proj.project)["pid"]
    restarted = proj.cli("deployments", "restart")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.startswith(f"Restarted the workers of http://127.0.0.1:{proj.port} (iris@1)")
    assert local.deployment_state(proj.project)["pid"] != before


def test_a_restart_whose_new_workers_cannot_load_keeps_the_old_ones(proj: _Project) -> None:
    import shutil

    import httpx

    assert proj.cli("deploy", "iris@production").returncode == 0
    before = local.deployment_state(proj.project)["pid"]
    shutil.rmtree(proj.project.models_dir)  # what a new worker would load from is gone
    shutil.rmtree(proj.project.cache_dir)
    restarted = proj.cli("deployments", "restart")
    assert restarted.returncode == 1 and restarted.stderr.startswith("Error: the rolling restart of the local server")
    assert "a new worker 0 failed 3 times to start; the old workers keep serving" in restarted.stderr
    assert "Traceback" not in restarted.stderr
    assert local.deployment_state(proj.project)["pid"] == before  # the old worker kept serving throughout
    answer = httpx.post(f"http://127.0.0.1:{proj.port}/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"


def test_predictions_need_token_guards_predictions_with_a_private_token_file(proj: _Project) -> None:
    import stat

    import httpx

    config = proj.root / "conveyor.yaml"
    config.write_text(config.read_text().replace("deploy: {workers: 1,", "deploy: {workers: 1, predictions_need_token: true,"))
    assert proj.cli("deploy", "iris@production").returncode == 0
    path = proj.project.state_dir / "predict.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    url = f"http://127.0.0.1:{proj.port}"
    row = {"rows": [[5.1, 3.5, 1.4, 0.2]]}
    assert httpx.post(f"{url}/predict", json=row, timeout=10).status_code == 401
    token = path.read_text().strip()
    assert httpx.post(f"{url}/predict", json=row, headers={"authorization": f"Bearer {token}"},
                      timeout=10).status_code == 200
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    path.chmod(0o644)  # loosened by hand: the next start tightens it again and keeps the token
    assert proj.cli("deployments", "stop").returncode == 0
    assert proj.cli("deploy", "iris@production").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == token
