"""`conveyor serve` as a process: several workers on one socket, reload reaching all, /metrics,
and micro-batching that gives every caller exactly its own answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from test_serving import IRIS, TOKEN, Line, _Server

from conveyor.model import read_metadata, save_model
from conveyor.project import Project
from conveyor.registry import Registry
from conveyor.serving.app import ServingApp
from conveyor.serving.metrics import MetricsMiddleware, ServingMetrics
from conveyor.store import ArtifactStore

pytestmark = pytest.mark.slow

CONFIG = "project: iris\nstages:\n  train:\n    cmd: 'true'\n    outs: [model/]\nmodel:\n  name: iris\n  path: model/\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _publish(root: Path, C: float) -> int:
    project = Project(root)
    X, y = load_iris(return_X_y=True)
    path = save_model(LogisticRegression(C=C, max_iter=1000).fit(X, y), root / f"build-{C}" / "model", X[:5],
                      input_names=IRIS)
    with Registry(project.default_registry_url) as registry:
        version, _ = registry.register(name="iris", digest=ArtifactStore(project.cache_dir).put(path),
                                       flavor="sklearn", signature=read_metadata(path).signature, metrics={},
                                       params={}, lineage={}, gates=[], run_id=None)
        registry.set_alias("iris", "production", version.version, actor="test", reason="test")
    return version.version


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(") ", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    (tmp_path / "conveyor.yaml").write_text(CONFIG)
    _publish(tmp_path, 1.0)
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "conveyor", "serve", "iris@production", "--port", str(port),
                                "--workers", "2"], cwd=tmp_path, env={**os.environ, "CONVEYOR_SERVER_TOKEN": TOKEN},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 and len(_children(process.pid)) == 2:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or process.poll() is not None:
            pytest.fail("the server did not start")
        time.sleep(0.1)
    yield url, process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail("the server did not stop within 30 s of SIGTERM")


def _versions_seen(url: str, n: int = 40) -> set[str]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return {client.post("/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}).headers["x-model-version"]
                for _ in range(n)}


def test_workers_share_the_socket_and_a_killed_one_is_replaced(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = two_workers
    assert _versions_seen(url) == {"1"}
    victim = _children(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.time() + 20
    while not (len(_children(process.pid)) == 2 and victim not in _children(process.pid)):
        assert time.time() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    assert _versions_seen(url) == {"1"}


def test_a_reload_reaches_every_worker(two_workers: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, _ = two_workers
    _publish(tmp_path, 0.05)
    answer = httpx.post(f"{url}/-/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"]["version"] == 2
    deadline = time.time() + 10
    while _versions_seen(url) != {"2"}:
        assert time.time() < deadline, "a worker still serves v1"
        time.sleep(0.2)


def test_metrics_count_the_requests_of_every_worker(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = two_workers
    _versions_seen(url, 30)
    for _ in range(5):  # whichever worker answers the scrape, it reports all 30 predictions
        text = httpx.get(f"{url}/metrics", timeout=10).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        predicted = sum(s.value for s in families["conveyor_requests"].samples
                        if s.name == "conveyor_requests_total" and s.labels["route"] == "/predict"
                        and s.labels["model"] == "iris" and s.labels["version"] == "1" and s.labels["status"] == "200")
        assert predicted == 30


def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    line = Line(tmp_path)
    try:
        first = line.publish()
        source = line.source()
        metrics = ServingMetrics()
        app = ServingApp(source, token=TOKEN, served=source.load(first), metrics=metrics)
        rng = np.random.default_rng(7)
        rows = rng.uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(256, 4)).round(2)
        expected = LogisticRegression(C=1.0, max_iter=1000).fit(line.X, line.y).predict(rows)
        with _Server(MetricsMiddleware(app, metrics)) as running, httpx.Client(base_url=running.url, timeout=20,
                                                                             limits=httpx.Limits(max_connections=64)) as client:
            def ask(i: int) -> int:
                answer = client.post("/predict", json={"rows": [rows[i].tolist()]})
                assert answer.status_code == 200
                return int(answer.json()["predictions"][0])

            with ThreadPoolExecutor(max_workers=64) as pool:
                answers = list(pool.map(ask, range(len(rows))))
        assert answers == expected.tolist()
        sizes = next(f for f in text_string_to_metric_families(metrics.render()[0].decode())
                     if f.name == "conveyor_batch_size_rows")
        count = next(s.value for s in sizes.samples if s.name.endswith("_count"))
        assert count < len(rows)  # fewer predict calls than requests: batches formed
    finally:
        line.registry.close()
