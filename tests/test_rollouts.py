"""Management endpoints over real HTTP: the token guards each one, deploy switches reference in place,
and a server that follows an alias swaps (and swaps back) when the alias moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from test_serving import ROW, TOKEN, Line, _Broken, _Server

from conveyor.serving.app import ServingApp
from conveyor.serving.metrics import ServingMetrics
from conveyor.serving.rollout import Counts, Criteria, counts_from_metrics, judge

AUTH = {"authorization": f"Bearer {TOKEN}"}


class _Running:
    def __init__(self, app: ServingApp, client: httpx.Client) -> None:
        self.app, self.client = app, client
        self.restarts = 0

    def version(self, row: list[float] = ROW) -> int:
        answer = self.client.post("/predict", json={"rows": [row]})
        assert answer.status_code == 200, answer.text
        return int(answer.headers["x-model-version"])

    def counts(self, version: int, shadow: bool = False) -> tuple[int, int]:
        assert self.app.metrics is not None
        counts = counts_from_metrics(self.app.metrics.render()[0].decode(), "iris", version, shadow=shadow)
        return counts.ok, counts.errors

    def record(self, version: int, shadow: bool = False) -> Counts:
        assert self.app.metrics is not None
        return counts_from_metrics(self.app.metrics.render()[0].decode(), "iris", version, shadow=shadow)

    def wait_for_version(self, version: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.version() != version:
            assert time.monotonic() < deadline, f"still serving v{self.version()}, not v{version}"
            time.sleep(0.02)


def _run(line: Line, *, follow_interval_s: float | None = None) -> Iterator[_Running]:
    first = line.publish()
    source = line.source()
    holder: list[_Running] = []

    def restart() -> None:
        holder[0].restarts += 1

    app = ServingApp(source, token=TOKEN, served=source.load(first), on_restart=restart,
                     follow_interval_s=follow_interval_s, metrics=ServingMetrics())
    with _Server(app) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        holder.append(_Running(app, client))
        yield holder[0]


@pytest.fixture
def line(tmp_path: Any) -> Iterator[Line]:
    built = Line(tmp_path)
    yield built
    built.registry.close()


@pytest.fixture
def running(line: Line) -> Iterator[_Running]:
    yield from _run(line)


@pytest.fixture
def following(line: Line) -> Iterator[_Running]:
    yield from _run(line, follow_interval_s=0.05)


MANAGEMENT = [("POST", "/-/reload", None), ("POST", "/-/deploy", {"ref": "iris@2"}), ("POST", "/-/restart", None),
              ("POST", "/-/traffic", {"candidate": "iris@2", "share": 100}), ("GET", "/-/state", None)]


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT, ids=[p for _, p, _ in MANAGEMENT])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_every_management_endpoint_refuses_a_request_without_the_token(
    running: _Running, line: Line, method: str, path: str, body: Any, authorization: str | None
) -> None:
    line.publish(C=0.05)  # production moves to v2: a reload or deploy that went ahead would serve it
    headers = {"authorization": authorization} if authorization else {}
    reply = running.client.request(method, path, json=body, headers=headers)
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in reply.json()["error"] and "model" not in reply.json()
    assert running.version() == 1 and running.restarts == 0


def test_deploy_switches_to_a_pinned_version_and_back_to_the_alias(running: _Running, line: Line) -> None:
    line.publish(C=0.05)
    pinned = running.client.post("/-/deploy", json={"ref": "iris@1"}, headers=AUTH)
    assert pinned.status_code == 200 and pinned.json()["model"]["version"] == 1
    assert running.client.get("/version").json()["ref"] == "iris@1"
    following = running.client.post("/-/deploy", json={"ref": "iris@production"}, headers=AUTH)
    assert following.status_code == 200, following.text
    assert following.json()["model"]["version"] == 2 and following.json()["previous"]["version"] == 1
    assert running.version() == 2 and running.client.get("/version").json()["ref"] == "iris@production"


def test_deploy_of_what_cannot_serve_keeps_the_old_version(running: _Running, line: Line) -> None:
    missing = running.client.post("/-/deploy", json={"ref": "iris@7"}, headers=AUTH)
    assert missing.status_code == 409 and "still serving iris@1" in missing.json()["error"]
    line.publish(_Broken(), alias=None)
    broken = running.client.post("/-/deploy", json={"ref": "iris@2"}, headers=AUTH)
    assert broken.status_code == 409 and "warm-up" in broken.json()["error"]
    assert running.version() == 1 and running.client.get("/version").json()["ref"] == "iris@production"
    assert running.client.post("/-/deploy", json={"reference": "iris@1"}, headers=AUTH).status_code == 422


def test_restart_asks_the_supervisor_and_state_says_what_is_served(running: _Running) -> None:
    reply = running.client.post("/-/restart", headers=AUTH)
    assert reply.status_code == 202 and running.restarts == 1
    state = running.client.get("/-/state", headers=AUTH).json()
    assert state["ref"] == "iris@production" and state["model"]["version"] == 1
    assert [kept["version"] for kept in state["in_memory"]] == [1]


def test_a_followed_alias_that_moves_is_served_and_a_rollback_swaps_back(following: _Running, line: Line) -> None:
    second = line.publish(C=0.05)
    following.wait_for_version(2)
    line.registry.set_alias("iris", "production", 1, actor="test", reason="test", kind="rollback")
    following.wait_for_version(1)
    state = following.client.get("/-/state", headers=AUTH).json()
    assert sorted(kept["version"] for kept in state["in_memory"]) == [1, 2]  # a rollback to v2 is a swap
    assert next(k for k in state["in_memory"] if k["version"] == 2)["digest"] == second.digest


def test_a_followed_version_that_cannot_load_is_never_served(following: _Running, line: Line) -> None:
    line.publish(_Broken())
    deadline = time.monotonic() + 1.0  # twenty looks at the alias
    while time.monotonic() < deadline:
        assert following.version() == 1
    ready = following.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == 1
    assert "warm-up" in following.client.get("/-/state", headers=AUTH).json()["error"]
    line.publish(C=0.05)
    following.wait_for_version(3)


LARGE_PETALS = [6.3, 3.3, 6.0, 2.5]


class _FailsOnLargePetals:
    """A candidate that warms up fine (on the small-petalled sample rows) and raises on large petals."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def predict(self, X: Any) -> Any:
        if (np.asarray(X)[:, 2] > 5).any():
            raise ValueError("petal_length over 5 is not handled")
        return self.inner.predict(X)


def test_a_canary_answers_its_share_and_stable_answers_what_it_fails_on(running: _Running, line: Line) -> None:
    from sklearn.linear_model import LogisticRegression

    line.publish(C=0.05, alias=None)
    line.publish(_FailsOnLargePetals(LogisticRegression(max_iter=1000).fit(line.X, line.y)), alias=None)
    split = running.client.post("/-/traffic", json={"candidate": "iris@2", "share": 100}, headers=AUTH)
    assert split.status_code == 200, split.text
    assert split.json()["candidate"]["version"] == 2 and split.json()["model"]["version"] == 1
    assert {running.version() for _ in range(10)} == {2}
    assert running.counts(2) == (10, 0)

    assert running.client.post("/-/traffic", json={"candidate": "iris@3", "share": 100}, headers=AUTH).status_code == 200
    assert running.version(ROW) == 3  # what the candidate handles, it answers
    assert {running.version(LARGE_PETALS) for _ in range(5)} == {1}  # what it fails on, stable answers
    assert running.counts(3) == (1, 5)
    state = running.client.get("/-/state", headers=AUTH).json()
    assert state["traffic"] == {"stable": "iris@1", "candidate": "iris@3", "share": 100.0, "mode": "canary",
                                "compare": False}

    ended = running.client.post("/-/traffic", json={"share": 0}, headers=AUTH)
    assert ended.status_code == 200 and ended.json()["candidate"] is None
    assert {running.version(LARGE_PETALS) for _ in range(5)} == {1}


def test_a_shadow_gets_copies_and_never_answers(running: _Running, line: Line) -> None:
    line.publish(C=0.05, alias=None)
    split = {"candidate": "iris@2", "share": 100, "mode": "shadow"}
    assert running.client.post("/-/traffic", json=split, headers=AUTH).status_code == 200
    assert {running.version() for _ in range(20)} == {1}
    deadline = time.monotonic() + 20
    while running.counts(2, shadow=True) != (20, 0):
        assert time.monotonic() < deadline, f"shadow counts {running.counts(2, shadow=True)}"
        time.sleep(0.02)
    assert running.counts(2) == (0, 0)


def test_a_split_to_what_cannot_serve_is_refused_and_changes_nothing(running: _Running, line: Line) -> None:
    refused = running.client.post("/-/traffic", json={"candidate": "iris@9", "share": 10}, headers=AUTH)
    assert refused.status_code == 409 and "still serving iris@1" in refused.json()["error"]
    line.publish(_Broken(), alias=None)
    refused = running.client.post("/-/traffic", json={"candidate": "iris@2", "share": 10}, headers=AUTH)
    assert refused.status_code == 409 and "warm-up" in refused.json()["error"]
    assert running.client.get("/-/state", headers=AUTH).json()["traffic"] is None
    bad = running.client.post("/-/traffic", json={"candidate": "iris@1", "share": 150}, headers=AUTH)
    assert bad.status_code == 422 and "percentage" in bad.json()["error"]


def test_with_a_prediction_token_every_prediction_route_needs_it_and_probes_stay_open(line: Line) -> None:
    source = line.source()
    app = ServingApp(source, token=TOKEN, served=source.load(line.publish()), predict_token="p-token")
    with _Server(app) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        routes = [("/predict", {"rows": [ROW]}), ("/invocations", {"instances": [ROW]}),
                  ("/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                                                          "data": ROW}]})]
        for path, body in routes:
            for headers in ({}, {"authorization": "Bearer wrong"}, AUTH):  # the management token is not it either
                refused = client.post(path, json=body, headers=headers)
                assert refused.status_code == 401 and "prediction token" in refused.json()["error"], path
            answered = client.post(path, json=body, headers={"authorization": "Bearer p-token"})
            assert answered.status_code == 200, (path, answered.text)
        for probe in ("/healthz", "/readyz", "/version", "/v2/health/ready"):
            assert client.get(probe).status_code == 200, probe


def _always_setosa(line: Line) -> Any:
    """A candidate that loads, warms and answers fine, and predicts class 0 whatever it is asked."""
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="constant", constant=0).fit(line.X, line.y)


def _ask_every_class(running: _Running, line: Line) -> list[int]:
    """Thirty requests, ten rows of each iris class; the versions that answered."""
    return [running.version([float(v) for v in row]) for row in line.X[::5]]


def test_a_canary_that_answers_differently_breaches_max_disagreement_and_an_identical_one_passes(
    running: _Running, line: Line
) -> None:
    line.publish(_always_setosa(line), alias=None)  # v2: agrees with stable on setosa rows only
    from sklearn.linear_model import LogisticRegression

    # v3: trained like v1 (another artifact: max_iter differs, unreached), so it predicts exactly what v1 does
    line.publish(LogisticRegression(max_iter=999).fit(line.X, line.y), alias=None)
    criteria = Criteria(max_error_rate=0.01, min_requests=20, max_disagreement=0.05)

    split = {"candidate": "iris@2", "share": 100, "compare": True}
    reply = running.client.post("/-/traffic", json=split, headers=AUTH)
    assert reply.status_code == 200 and reply.json()["traffic"]["compare"] is True
    assert set(_ask_every_class(running, line)) == {2}  # the candidate answers its share, as without compare
    different = running.record(2)
    assert (different.ok, different.errors, different.agreed, different.disagreed) == (30, 0, 10, 20)
    assert running.counts(1) == (30, 0)  # stable predicted every compared request too
    verdict = judge(different, criteria, 100)
    assert verdict.state == "fail"
    assert verdict.reason == "disagreement 66.7% (20 of 30) with stable at 100% of traffic is over the limit 5.0%"
    assert judge(different, Criteria(max_error_rate=0.01, min_requests=20), 100).state == "pass"  # errors alone

    split = {"candidate": "iris@3", "share": 100, "compare": True}
    assert running.client.post("/-/traffic", json=split, headers=AUTH).status_code == 200
    assert set(_ask_every_class(running, line)) == {3}
    identical = running.record(3)
    assert (identical.agreed, identical.disagreed) == (30, 0)
    assert judge(identical, criteria, 100).state == "pass"


def test_a_canary_without_compare_leaves_stable_alone(running: _Running, line: Line) -> None:
    line.publish(_always_setosa(line), alias=None)
    assert running.client.post("/-/traffic", json={"candidate": "iris@2", "share": 100},
                               headers=AUTH).status_code == 200
    assert set(_ask_every_class(running, line)) == {2}
    assert running.record(2).compared == 0 and running.counts(1) == (0, 0)
    bad = running.client.post("/-/traffic", json={"candidate": "iris@2", "share": 100, "compare": "yes"},
                              headers=AUTH)
    assert bad.status_code == 422 and "compare: must be true or false" in bad.json()["error"]


def test_a_candidate_failing_a_compared_request_leaves_it_to_stable_and_uncompared(
    running: _Running, line: Line
) -> None:
    from sklearn.linear_model import LogisticRegression

    line.publish(_FailsOnLargePetals(LogisticRegression(max_iter=1000).fit(line.X, line.y)), alias=None)
    split = {"candidate": "iris@2", "share": 100, "compare": True}
    assert running.client.post("/-/traffic", json=split, headers=AUTH).status_code == 200
    assert {running.version(LARGE_PETALS) for _ in range(3)} == {1}
    assert running.version(ROW) == 2
    record = running.record(2)
    assert (record.ok, record.errors, record.agreed, record.disagreed) == (1, 3, 1, 0)


def test_a_shadow_records_its_disagreement_with_stable(running: _Running, line: Line) -> None:
    line.publish(_always_setosa(line), alias=None)
    split = {"candidate": "iris@2", "share": 100, "mode": "shadow"}
    assert running.client.post("/-/traffic", json=split, headers=AUTH).status_code == 200
    assert set(_ask_every_class(running, line)) == {1}  # stable answers every request
    deadline = time.monotonic() + 20
    while running.record(2, shadow=True).compared < 30:
        assert time.monotonic() < deadline, f"shadow record {running.record(2, shadow=True)}"
        time.sleep(0.02)
    shadow = running.record(2, shadow=True)
    assert (shadow.ok, shadow.agreed, shadow.disagreed) == (30, 10, 20)
    assert shadow.p99_s() is not None  # the shadow's latency is recorded beside its disagreement
    assert running.record(2).compared == 0  # nothing counted as a canary's
