"""The prediction API, over real HTTP: a uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import IRIS
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from conveyor.model import read_metadata, save_model
from conveyor.registry import ModelVersion, Registry
from conveyor.serving.app import ModelSource, ServingApp
from conveyor.store import ArtifactStore

TOKEN = "s3cret-token"
ROW = [5.1, 3.5, 1.4, 0.2]


class _Server:
    """A uvicorn server running `app` in a thread, on a port the kernel picked."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server died on startup")
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class Line:
    """Just enough of the line for serving tests: save a model, store it, register it, move an alias."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = ArtifactStore(root / "cache")
        self.registry = Registry(f"sqlite:///{root}/registry.db")
        self.X, self.y = load_iris(return_X_y=True)
        self.count = 0

    def publish(self, model: Any = None, *, C: float = 1.0, alias: str | None = "production") -> ModelVersion:
        self.count += 1
        model = model if model is not None else LogisticRegression(C=C, max_iter=1000).fit(self.X, self.y)
        path = save_model(model, self.root / f"build{self.count}" / "model", self.X[:5], input_names=IRIS)
        version, _ = self.registry.register(
            name="iris", digest=self.store.put(path), flavor="sklearn",
            signature=read_metadata(path).signature, metrics={}, params={"C": C},
            lineage={"git": {"commit": f"c0ffee{self.count}"}}, gates=[], run_id=None,
        )
        if alias:
            self.registry.set_alias("iris", alias, version.version, actor="test", reason="test")
        return version

    def source(self, ref: str = "iris@production") -> ModelSource:
        return ModelSource(self.registry, self.store, self.root / "models", ref)


class _Broken:
    """An estimator that loads fine and fails on every prediction (to test reload roll-back)."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def predict(self, X: Any) -> Any:
        if self.n:  # save_model's sample prediction works; the server's warm-up does not
            raise ValueError("this model is broken")
        self.n += 1
        return np.zeros(len(X), dtype=np.int64)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    built = Line(tmp_path)
    yield built
    built.registry.close()


def _serve(line: Line) -> Iterator[tuple[_Server, ServingApp, httpx.Client]]:
    first = line.publish()
    source = line.source()
    app = ServingApp(source, token=TOKEN, served=source.load(first), max_request_bytes=64 * 1024)
    with _Server(app) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        yield running, app, client


@pytest.fixture
def server(line: Line) -> Iterator[tuple[_Server, ServingApp, httpx.Client]]:
    """A server of its own, for tests that publish versions and reload."""
    yield from _serve(line)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, ServingApp, httpx.Client]]:
    """One server for the tests that only send requests."""
    built = Line(tmp_path_factory.mktemp("shared"))
    yield from _serve(built)
    built.registry.close()


def test_predict_rows_of_dicts(shared: Any) -> None:
    _, _, client = shared
    reply = client.post("/predict", json={"rows": [dict(zip(IRIS, ROW)), dict(zip(IRIS, [6.7, 3.0, 5.2, 2.3]))]})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [0, 2], "model": {"name": "iris", "version": 1}}
    assert reply.headers["x-model-version"] == "1"
    assert reply.headers["content-type"] == "application/json"


def test_predict_rows_of_lists_and_columns_data(shared: Any) -> None:
    _, _, client = shared
    assert client.post("/predict", json={"rows": [ROW]}).json()["predictions"] == [0]
    payload = {"columns": IRIS[::-1], "data": [ROW[::-1], [2.3, 5.2, 3.0, 6.7]]}
    assert client.post("/predict", json=payload).json()["predictions"] == [0, 2]


def test_a_large_batch_predicts_in_a_worker_thread(shared: Any) -> None:
    _, _, client = shared
    reply = client.post("/predict", json={"rows": load_iris().data[:120].tolist()})
    assert reply.status_code == 200
    assert len(reply.json()["predictions"]) == 120


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"rows": [ROW, ROW, ROW, [1, 2, 3, "abc"]]}, "rows[3].petal_width", 'expected a number, got "abc"'),
        ({"rows": [dict(zip(IRIS[:3], ROW))]}, "rows[0]", "missing column 'petal_width'"),
        ({"rows": [ROW, {**dict(zip(IRIS, ROW)), "foo": 1}]}, "rows[1]", "unknown column 'foo'"),
        ({"rows": [ROW, ROW, ROW[:3]]}, "rows[2]", "expected 4 values, got 3"),
        ({"rows": []}, "rows", "no rows"),
        ({"rows": [[1, 2, 3, True]]}, "rows[0].petal_width", "(a boolean)"),
        ({"instances": [ROW]}, "body", "expected 'rows'"),
    ],
)
def test_invalid_payloads_get_422_naming_the_field(shared: Any, payload: Any, field: str, message: str) -> None:
    _, _, client = shared
    reply = client.post("/predict", json=payload)
    assert reply.status_code == 422
    assert reply.json()["field"] == field
    assert message in reply.json()["error"]
    assert reply.headers["x-model-version"] == "1"


def test_nan_is_rejected(shared: Any) -> None:
    _, _, client = shared
    reply = client.post("/predict", content=b'{"rows": [[1, 2, 3, NaN]]}', headers={"content-type": "application/json"})
    assert reply.status_code == 400  # not JSON at all
    reply = client.post("/predict", content=b'{"rows": [[1, 2, 3, 1e999]]}', headers={"content-type": "application/json"})
    assert reply.status_code in (400, 422)


def test_client_mistakes_get_4xx_and_the_server_keeps_answering(shared: Any) -> None:
    _, _, client = shared
    json_type = {"content-type": "application/json"}
    bad = client.post("/predict", content=b'{"rows": [', headers=json_type)
    assert bad.status_code == 400
    assert bad.json()["field"] == "body" and "not valid JSON" in bad.json()["error"]
    wrong_type = client.post("/predict", content=b'{"rows": [[1,2,3,4]]}', headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert "application/json" in wrong_type.json()["error"]
    assert client.post("/predict", content=b"x" * (64 * 1024 + 1), headers=json_type).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(80):
            yield b" " * 1024

    assert client.post("/predict", content=chunks(), headers=json_type).status_code == 413
    assert client.post("/predict", content=b"[" * 5000 + b"]" * 5000, headers=json_type).status_code == 400
    assert client.post("/predict", content="{\"rows\": [[1, 2, 3, \"\udcff\"]]}".encode("utf-8", "surrogatepass"),
                       headers=json_type).status_code == 400
    assert client.get("/predict").status_code == 405
    missing = client.get("/nope")
    assert missing.status_code == 404 and "POST /predict" in missing.json()["error"]
    assert client.post("/predict", json={"rows": [ROW]}).status_code == 200


def test_oversized_declared_body_is_refused_before_reading(shared: Any) -> None:
    running, _, _ = shared
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 413")


def test_health_ready_and_version(shared: Any) -> None:
    _, _, client = shared
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    version = client.get("/version").json()
    assert version["name"] == "iris" and version["version"] == 1
    assert version["commit"] == "c0ffee1" and version["flavor"] == "sklearn"
    assert version["digest"].endswith(".dir") and version["ref"] == "iris@production"
    assert client.get("/healthz").headers["x-model-version"] == "1"


def test_reload_needs_the_token(server: Any) -> None:
    _, _, client = server
    assert client.post("/-/reload").status_code == 401
    wrong = client.post("/-/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/-/reload", headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/-/reload", headers={"authorization": "Bearer \u00e9".encode()}).status_code == 401
    same = client.post("/-/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert same.status_code == 200 and same.json()["changed"] is False


def test_reload_swaps_to_the_new_version(server: Any, line: Line) -> None:
    _, _, client = server
    before = client.get("/version").json()["digest"]
    newer = line.publish(C=0.05)
    reply = client.post("/-/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["changed"] is True
    assert (reply.json()["model"]["version"], reply.json()["previous"]["version"]) == (2, 1)
    assert (reply.json()["model"]["digest"], reply.json()["previous"]["digest"]) == (newer.digest, before)
    assert client.get("/version").json()["digest"] == newer.digest
    predicted = client.post("/predict", json={"rows": [ROW]})
    assert predicted.headers["x-model-version"] == "2"
    assert predicted.json()["model"]["version"] == 2
    assert client.get("/version").json()["commit"] == "c0ffee2"


def test_failed_reload_keeps_the_old_version(server: Any, line: Line) -> None:
    _, app, client = server
    line.publish(_Broken())
    auth = {"authorization": f"Bearer {TOKEN}"}
    reply = client.post("/-/reload", headers=auth)
    assert reply.status_code == 409
    assert "warm-up" in reply.json()["error"] and "still serving iris@1" in reply.json()["error"]
    assert reply.json()["model"]["version"] == 1
    assert client.post("/predict", json={"rows": [ROW]}).headers["x-model-version"] == "1"
    line.registry.set_alias("iris", "production", 9 - 8, actor="test", reason="roll back")
    assert client.post("/-/reload", headers=auth).json()["changed"] is False


def test_reload_of_a_tampered_artifact_is_refused(server: Any, line: Line) -> None:
    _, _, client = server
    version = line.publish(C=0.1)
    manifest = line.store.object_path(version.digest)
    manifest.chmod(0o644)
    manifest.write_bytes(b"[]")
    reply = client.post("/-/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 409 and "corrupt" in reply.json()["error"]
    assert client.get("/version").json()["version"] == 1


def test_without_a_token_reload_is_disabled(line: Line) -> None:
    source = line.source()
    app = ServingApp(source, token=None, served=source.load(line.publish()))
    with _Server(app) as running, httpx.Client(base_url=running.url) as client:
        reply = client.post("/-/reload", headers={"authorization": "Bearer x"})
        assert reply.status_code == 403 and "CONVEYOR_SERVER_TOKEN" in reply.json()["error"]


def test_not_ready_until_a_version_exists_then_reload_serves_it(line: Line) -> None:
    app = ServingApp(line.source(), token=TOKEN)
    with _Server(app) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        ready = client.get("/readyz")
        for _ in range(200):
            if ready.json()["status"] != "loading":
                break
            ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed" and "iris@production" in ready.json()["error"]
        assert client.get("/healthz").status_code == 200
        assert client.post("/predict", json={"rows": [ROW]}).status_code == 503
        assert "x-model-version" not in client.get("/healthz").headers
        line.publish()
        assert client.post("/-/reload", headers={"authorization": f"Bearer {TOKEN}"}).json()["previous"] is None
        assert client.get("/readyz").status_code == 200
        assert client.post("/predict", json={"rows": [ROW]}).json()["predictions"] == [0]


def test_requests_during_a_reload_are_all_answered(server: Any, line: Line) -> None:
    _, _, client = server
    line.publish(C=0.05)
    seen: set[str] = set()
    failures: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=client.base_url, timeout=10) as own:
            for _ in range(25):
                reply = own.post("/predict", json={"rows": [ROW]})
                if reply.status_code != 200:
                    failures.append(reply.status_code)
                seen.add(reply.headers["x-model-version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert client.post("/-/reload", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    for thread in threads:
        thread.join()
    assert failures == []
    assert seen <= {"1", "2"}
    assert client.post("/predict", json={"rows": [ROW]}).headers["x-model-version"] == "2"
