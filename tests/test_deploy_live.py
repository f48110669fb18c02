"""The proof of "deploy without downtime": a real two-worker server under continuous load.

While four client threads send predictions (a new connection per request),
the test performs 20 deploy/rollback cycles (half through `ensure_serving`,
two of those through the `conveyor deploy` command, half by moving the
registry alias the server follows), a canary of a candidate that raises on
the clients' rows (rolled back, through `conveyor deploy --strategy canary`),
a canary that is promoted, a rolling restart of the workers and a `kill -9`
of one worker. It asserts that no valid request failed and that
every answer's `X-Model-Version` was a version live at that moment.

The one exception the test allows is exact: a request in flight on the worker
the test SIGKILLs cannot be answered by anyone, so a client may retry a
request whose connection broke while that kill happened, at most once per
client thread.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from conveyor.deploy import local
from conveyor.deploy.rollout import Policy, roll_out
from conveyor.model import read_metadata, save_model
from conveyor.project import Project
from conveyor.promotion import rollback
from conveyor.registry import Registry
from conveyor.serving.rollout import Criteria
from conveyor.store import ArtifactStore

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy_live")]

FOLLOW_INTERVAL_S = 0.25
"""How often the workers look up the alias in this test."""

ALIAS_WINDOW_S = 3.0
"""After an alias moves, how long a worker may still answer with the version it pointed to before
(it looks every FOLLOW_INTERVAL_S, then loads; generous for a loaded CI machine)."""

CLIENTS = 4
BODY = json.dumps({"rows": [[6.3, 3.3, 6.0, 2.5]]}).encode()  # large petals: the bad candidate raises

BAD_MODEL = '''
import numpy as np


class FailsOnLargePetals:
    """Warms up fine on the sample rows (small petals), raises on large petals."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, X):
        if (np.asarray(X)[:, 2] > 5).any():
            raise ValueError("petal_length over 5 is not handled")
        return self.inner.predict(X)
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Timeline:
    """When each version was live: a span opens when a switch to it begins, closes once a switch away is done."""

    def __init__(self, first: int) -> None:
        self.spans: list[list[Any]] = [[first, 0.0, None]]
        self.live = first

    def switch(self, new: int, began: float, done: float) -> None:
        if new == self.live:
            return
        for span in self.spans:
            if span[0] == self.live and span[2] is None:
                span[2] = done
        self.spans.append([new, began, None])
        self.live = new

    def was_live(self, version: int, sent: float, received: float) -> bool:
        return any(v == version and start <= received and (end is None or end >= sent)
                   for v, start, end in self.spans)


@dataclass
class _Load:
    """Client threads that predict until stopped; what they saw, and what broke."""

    port: int
    answers: list[tuple[int, float, float]] = field(default_factory=list)  # (version, sent, received)
    failures: list[str] = field(default_factory=list)
    retries: dict[int, int] = field(default_factory=dict)  # client -> requests retried after the kill
    kill: tuple[float, float] | None = None  # (just before, just after) the SIGKILL
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _ask(self) -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status, int(response.getheader("x-model-version") or 0)
        finally:
            conn.close()

    def _client(self, number: int) -> None:
        answers = self.answers  # list.append is atomic: the threads share it
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status, version = self._ask()
            except (OSError, http.client.HTTPException) as exc:
                received = time.monotonic()
                kill = self.kill
                if kill is not None and sent <= kill[1] and received >= kill[0] and self.retries.get(number, 0) == 0:
                    self.retries[number] = 1  # in flight on the killed worker: nobody could answer it
                    continue
                self.failures.append(f"client {number}: {type(exc).__name__}: {exc}")
                continue
            received = time.monotonic()
            if status != 200:
                self.failures.append(f"client {number}: HTTP {status}")
            answers.append((version, sent, received))

    def __enter__(self) -> _Load:
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


class _Line:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "conveyor.yaml").write_text(
            "project: iris\nstages:\n  train: {cmd: 'true', outs: [model/]}\nmodel: {name: iris, path: model/}\n"
            f"deploy: {{workers: 2, follow_interval_s: {FOLLOW_INTERVAL_S}}}\n"
        )
        self.project = Project(root)
        self.url = self.project.default_registry_url
        self.registry = Registry(self.url)
        self.store = ArtifactStore(self.project.cache_dir)

    def publish(self, C: float, model: Any = None) -> int:
        X, y = load_iris(return_X_y=True)
        model = model if model is not None else LogisticRegression(C=C, max_iter=1000).fit(X, y)
        path = save_model(model, self.project.root / "build" / str(C), X[:5])
        version, _ = self.registry.register(
            name="iris", digest=self.store.put(path), flavor="sklearn", signature=read_metadata(path).signature,
            metrics={}, params={}, lineage={}, gates=[], run_id=None,
        )
        return version.version

    def promote(self, version: int) -> None:
        self.registry.set_alias("iris", "production", version, actor="test", reason="test", kind="promote")


@pytest.fixture
def line(tmp_path: Path) -> Iterator[_Line]:
    built = _Line(tmp_path / "proj")
    yield built
    state = built.project.server_state_path
    pid = json.loads(state.read_text())["pid"] if state.exists() else None
    local.stop(built.project, timeout_s=20)
    if pid is not None:  # whatever happened, nothing this test started outlives it
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    built.registry.close()


def _workers(supervisor: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == str(supervisor) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _wait_for(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f}s"
        time.sleep(0.05)


def test_twenty_swaps_two_canaries_a_restart_and_a_kill_under_load_lose_no_request(
    line: _Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = [line.publish(C) for C in (1.0, 0.5, 0.1, 0.05)]
    (line.project.root / "petal_guard.py").write_text(BAD_MODEL)  # the workers' cwd: they unpickle it from there
    monkeypatch.syspath_prepend(str(line.project.root))
    X, y = load_iris(return_X_y=True)
    bad = line.publish(0.3, importlib.import_module("petal_guard").FailsOnLargePetals(
        LogisticRegression(max_iter=1000).fit(X, y)))
    line.promote(versions[0])
    port = _free_port()

    def ensure(ref: str) -> local.Deployment:
        return local.ensure_serving(line.project, ref, host="127.0.0.1", port=port, registry_url=line.url,
                                    workers=2, follow_interval_s=FOLLOW_INTERVAL_S, timeout_s=90)

    first = ensure("iris@production")
    supervisor = first.pid
    _wait_for(lambda: len(_workers(supervisor)) == 2, "two workers")
    timeline = _Timeline(versions[0])

    with _Load(port) as load:
        _wait_for(lambda: len(load.answers) > 0, "the first answer")
        time.sleep(1.0)

        # 10 cycles through ensure_serving: pinned to a version, then back to following production (v1)
        for cycle in range(5):
            target = versions[1 + cycle % 3]
            via_cli = cycle in (1, 3)
            began = time.monotonic()
            if via_cli:
                done = subprocess.run([sys.executable, "-m", "conveyor", "deploy", f"iris@{target}", "--port", str(port)],
                                      cwd=line.project.root, capture_output=True, text=True, timeout=120, check=False)
                assert done.returncode == 0, done.stderr
            else:
                assert ensure(f"iris@{target}").version == target
            timeline.switch(target, began, time.monotonic())
            began = time.monotonic()
            assert ensure("iris@production").version == versions[0]
            timeline.switch(versions[0], began, time.monotonic())

        # 10 cycles by the registry alone: promote, then roll back; the server follows the alias
        for cycle in range(5):
            target = versions[1 + cycle % 3]
            moved = time.monotonic()
            line.promote(target)
            timeline.switch(target, moved, moved + ALIAS_WINDOW_S)
            time.sleep(ALIAS_WINDOW_S / 2)
            moved = time.monotonic()
            back = rollback(line.registry, "iris", "production", actor="test", reason="test")
            assert back.to_version == versions[0]
            timeline.switch(versions[0], moved, moved + ALIAS_WINDOW_S)
            time.sleep(ALIAS_WINDOW_S / 2)

        # a canary of a candidate that fails on the clients' rows: judged, rolled back, never seen by a client
        began = time.monotonic()
        canary = subprocess.run(
            [sys.executable, "-m", "conveyor", "deploy", f"iris@{bad}", "--strategy", "canary", "--steps", "25,100",
             "--interval", "1", "--min-requests", "20", "--max-error-rate", "0.05"],
            cwd=line.project.root, capture_output=True, text=True, timeout=180, check=False)
        assert canary.returncode == 1, canary.stdout + canary.stderr
        assert "rolled back: error rate 100.0%" in canary.stdout and "at 25% of traffic" in canary.stdout
        timeline.switch(versions[0], began, time.monotonic())  # stable throughout
        last = line.registry.alias_history("iris", "production")[0]
        assert (last.kind, last.to_version) == ("rollback", versions[0]) and "error rate 100.0%" in last.reason
        assert line.registry.aliases("iris")["production"] == versions[0]

        # a canary that passes every step is promoted
        good = versions[1]
        began = time.monotonic()
        timeline.spans.append([good, began, None])  # the candidate answers its share from the first step
        outcome = roll_out(line.project, line.registry, "iris", good,
                           Policy("canary", (25.0, 100.0), 1.0, Criteria(max_error_rate=0.05, min_requests=20)),
                           alias="production", actor="test")
        assert outcome.result == "promoted", outcome
        done = time.monotonic()
        for span in timeline.spans:  # stable stops answering once every worker has ended the split
            if span[0] == versions[0] and span[2] is None:
                span[2] = done + ALIAS_WINDOW_S
        timeline.live = good
        assert line.registry.aliases("iris")["production"] == good

        # a rolling restart: every worker replaced, one at a time
        before = set(_workers(supervisor))
        restarted = local.restart_workers(line.project, timeout_s=90)
        assert restarted.version == good and not before & set(_workers(supervisor))

        # kill -9 of one worker: it is replaced
        victim = _workers(supervisor)[0]
        load.kill = (time.monotonic(), float("inf"))
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: victim not in _workers(supervisor), "the killed worker is gone", 20)
        load.kill = (load.kill[0], time.monotonic())
        _wait_for(lambda: len(_workers(supervisor)) == 2, "the killed worker is replaced")
        served_before = len(load.answers)
        time.sleep(2.0)  # the replacement serves too
    assert load.failures == []
    assert all(count <= 1 for count in load.retries.values())
    assert len(load.answers) > served_before
    wrong = [(v, round(sent, 3)) for v, sent, received in load.answers if not timeline.was_live(v, sent, received)]
    assert wrong == [], f"answered by versions that were not live then: {wrong[:10]}"
    assert {v for v, _, _ in load.answers} == set(versions)  # the bad candidate answered nobody
    assert len(load.answers) > 1000
