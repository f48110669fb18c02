"""The local deployment target: a real `conveyor serve` process, started, reloaded and stopped."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
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


def _ensure(proj: _Project, port: int, ref: str = "iris@production", *, registry_url: str | None = None,
            expected_digest: str | None = None) -> local.Deployment:
    return local.ensure_serving(proj.project, ref, host="127.0.0.1", port=port, registry_url=registry_url or proj.url,
                                expected_digest=expected_digest, timeout_s=30)


def _serve_processes(root: Path) -> list[int]:
    """Pids of the `conveyor serve` processes running in `root` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"conveyor" in argv and b"serve" in argv and cwd == str(root) and state != "Z":
            found.append(int(entry.name))
    return found


SLOW_MODEL = '''
import os
import time


class SlowToLoad:
    """An estimator whose unpickling (in the server) sleeps CONVEYOR_TEST_LOAD_DELAY_S seconds."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, X):
        return self.inner.predict(X)

    def __setstate__(self, state):
        time.sleep(float(os.environ.get("CONVEYOR_TEST_LOAD_DELAY_S", "0")))
        self.__dict__.update(state)
'''

START_IN_BACKGROUND = """
import sys
from pathlib import Path
from conveyor.deploy import local
from conveyor.project import Project
local.ensure_serving(Project(Path(sys.argv[1])), "iris@production", host="127.0.0.1", port=int(sys.argv[2]),
                     registry_url=sys.argv[3], timeout_s=120)
"""


def _start_slowly(proj: _Project, monkeypatch: pytest.MonkeyPatch, port: int) -> tuple[subprocess.Popen[str], int]:
    """Publish a model that takes a minute to load, and start serving it from another process.

    Returns that process, and the pid of the server it started, once the state
    file records it as starting (the server's cwd, the project root, is on its
    sys.path, so it imports the model's class from there).
    """
    (proj.project.root / "slowload.py").write_text(SLOW_MODEL)
    monkeypatch.syspath_prepend(str(proj.project.root))
    X, y = load_iris(return_X_y=True)
    proj.publish(importlib.import_module("slowload").SlowToLoad(LogisticRegression(max_iter=1000).fit(X, y)))
    runner = subprocess.Popen(
        [sys.executable, "-c", START_IN_BACKGROUND, str(proj.project.root), str(port), proj.url],
        env={**os.environ, "CONVEYOR_TEST_LOAD_DELAY_S": "60"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and runner.poll() is None:
        try:
            state = json.loads(proj.project.server_state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("status") == "starting" and _serve_processes(proj.project.root) == [state["pid"]]:
            return runner, int(state["pid"])
        time.sleep(0.05)
    runner.kill()
    _, err = runner.communicate()
    raise AssertionError(f"the server never started: {err}")


def test_start_reload_stop(proj: _Project) -> None:
    published = proj.publish()
    port = _free_port()
    first = _ensure(proj, port, expected_digest=published.digest)
    assert (first.name, first.version, first.ref, first.digest) == ("iris", 1, "iris@production", published.digest)
    assert first.url == f"http://127.0.0.1:{port}"
    reply = httpx.post(f"{first.url}/predict", json={"rows": [ROW]})
    assert reply.json()["predictions"] == [0] and reply.headers["x-model-version"] == "1"

    state_path = proj.project.server_state_path
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    state = json.loads(state_path.read_text())
    assert state["pid"] == first.pid and len(state["token"]) > 30
    assert (state["status"], state["digest"]) == ("ready", published.digest)
    cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes()
    assert state["token"].encode() not in cmdline
    assert local.current(proj.project) == first

    newer = proj.publish(C=0.05)
    second = _ensure(proj, port, expected_digest=newer.digest)
    assert (second.version, second.pid, second.digest) == (2, first.pid, newer.digest)
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
    # the same file under another URL: the server cannot know it is the same registry, so it is replaced
    port = int(pinned.url.rpartition(":")[2])
    moved = _ensure(proj, port, ref="iris@1", registry_url=f"sqlite:///{proj.project.state_dir}/./registry.db")
    assert moved.version == 1 and moved.pid != pinned.pid


def test_a_recreated_registry_is_told_apart_by_digest(proj: _Project) -> None:
    old = proj.publish()
    port = _free_port()
    first = _ensure(proj, port, expected_digest=old.digest)

    proj.registry.close()
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{proj.project.registry_path}{suffix}").unlink(missing_ok=True)
    proj.registry = Registry(proj.url)
    new = proj.publish(C=0.05)
    assert new.version == 1 and new.digest != old.digest

    live = local.current(proj.project)  # the same version number: only the digest says it is stale
    assert live is not None and (live.version, live.digest) == (1, old.digest)
    second = _ensure(proj, port, expected_digest=new.digest)
    assert (second.version, second.digest, second.pid) == (1, new.digest, first.pid)
    assert httpx.get(f"{first.url}/version").json()["digest"] == new.digest
    assert local.current(proj.project) == second
    assert json.loads(proj.project.server_state_path.read_text())["digest"] == new.digest

    served_elsewhere = f"reloaded iris@production and serves iris@1 with digest {new.digest}, not the expected sha256:x"
    with pytest.raises(ServingError, match=re.escape(served_elsewhere)):
        _ensure(proj, port, expected_digest="sha256:x")
    assert local.current(proj.project) == second  # still serving, still recorded


def test_an_interrupted_start_leaves_no_server(proj: _Project, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    runner, server_pid = _start_slowly(proj, monkeypatch, port)
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    assert _serve_processes(proj.project.root) == []
    assert not proj.project.server_state_path.exists()
    assert local.current(proj.project) is None

    deployment = _ensure(proj, port)  # the port is free again; this process has no load delay
    assert deployment.pid != server_pid and deployment.version == 1
    assert httpx.post(f"{deployment.url}/predict", json={"rows": [ROW]}).json()["predictions"] == [0]


def test_a_start_killed_midway_is_cleaned_up_by_the_next_run(proj: _Project, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    runner, orphan = _start_slowly(proj, monkeypatch, port)
    runner.kill()  # no chance to clean up: the server it started is left loading
    runner.communicate(timeout=30)
    assert _serve_processes(proj.project.root) == [orphan]
    assert local.current(proj.project) is None  # starting: nothing served yet, but still recorded
    assert json.loads(proj.project.server_state_path.read_text())["pid"] == orphan

    deployment = _ensure(proj, port)
    assert deployment.pid != orphan and _serve_processes(proj.project.root) == [deployment.pid]


def test_a_server_that_cannot_start_shows_its_log(proj: _Project) -> None:
    with pytest.raises(ServingError, match=r"(?s)exited with code 1 before it was ready.*no model version matches"):
        _ensure(proj, _free_port(), ref="iris@production")
    assert local.current(proj.project) is None and not proj.project.server_state_path.exists()


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
    path.write_text(json.dumps({
        "status": "starting", "pid": dead, "host": "127.0.0.1", "port": 1, "token": "t", "ref": "iris",
        "registry": "x", "started_at": "2024-01-01T00:00:00+00:00",
    }))
    assert local.current(proj.project) is None and not path.exists()
    path.write_text("{not json")
    assert local.stop(proj.project) is None and not path.exists()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"v\": 1}   ",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"v\"\r\n4;x=y\r\n: 1}\r\n0\r\n\r\n",
])
def test_requests_to_the_server_read_sized_and_chunked_answers(answer: bytes) -> None:
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        received: list[bytes] = []

        def serve_once() -> None:
            conn, _ = listener.accept()
            with conn:
                request = b""
                while not request.endswith(b"}"):  # the JSON body is the request's last byte
                    request += conn.recv(65536)
                received.append(request)
                conn.sendall(answer)

        server = threading.Thread(target=serve_once)
        server.start()
        status, body = local._request("127.0.0.1", listener.getsockname()[1], "POST", "/-/deploy", token="t",
                                      body={"ref": "iris@2"}, timeout=10)
        server.join(10)
    assert (status, body) == (200, {"v": 1})
    head, _, payload = received[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /-/deploy HTTP/1.1\r\n") and b"Authorization: Bearer t" in head
    assert json.loads(payload) == {"ref": "iris@2"}


def test_a_server_that_is_gone_is_unreachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    with pytest.raises(local._Unreachable):  # nothing listens any more: refused
        local._request("127.0.0.1", port, "GET", "/version", timeout=5)
