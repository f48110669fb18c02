"""`conveyor deploy` and `conveyor deployments restart|traffic` against a real background server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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


class _Requests:
    """Predictions sent to the local server from a thread (rows of every iris class, in turn) while it runs."""

    def __init__(self, port: int) -> None:
        import threading

        self.port, self.stop, self.answered, self.not_setosa = port, threading.Event(), 0, 0
        self.rows = load_iris(return_X_y=True)[0][::5].tolist()
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        import http.client

        sent = 0
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("POST", "/predict", json.dumps({"rows": [self.rows[sent % len(self.rows)]]}),
                             {"content-type": "application/json"})
                if conn.getresponse().status == 200:
                    self.answered += 1
                    self.not_setosa += sent % len(self.rows) >= len(self.rows) // 3  # rows 0-9 of 30 are setosa
            except OSError:
                self.stop.wait(0.05)
            finally:
                conn.close()
            sent += 1

    def __enter__(self) -> _Requests:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _register(proj: _Project, model: object) -> int:
    X, _ = load_iris(return_X_y=True)
    path = save_model(model, proj.root / "build" / type(model).__name__, X[:5])
    version, _ = proj.registry.register(name="iris", digest=ArtifactStore(proj.project.cache_dir).put(path),
                                        flavor="sklearn", signature=read_metadata(path).signature, metrics={},
                                        params={}, lineage={}, gates=[], run_id=None)
    return version.version


def test_a_canary_over_max_disagreement_is_rolled_back_and_an_identical_one_promoted(proj: _Project) -> None:
    from sklearn.dummy import DummyClassifier

    X, y = load_iris(return_X_y=True)
    constant = _register(proj, DummyClassifier(strategy="constant", constant=0).fit(X, y))  # v3: always setosa
    same = _register(proj, LogisticRegression(C=1.0, max_iter=999).fit(X, y))  # v4: v1's predictions, unreached max_iter
    assert proj.cli("deploy", "iris@production").returncode == 0
    canary = ("--strategy", "canary", "--steps", "100", "--interval", "1", "--min-requests", "20",
              "--max-disagreement", "0.05")
    with _Requests(proj.port):
        different = proj.cli("deploy", f"iris@{constant}", *canary)
        assert different.returncode == 1, different.stdout + different.stderr
        assert "rolled back: disagreement " in different.stdout
        assert "with stable at 100% of traffic is over the limit 5.0%" in different.stdout
        last = proj.registry.alias_history("iris", "production")[0]
        assert (last.kind, last.to_version) == ("rollback", 1) and "disagreement" in last.reason

        identical = proj.cli("deploy", f"iris@{same}", *canary, "--json")
        assert identical.returncode == 0, identical.stdout + identical.stderr
        outcome = json.loads(identical.stdout)
        assert outcome["result"] == "promoted" and "disagreement 0.0%" in outcome["reason"]
    assert proj.registry.aliases("iris")["production"] == same


def test_deployments_shows_a_shadows_disagreement_and_latency(proj: _Project) -> None:
    from sklearn.dummy import DummyClassifier

    X, y = load_iris(return_X_y=True)
    constant = _register(proj, DummyClassifier(strategy="constant", constant=0).fit(X, y))
    assert proj.cli("deploy", "iris@production").returncode == 0
    local.set_traffic(proj.project, f"iris@{constant}", 100, mode="shadow")
    with _Requests(proj.port) as requests:
        deadline = time.monotonic() + 60
        while requests.answered < 30:
            assert time.monotonic() < deadline and requests.thread.is_alive(), "30 answers within 60s"
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while True:  # shadow copies are predicted after stable answered
        shown = json.loads(proj.cli("deployments", "--json").stdout)["traffic"]
        if shown["predictions"] >= requests.answered or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (shown["mode"], shown["candidate"], shown["errors"]) == ("shadow", f"iris@{constant}", 0)
    assert shown["predictions"] == shown["compared"] == requests.answered
    assert shown["disagreed"] == requests.not_setosa > 0  # the constant candidate is right on setosa rows only
    assert shown["p99_ms"] is not None
    text = proj.shown()
    assert f"100% of traffic, shadow iris@{constant} gets 100%" in text
    assert f"disagreement {shown['disagreement']:.1%} ({shown['disagreed']} of {shown['compared']})" in text


def test_the_dashboard_shows_the_split_of_a_canary_and_of_a_shadow(proj: _Project) -> None:
    from conveyor.dashboard.live import Share, live_servers

    assert proj.cli("deploy", "iris@production").returncode == 0
    assert live_servers(proj.project)[0].traffic == [Share(1, 100.0, "stable")]
    local.set_traffic(proj.project, "iris@2", 30)
    assert live_servers(proj.project)[0].traffic == [Share(1, 70.0, "stable"), Share(2, 30.0, "canary")]
    local.set_traffic(proj.project, None, 0)
    local.set_traffic(proj.project, "iris@2", 50, mode="shadow")  # copies: stable still answers everything
    assert live_servers(proj.project)[0].traffic == [Share(1, 100.0, "stable"), Share(2, 50.0, "shadow")]
