"""`conveyor ui` over HTTP on loopback, on a seeded SQLite and PostgreSQL registry and run store.

Each backend gets one dashboard process (module scope) over one seeded
project; the tests only read, and one of them checks that reading every page
left the registry and the run store byte for byte as they were.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TWO_STAGE_CONFIG, engine_for, register
from dashboard_support import UI, start_ui

from conveyor import auth
from conveyor.dashboard import live
from conveyor.registry import Registry
from conveyor.runs import Run, RunStore, Step
from conveyor.serving.metrics import ServingMetrics

ACCURACY = {1: 0.91, 2: 0.95, 3: 0.70, 4: 0.93}
"""Seeded versions of `iris` and their accuracy; production ends on v2 (after a rollback from v4)."""

RUNS = 120
"""Seeded runs: more than two pages of 50."""

FAILED_RUN = f"20261201-{120000000 + RUNS - 1:09d}-beef"
"""The newest seeded run: its gates failed."""

SVG_WITH_SCRIPT = ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script>'
                   '<rect width="10" height="10" fill="red"/></svg>')
PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

GATES = [
    {"gate": "accuracy >= 0.9", "metric": "accuracy", "actual": 0.7, "required": ">= 0.9", "passed": False,
     "detail": "accuracy is 0.7, below the minimum 0.9"},
    {"gate": "max_size_mb 5", "metric": "size_mb", "actual": 0.1, "required": "<= 5", "passed": True,
     "detail": "ok"},
]


def _seed_registry(url: str) -> None:
    with Registry(url) as registry:
        for number, accuracy in ACCURACY.items():
            register(registry, f"{number:064x}", metrics={"accuracy": accuracy, "loss": round(1 - accuracy, 4)},
                     params={"C": 10.0 ** -number},
                     lineage={"git": {"commit": f"{number}" * 40, "branch": "main", "dirty": False},
                              "stages": {"train": {"deps": {"data/iris.csv": f"data{number}" * 8}}}},
                     gates=GATES if number == 3 else [], run_id=f"20261201-{120000000 + number:09d}-0000")
        registry.set_alias("iris", "production", 2, actor="alice", reason="gates passed in run 1", kind="line")
        registry.set_alias("iris", "production", 4, actor="bob", reason="retrained on May data", kind="promote")
        registry.set_alias("iris", "production", 2, actor="carol", reason="p99 over budget after promotion",
                           kind="rollback")
        registry.set_alias("iris", "staging", 3, actor="dave", reason="try it", kind="promote")


def _seed_runs(root: Path) -> None:
    store = RunStore(root / ".conveyor" / "runs")
    for i in range(RUNS):
        run_id = FAILED_RUN if i == RUNS - 1 else f"20261201-{120000000 + i:09d}-{i:04x}"
        started = 1_764_590_400.0 + i
        run = Run(id=run_id, commit=f"{i:040x}", branch="main", dirty=False,
                  trigger=["manual", "hook", "watch", "webhook", "schedule", "ci"][i % 6], started_at=started,
                  pid=1, status="passed", finished_at=started + 2.5,
                  steps=[Step("stage:train", "stage", "ran", started, 2.0, 0, "ran", "stage-train.log")])
        if run_id == FAILED_RUN:
            run.status, run.error = "failed", "gates failed: accuracy >= 0.9; production was not changed"
            run.steps.append(Step("gates", "gates", "failed", started, 0.2, None, "failed: accuracy >= 0.9",
                                  data={"results": GATES}))
            run.steps.append(Step("register", "register", "skipped", started, 0.0, summary="gates failed"))
        store.save(run)
        log = "training on 120 rows\n<script>alert('log')</script>\nTRAIN-LOG-MARKER\n"
        (store.run_dir(run_id) / "stage-train.log").write_text(log)
    (store.run_dir(FAILED_RUN) / "confusion.svg").write_text(SVG_WITH_SCRIPT)
    (store.run_dir(FAILED_RUN) / "roc.png").write_bytes(PNG_1PX)


def _snapshot(root: Path, url: str) -> dict[str, Any]:
    """Everything the dashboard may read, byte for byte."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / ".conveyor" / "runs").rglob("*"))
             if p.is_file()}
    if url.startswith("sqlite"):
        db = root / ".conveyor" / "registry.db"
        return {"files": files, "registry": db.read_bytes()}
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            tables = {}
            for table in ("model_versions", "aliases", "alias_history", "schema_version"):
                rows = conn.exec_driver_sql(f"SELECT * FROM {table}").fetchall()
                tables[table] = sorted(repr(tuple(row)) for row in rows)
    finally:
        engine.dispose()
    return {"files": files, "registry": tables}


@dataclass
class Seeded:
    root: Path
    url: str
    ui: UI
    before: dict[str, Any]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.ui.url + path, timeout=30, **kwargs)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A project with 4 versions, alias moves (a rollback among them) and 120 runs; its dashboard running."""
    root = tmp_path_factory.mktemp(f"dashboard-{request.param}") / "project"
    root.mkdir()
    (root / "conveyor.yaml").write_text(TWO_STAGE_CONFIG.format(py="python"))
    if request.param == "sqlite":
        url = f"sqlite:///{root / '.conveyor' / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_cluster").create_database()
    _seed_registry(url)
    _seed_runs(root)
    before = _snapshot(root, url)
    ui = start_ui(root, env={"CONVEYOR_REGISTRY_URL": url})
    try:
        yield Seeded(root, url, ui, before)
    finally:
        ui.stop()


def test_runs_newest_first_paginated_with_steps_and_a_json_twin(seeded: Seeded) -> None:
    api = seeded.get("/api/runs").json()
    ids = [run["id"] for run in api["runs"]]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True) and ids[0] == FAILED_RUN
    assert api["page"] == {"number": 1, "size": 50, "total": RUNS, "pages": 3}
    assert api["runs"][0]["status"] == "failed"
    assert [s["status"] for s in api["runs"][0]["steps"]] == ["ran", "failed", "skipped"]
    last = seeded.get("/api/runs?page=3").json()
    assert len(last["runs"]) == RUNS - 100 and last["runs"][-1]["id"].startswith("20261201-120000000")

    page = seeded.get("/runs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    row = re.search(rf'<tr class="run status-failed" data-run="{FAILED_RUN}">(.*?)</tr>', page.text, re.S)
    assert row is not None, page.text[:2000]
    assert 'class="chip status-failed"' in row.group(1) and ">gates<" in row.group(1)
    assert "2.50s" in row.group(1)  # the run's duration
    assert {"manual", "hook", "watch", "webhook", "schedule", "ci"} <= set(re.findall(r"<td>([a-z]+)</td>", page.text))
    assert 'href="/runs?page=2"' in page.text


def test_run_page_has_logs_escaped_the_gate_table_and_plots(seeded: Seeded) -> None:
    page = seeded.get(f"/runs/{FAILED_RUN}")
    assert page.status_code == 200
    assert "TRAIN-LOG-MARKER" in page.text
    assert "<script>alert('log')</script>" not in page.text and "&lt;script&gt;alert(" in page.text
    fail = re.search(r'<tr class="gate fail">(.*?)</tr>', page.text, re.S)
    assert fail is not None and "accuracy &gt;= 0.9" in fail.group(1) and "0.7" in fail.group(1)
    assert "FAIL" in fail.group(1) and "&gt;= 0.9" in fail.group(1)
    assert re.search(r'<tr class="gate pass">.*?PASS', page.text, re.S)
    assert f'<img src="/runs/{FAILED_RUN}/plots/confusion.svg"' in page.text
    api = seeded.get(f"/api/runs/{FAILED_RUN}").json()
    assert api["gates"] == GATES
    assert api["run"]["steps"][0]["log_text"].endswith("TRAIN-LOG-MARKER\n")

    svg = seeded.get(f"/runs/{FAILED_RUN}/plots/confusion.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "sandbox" in svg.headers["content-security-policy"] and "script-src" not in svg.headers[
        "content-security-policy"]
    assert svg.headers["x-content-type-options"] == "nosniff"
    assert seeded.get(f"/runs/{FAILED_RUN}/plots/roc.png").content == PNG_1PX
    assert seeded.get(f"/runs/{FAILED_RUN}/plots/run.json").status_code == 404
    assert seeded.get(f"/runs/{FAILED_RUN}/plots/..%2Frun.json").status_code == 404


def test_models_page_charts_each_metric_with_production_marked(seeded: Seeded) -> None:
    models = seeded.get("/api/models").json()["models"]
    assert [(m["name"], m["versions"], m["latest"], m["aliases"]) for m in models] == [
        ("iris", 4, 4, {"production": 2, "staging": 3})]
    model = seeded.get("/api/models/iris").json()
    assert [v["version"] for v in model["versions"]] == [4, 3, 2, 1]
    assert model["production"] == 2 and model["metrics"] == ["accuracy", "loss"]
    assert model["series"]["accuracy"] == [[v, a] for v, a in ACCURACY.items()]

    page = seeded.get("/models/iris").text
    charts = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    assert len(charts) == 2
    for chart in charts:
        assert chart.count('class="point"') == 4
        assert "production v2" in chart and 'href="/models/iris/2" class="production-mark"' in chart
    assert re.search(r'<tr class="production-row"><td><a href="/models/iris/2">v2</a>', page)


def test_version_page_lineage_gates_signature_and_diff(seeded: Seeded) -> None:
    api = seeded.get("/api/models/iris/3?against=2").json()
    assert api["lineage"]["commit"] == "3" * 40 and api["lineage"]["data"] == {"data/iris.csv": "data3" * 8}
    assert api["lineage"]["digest"] == f"{3:064x}" and api["lineage"]["aliases"] == ["staging"]
    assert api["version"]["gates"] == GATES and api["version"]["signature"]["inputs"][0]["name"] == "x"
    metrics = {c["key"]: c for c in api["diff"]["metrics"]}
    assert metrics["accuracy"]["a"] == 0.95 and metrics["accuracy"]["b"] == 0.7
    assert metrics["accuracy"]["delta"] == pytest.approx(-0.25)
    assert [c["key"] for c in api["diff"]["data"]] == ["data/iris.csv"]

    page = seeded.get("/models/iris/3?against=2").text
    lineage = re.search(r'<ol class="lineage" id="lineage">(.*?)</ol>', page, re.S)
    assert lineage is not None
    assert "3" * 40 in lineage.group(1) and f"{3:064x}" in lineage.group(1) and "data/iris.csv" in lineage.group(1)
    assert "iris@2 → iris@3" in page and "FAIL" in page
    assert seeded.get("/models/iris/9").status_code == 404
    assert seeded.get("/api/models/iris/3?against=9").status_code == 404
    assert seeded.get("/models/iris/3?against=two").status_code == 400
    assert seeded.get("/api/models/nothing").json()["error"].startswith("no model version matches 'nothing'")


def test_deployments_page_has_the_alias_history_with_kinds_and_reasons(seeded: Seeded) -> None:
    api = seeded.get("/api/deployments").json()
    assert api["deployments"] == []  # nothing serves in this project
    moves = api["history"]["iris"]
    assert [(m["kind"], m["actor"], m["from_version"], m["to_version"]) for m in moves] == [
        ("promote", "dave", None, 3), ("rollback", "carol", 4, 2), ("promote", "bob", 2, 4),
        ("line", "alice", None, 2)]
    page = seeded.get("/deployments").text
    rollback = re.search(r'<tr class="kind-rollback">(.*?)</tr>', page, re.S)
    assert rollback is not None
    assert "v4 → v2" in rollback.group(1) and "carol" in rollback.group(1)
    assert "p99 over budget after promotion" in rollback.group(1)
    assert "Nothing is live" in page


def test_every_answer_carries_a_strict_content_security_policy(seeded: Seeded) -> None:
    for path in ("/runs", "/models/iris", "/api/runs", "/static/live.js", "/login"):
        response = seeded.get(path, follow_redirects=True)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
        assert response.headers["x-frame-options"] == "DENY"
    page = seeded.get("/runs").text
    assert 'style="' not in page and "<script>" not in page
    assert seeded.get("/static/live.js").text.startswith("// Conveyor dashboard")


def test_a_page_asked_for_under_another_host_name_is_refused(seeded: Seeded) -> None:
    # A site whose name was re-pointed at 127.0.0.1 (DNS rebinding) must not read the dashboard.
    assert seeded.get("/api/models", headers={"Host": "attacker.example"}).status_code == 400
    assert seeded.get("/api/models", headers={"Host": "localhost:8100"}).status_code == 200


def test_reading_every_page_changes_neither_the_registry_nor_the_run_store(seeded: Seeded) -> None:
    paths = ["/", "/runs", "/runs?page=2", "/runs?page=99", f"/runs/{FAILED_RUN}", "/models", "/models/iris",
             "/models/iris?page=2", "/models/iris/1", "/models/iris/4?against=1", "/deployments", "/login",
             f"/runs/{FAILED_RUN}/plots/confusion.svg", "/runs/nope", "/models/nope"]
    for path in paths:
        assert seeded.get(path, follow_redirects=True).status_code in (200, 404), path
        if not path.startswith(("/login", "/runs/" + FAILED_RUN + "/plots")) and path != "/":
            assert seeded.get("/api" + path).status_code in (200, 404), path
    assert seeded.get("/api/deployments/live").json() == {"numbers": []}
    assert _snapshot(seeded.root, seeded.url) == seeded.before
    if seeded.url.startswith("sqlite"):
        state = seeded.root / ".conveyor"
        assert {p.name for p in state.iterdir()} <= {"runs", "registry.db", "registry.db-wal", "registry.db-shm"}
        wal = state / "registry.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0


# -- the token ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(seeded: Seeded) -> Iterator[tuple[UI, str]]:
    token = auth.generate_token()
    ui = start_ui(seeded.root, env={"CONVEYOR_REGISTRY_URL": seeded.url, "CONVEYOR_UI_TOKEN": token})
    try:
        yield ui, token
    finally:
        ui.stop()


def test_with_a_token_scripts_need_the_bearer_token(guarded: tuple[UI, str]) -> None:
    ui, token = guarded
    refused = httpx.get(ui.url + "/api/runs", timeout=30)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert "runs" not in refused.json()
    assert httpx.get(ui.url + "/api/runs", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert httpx.get(ui.url + f"/runs/{FAILED_RUN}/plots/roc.png", timeout=30).status_code == 303
    allowed = httpx.get(ui.url + "/api/runs", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert allowed.status_code == 200 and allowed.json()["runs"][0]["id"] == FAILED_RUN


def test_with_a_token_a_browser_logs_in_once_and_gets_a_strict_cookie(guarded: tuple[UI, str]) -> None:
    ui, token = guarded
    with httpx.Client(base_url=ui.url, timeout=30) as browser:
        first = browser.get(f"/runs/{FAILED_RUN}")
        assert first.status_code == 303 and first.headers["location"] == f"/login?next=/runs/{FAILED_RUN}"
        wrong = browser.post("/login", data={"token": "guess", "next": "/models"})
        assert wrong.status_code == 401 and "not the dashboard&#39;s token" in wrong.text
        assert "conveyor_ui" not in browser.cookies
        login = browser.post("/login", data={"token": token, "next": "/models"})
        assert login.status_code == 303 and login.headers["location"] == "/models"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert token not in cookie
        assert "iris" in browser.get("/models").text
        assert browser.get("/api/models").status_code == 200
    evil = httpx.post(ui.url + "/login", data={"token": token, "next": "//evil.example/"}, timeout=30)
    assert evil.headers["location"] == "/runs"


def test_auth_flag_creates_a_private_token_file(tmp_repo: Path) -> None:
    token_file = tmp_repo / ".conveyor" / "ui.token"
    ui = start_ui(tmp_repo, "--auth", env={"CONVEYOR_REGISTRY_URL": ""})
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 40
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(ui.url + "/api/models", timeout=30).status_code == 401
        assert httpx.get(ui.url + "/api/models", headers=headers, timeout=30).status_code == 200
        said = ui.output.read_text()
        assert str(token_file) in said and token not in said  # says where the token is, never prints it
    finally:
        ui.stop()
    assert auth.load_or_create_token(token_file) == token  # the next start reuses it


# -- no registry yet, live numbers, tokens on disk ------------------------------------------


def test_a_project_without_a_registry_shows_empty_pages_and_creates_none(tmp_repo: Path) -> None:
    ui = start_ui(tmp_repo, env={"CONVEYOR_REGISTRY_URL": ""})
    try:
        assert "Nothing registered yet" in httpx.get(ui.url + "/models", timeout=30).text
        assert "No runs yet" in httpx.get(ui.url + "/runs", timeout=30).text
        assert httpx.get(ui.url + "/api/deployments", timeout=30).json() == {"deployments": [], "history": {},
                                                                               "numbers": []}
    finally:
        ui.stop()
    assert not (tmp_repo / ".conveyor" / "registry.db").exists()


def test_request_rate_error_rate_and_p99_from_the_servers_metrics() -> None:
    metrics = ServingMetrics()
    metrics.set_model("iris", 2)
    for _ in range(98):
        metrics.observe_request("/predict", 200, 0.003)
    metrics.observe_request("/predict", 500, 0.2)
    metrics.observe_request("/invocations", 200, 0.003)
    for _ in range(50):  # health checks and scrapes are not traffic
        metrics.observe_request("/healthz", 200, 3.0, method="GET")
    first = live.parse_counts(metrics.render()[0].decode(), at=100.0)
    assert first.requests == 100 and first.errors == 1
    whole = live.numbers("http://x", first, None)
    assert whole.requests_per_s is None and whole.error_rate == pytest.approx(0.01)
    assert whole.p99_ms is not None and 2.5 <= whole.p99_ms <= 5.0  # the 99th of 100 is in the 2.5–5 ms bucket

    for _ in range(20):
        metrics.observe_request("/predict", 503, 0.4)
    later = live.parse_counts(metrics.render()[0].decode(), at=110.0)
    window = live.numbers("http://x", later, first)
    assert window.requests_per_s == pytest.approx(2.0) and window.error_rate == 1.0
    assert window.p99_ms is not None and 250 <= window.p99_ms <= 500
    assert window.window_s == pytest.approx(10.0)


def test_live_numbers_cover_about_the_last_minute_and_survive_a_restart() -> None:
    scrapes = live.Scrapes(window_s=60.0)
    at = {0.1: 0.0, float("inf"): 0.0}
    assert scrapes.record("u", live.Counts(0.0, 0, 0, at)).window_s is None  # first: the server's whole life
    scrapes.record("u", live.Counts(5.0, 10, 0, {0.1: 10.0, float("inf"): 10.0}))
    quiet = scrapes.record("u", live.Counts(10.0, 10, 0, {0.1: 10.0, float("inf"): 10.0}))
    assert quiet.window_s == 10.0 and quiet.requests_per_s == 1.0  # the burst stays in view
    for t in range(15, 100, 5):
        later = scrapes.record("u", live.Counts(float(t), 10, 0, {0.1: 10.0, float("inf"): 10.0}))
    assert later.window_s is not None and 60.0 <= later.window_s < 65.0 and later.requests_per_s == 0.0
    restarted = scrapes.record("u", live.Counts(100.0, 3, 0, {0.1: 3.0, float("inf"): 3.0}))
    assert restarted.window_s is None and restarted.requests == 3


def test_quantile_interpolates_within_a_bucket() -> None:
    buckets = {0.1: 0.0, 0.2: 100.0, float("inf"): 100.0}
    assert live.quantile(buckets, 0.5) == pytest.approx(0.15)
    assert live.quantile({0.1: 0.0, float("inf"): 0.0}, 0.99) is None
    assert live.quantile({0.1: 5.0, float("inf"): 10.0}, 0.99) == 0.1  # beyond the last bound: the bound


def test_token_file_is_created_private_and_refused_when_readable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ui.token"
    token = auth.load_or_create_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_or_create_token(path) == token
    path.chmod(0o644)
    with pytest.raises(Exception, match="can be read by other users"):
        auth.load_or_create_token(path)
    assert auth.bearer(f"Bearer {token}") == token and auth.bearer("Basic abc") is None
    assert auth.matches(token, token) and not auth.matches(token[:-1], token) and not auth.matches(None, token)


def test_ui_refuses_a_registry_of_a_newer_schema(tmp_repo: Path) -> None:
    url = f"sqlite:///{tmp_repo / '.conveyor' / 'registry.db'}"
    Registry(url).close()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (99, 'future', '2030-01-01 00:00:00')")
    engine.dispose()
    process = subprocess.run([sys.executable, "-m", "conveyor", "ui", "--port", "0"], cwd=tmp_repo,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "CONVEYOR_REGISTRY_URL": url})
    assert process.returncode == 1 and process.stderr.startswith("Error: the registry at")
    assert "schema 99" in process.stderr and "upgrade Conveyor" in process.stderr
    assert "Traceback" not in process.stderr and process.stdout == ""
