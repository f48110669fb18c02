"""The local deployment target: a real `conveyor serve` process, started, reloaded and stopped."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from conveyor.deploy import local
from conveyor.exceptions import ServingError
from conveyor.model import read_metadata, save_model
from conveyor.project import Project
from conveyor.registry import ModelVersion, Registry
from conveyor.store import ArtifactStore

pytestmark = pytest.mark.slow  # every test here starts a Python process that imports scikit-learn

ROW = [5.1, 3.5, 1.4, 0.2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Broken:
    """An estimator the server cannot unpickle (its class lives in this test module)."""

    def predict(self, X: Any) -> Any:
        return np.zeros(len(X), dtype=np.int64)


class _Project:
    """A project directory with a registry and artifact store, and a way to publish versions."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "conveyor.yaml").write_text(
            "project: iris\nstages:\n  train: {cmd: 'true', outs: [model/]}\nmodel: {name: iris, path: model/}\n"
        )
        self.project = Project(root)
        self.url = self.project.default_registry_url
        self.registry = Registry(self.url)
        self.store = ArtifactStore(self.project.cache_dir)
        self.count = 0

    def publish(self, model: Any = None, C: float = 1.0) -> ModelVersion:
        X, y = load_iris(return_X_y=True)
        self.count += 1
        model = model if model is not None else LogisticRegression(C=C, max_iter=1000).fit(X, y)
        path = save_model(model, self.project.root / "build" / str(self.count), X[:5])
        version, _ = self.registry.register(
            name="iris", digest=self.store.put(path), flavor="sklearn", signature=read_metadata(path).signature,
            metrics={}, params={}, lineage={}, gates=[], run_id=None,
        )
        self.registry.set_alias("iris", "production", version.version, actor="test", reason="test")
        return version


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[_Project]:
    built = _Project(tmp_path / "proj")
    yield built
    local.stop(built.project, timeout_s=5)
    built.registry.close()


def _ensure(proj: _Project, port: int, ref: str = "iris@production") -> local.Deployment:
    return local.ensure_serving(proj.project, ref, host="127.0.0.1", port=port, registry_url=proj.url, timeout_s=30)


def test_start_reload_stop(proj: _Project) -> None:
    proj.publish()
    port = _free_port()
    first = _ensure(proj, port)
    assert (first.name, first.version, first.ref) == ("iris", 1, "iris@production")
    assert first.url == f"http://127.0.0.1:{port}"
    reply = httpx.post(f"{first.url}/predict", json={"rows": [ROW]})
    assert reply.json()["predictions"] == [0] and reply.headers["x-model-version"] == "1"

    state_path = proj.project.server_state_path
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    state = json.loads(state_path.read_text())
    assert state["pid"] == first.pid and len(state["token"]) > 30
    cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes()
    assert state["token"].encode() not in cmdline
    assert local.current(proj.project) == first

    proj.publish(C=0.05)
    second = _ensure(proj, port)
    assert (second.version, second.pid) == (2, first.pid)
    assert httpx.post(f"{first.url}/predict", json={"rows": [ROW]}).headers["x-model-version"] == "2"
    assert local.current(proj.project) == second

    proj.publish(_Broken())  # defined in this test module, which the server cannot import
    with pytest.raises(ServingError, match="could not switch to iris@production.*still serving iris@2.*cannot be loaded"):
        _ensure(proj, port)
    assert httpx.get(f"{first.url}/version").json()["version"] == 2

    stopped = local.stop(proj.project)
    assert stopped is not None and stopped.pid == first.pid
    assert not state_path.exists()
    assert local.current(proj.project) is None and local.stop(proj.project) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{first.url}/healthz")
    assert "serving iris@1 (iris@production)" in proj.project.server_log_path.read_text()


def test_another_ref_or_port_restarts_the_server(proj: _Project) -> None:
    proj.publish()
    proj.publish(C=0.05)
    first = _ensure(proj, _free_port())
    assert first.version == 2
    pinned = _ensure(proj, _free_port(), ref="iris@1")
    assert pinned.version == 1 and pinned.pid != first.pid and pinned.ref == "iris@1"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{first.url}/healthz")


def test_a_server_that_cannot_start_shows_its_log(proj: _Project) -> None:
    with pytest.raises(ServingError, match=r"(?s)exited with code 1 before it was ready.*no model version matches"):
        _ensure(proj, _free_port(), ref="iris@production")
    assert local.current(proj.project) is None


def test_a_port_taken_by_another_program_is_named(proj: _Project) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ServingError, match=f"port {port} on 127.0.0.1 is already in use by another process"):
            _ensure(proj, port)


def test_stale_and_corrupt_state_files_are_dropped(proj: _Project) -> None:
    path = proj.project.server_state_path
    path.parent.mkdir(parents=True, exist_ok=True)
    dead = 2**22 + 1  # above the default pid_max: never a running process
    path.write_text(json.dumps({
        "pid": dead, "host": "127.0.0.1", "port": 1, "token": "t", "ref": "iris", "name": "iris",
        "version": 1, "started_at": "2024-01-01T00:00:00+00:00",
    }))
    assert local.current(proj.project) is None and not path.exists()
    path.write_text("{not json")
    assert local.stop(proj.project) is None and not path.exists()
