"""The whole line on the bundled iris example: real git, real training, real HTTP.

Each test drives the `conveyor` command as a user would, in a fresh project.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import commit_all, git

from conveyor.scaffold import init_project

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def conveyor(root: Path, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the CLI in `root` the way a user would."""
    process = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                             timeout=timeout, check=False)
    if check and process.returncode != 0:
        raise AssertionError(f"conveyor {' '.join(args)} exited {process.returncode}\n{process.stdout}\n{process.stderr}")
    return process


def run_json(root: Path, *args: str, check: bool = True) -> dict[str, Any]:
    process = conveyor(root, "run", "--json", *args, check=check)
    record: dict[str, Any] = json.loads(process.stdout)
    return record


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in record["steps"]}


def slow_down_training(root: Path, seconds: int) -> None:
    """Make the train stage sleep first, so a test can act while it runs."""
    train = root / "src" / "train.py"
    future = "from __future__ import annotations\n"
    text = train.read_text()
    assert future in text
    train.write_text(text.replace(future, future + f"import time\ntime.sleep({seconds})\n", 1))


def set_param(root: Path, old: str, new: str) -> None:
    params = root / "params.yaml"
    text = params.read_text()
    assert old in text
    params.write_text(text.replace(old, new))


@pytest.fixture
def iris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh iris project, committed, with its own server port; the server is stopped afterwards."""
    root = tmp_path / "iris"
    init_project(root, "iris")
    monkeypatch.setenv("CONVEYOR_PORT", str(_free_port()))
    yield root
    conveyor(root, "deployments", "stop", check=False)


def predict(port: int, rows: Any) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows}, timeout=10)


SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_first_run_trains_registers_promotes_and_serves(iris: Path) -> None:
    record = run_json(iris)
    assert record["status"] == "passed", record["error"]
    assert statuses(record) == {"stage:prepare": "ran", "stage:train": "ran", "tests": "ran", "gates": "passed",
                                "register": "ran", "promote": "ran", "deploy": "ran"}
    assert record["model"] == {"name": "iris", "version": 1, "digest": record["model"]["digest"], "new": True}

    port = int(os.environ["CONVEYOR_PORT"])
    response = predict(port, [SETOSA])
    assert response.status_code == 200
    assert response.json()["predictions"] == [0]
    assert response.headers["x-model-version"] == "1"
    version = httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()
    assert version["commit"] == git(iris, "rev-parse", "HEAD")

    shown = json.loads(conveyor(iris, "models", "show", "iris@production", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["production"]
    lineage = shown["lineage"]
    assert lineage["git"] == {"commit": git(iris, "rev-parse", "HEAD"), "branch": "main", "dirty": False}
    assert set(lineage["stages"]) == {"prepare", "train"}
    assert "data/iris.csv" in lineage["stages"]["prepare"]["deps"]
    assert lineage["run_id"] == record["id"]
    assert shown["params"]["train.C"] == 1.0
    assert shown["metrics"]["accuracy"] >= 0.9
    assert [g["passed"] for g in shown["gates"]] == [True, True]
    assert "scikit-learn" in json.dumps(lineage["environment"])


def test_unchanged_commit_runs_nothing_and_registers_nothing(iris: Path) -> None:
    run_json(iris)
    train_log = iris / ".conveyor" / "runs"
    record = run_json(iris)
    assert record["status"] == "passed"
    steps = statuses(record)
    assert steps["stage:prepare"] == steps["stage:train"] == "cached"
    assert steps["tests"] == "cached"
    assert steps["register"] == "skipped" and steps["deploy"] == "cached"
    assert record["model"]["version"] == 1 and record["model"]["new"] is False
    assert len(list(train_log.iterdir())) == 2
    listed = json.loads(conveyor(iris, "models", "list", "--json").stdout)
    assert [v["version"] for v in listed] == [1]


def test_param_change_registers_v2_and_the_server_switches(iris: Path) -> None:
    run_json(iris)
    set_param(iris, "C: 1.0", "C: 0.5")
    commit_all(iris, "smaller C")
    record = run_json(iris)
    assert record["status"] == "passed", record["error"]
    steps = statuses(record)
    assert steps["stage:prepare"] == "cached" and steps["stage:train"] == "ran"
    assert record["model"]["version"] == 2 and record["model"]["new"] is True
    response = predict(int(os.environ["CONVEYOR_PORT"]), [SETOSA])
    assert response.headers["x-model-version"] == "2"
    history = json.loads(conveyor(iris, "models", "show", "iris@production", "--json").stdout)
    assert history["version"] == 2


def test_degraded_model_fails_the_gate_and_production_stays(iris: Path) -> None:
    run_json(iris)
    set_param(iris, "C: 1.0", "C: 0.0001")
    commit_all(iris, "degrade the model")
    process = conveyor(iris, "run", check=False)
    assert process.returncode == 1
    assert "Gates" in process.stdout and "FAIL" in process.stdout
    assert "accuracy" in process.stdout and "production was not changed" in process.stdout
    shown = json.loads(conveyor(iris, "models", "show", "iris@production", "--json").stdout)
    assert shown["version"] == 1
    listed = json.loads(conveyor(iris, "models", "list", "--json").stdout)
    assert [v["version"] for v in listed] == [1]
    assert predict(int(os.environ["CONVEYOR_PORT"]), [SETOSA]).headers["x-model-version"] == "1"


def test_deleted_outs_come_back_from_cache(iris: Path) -> None:
    run_json(iris)
    import shutil

    shutil.rmtree(iris / "model")
    shutil.rmtree(iris / "data" / "prepared")
    (iris / "metrics.json").unlink()
    record = run_json(iris)
    steps = statuses(record)
    assert steps["stage:prepare"] == steps["stage:train"] == "restored"
    assert (iris / "model" / "conveyor-model.json").is_file()
    assert json.loads((iris / "metrics.json").read_text())["accuracy"] >= 0.9


def test_failing_project_test_stops_the_line_with_its_name(iris: Path) -> None:
    (iris / "tests" / "test_extra.py").write_text(
        "def test_model_is_perfect(candidate_model):\n    assert False, 'nobody is perfect'\n")
    commit_all(iris, "a test that fails")
    process = conveyor(iris, "run", check=False)
    assert process.returncode == 1
    assert "test_model_is_perfect" in process.stdout
    assert "nobody is perfect" in process.stdout  # the tail of the test log
    record = json.loads(conveyor(iris, "runs", "show", "--json").stdout)
    assert statuses(record)["tests"] == "failed" and statuses(record)["register"] == "skipped"


def test_dirty_tree_is_refused_unless_allowed(iris: Path) -> None:
    (iris / "src" / "train.py").write_text((iris / "src" / "train.py").read_text() + "\n# edited\n")
    process = conveyor(iris, "run", check=False)
    assert process.returncode == 1
    assert "uncommitted changes (src/train.py)" in process.stderr
    assert "Traceback" not in process.stderr
    record = run_json(iris, "--allow-dirty")
    assert record["dirty"] is True and record["status"] == "passed"
    steps = statuses(record)
    assert steps["promote"] == "skipped"


def _start_run(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "conveyor", "run"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_training(root: Path) -> None:
    """Until train.py has saved the model and sleeps before writing its metrics."""
    deadline = time.time() + 60
    while not (root / "model" / "conveyor-model.json").exists():
        if time.time() > deadline:
            pytest.fail("training never reached its sleep")
        time.sleep(0.1)


def _sleep_after_saving(root: Path, seconds: int) -> str:
    """Make train.py sleep between saving the model and writing metrics; return the original."""
    train = root / "src" / "train.py"
    original = train.read_text()
    marker = "    conveyor.log_metrics("
    assert marker in original
    train.write_text(original.replace(marker, f"    __import__('time').sleep({seconds})\n" + marker, 1))
    commit_all(root, "slow training")
    return original


def test_kill_9_mid_stage_then_rerun_succeeds(iris: Path) -> None:
    original = _sleep_after_saving(iris, 60)
    runner = _start_run(iris)
    _wait_for_training(iris)
    os.killpg(runner.pid, signal.SIGKILL)  # conveyor and its stage, like a power cut
    runner.communicate()

    interrupted = json.loads(conveyor(iris, "runs", "show", "--json").stdout)
    assert interrupted["status"] == "interrupted"
    assert statuses(interrupted)["stage:train"] == "interrupted"

    (iris / "src" / "train.py").write_text(original)
    commit_all(iris, "fast training again")
    record = run_json(iris)
    assert record["status"] == "passed" and record["model"]["version"] == 1
    assert statuses(record)["stage:train"] == "ran"  # the half-written model was never cached


def test_ctrl_c_mid_stage_stops_cleanly(iris: Path) -> None:
    original = _sleep_after_saving(iris, 60)
    runner = _start_run(iris)
    _wait_for_training(iris)
    os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the whole group
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 130
    assert b"Interrupted." in stderr and b"Traceback" not in stderr
    record = json.loads(conveyor(iris, "runs", "show", "--json").stdout)
    assert record["status"] == "interrupted"

    (iris / "src" / "train.py").write_text(original)
    commit_all(iris, "fast training again")
    assert run_json(iris)["status"] == "passed"


def test_an_orphaned_stage_keeps_the_lock(iris: Path) -> None:
    original = _sleep_after_saving(iris, 60)
    runner = _start_run(iris)
    _wait_for_training(iris)
    os.kill(runner.pid, signal.SIGKILL)  # only conveyor dies; its stage runs on
    runner.communicate()
    try:
        blocked = conveyor(iris, "run", check=False)
        assert blocked.returncode == 1 and "another conveyor run holds" in blocked.stderr
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
    (iris / "src" / "train.py").write_text(original)
    commit_all(iris, "fast training again")
    assert run_json(iris)["status"] == "passed"


def test_second_run_at_once_fails_clearly(iris: Path) -> None:
    slow_down_training(iris, 30)
    commit_all(iris, "slow training")
    first = subprocess.Popen([sys.executable, "-m", "conveyor", "run"], cwd=iris,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list((iris / ".conveyor" / "runs").glob("*/stage-*.log")) and time.time() < deadline:
            time.sleep(0.1)
        second = conveyor(iris, "run", check=False)
        assert second.returncode == 1
        assert "another conveyor run holds" in second.stderr and "--wait" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_a_dirty_model_is_registered_apart_and_its_commit_is_promoted(iris: Path) -> None:
    run_json(iris)
    set_param(iris, "C: 1.0", "C: 0.5")
    dirty = run_json(iris, "--allow-dirty")
    assert dirty["model"]["version"] == 2 and statuses(dirty)["promote"] == "skipped"
    commit = commit_all(iris, "smaller C")
    clean = run_json(iris)
    assert clean["model"]["version"] == 3 and statuses(clean)["promote"] == "ran"
    shown = json.loads(conveyor(iris, "models", "show", "iris@production", "--json").stdout)
    assert shown["version"] == 3
    assert shown["lineage"]["git"] == {"commit": commit, "branch": "main", "dirty": False}


def test_reverting_the_code_brings_the_old_model_back(iris: Path) -> None:
    run_json(iris)
    set_param(iris, "C: 1.0", "C: 0.5")
    commit_all(iris, "smaller C")
    assert run_json(iris)["model"]["version"] == 2
    git(iris, "revert", "--no-edit", "HEAD")
    record = run_json(iris)
    assert record["model"]["version"] == 1
    assert statuses(record)["stage:train"] == "restored"
    assert statuses(record)["promote"] == "ran"
    assert predict(int(os.environ["CONVEYOR_PORT"]), [SETOSA]).headers["x-model-version"] == "1"


def test_feature_branch_registers_but_does_not_promote(iris: Path) -> None:
    run_json(iris)
    git(iris, "checkout", "-q", "-b", "experiment")
    set_param(iris, "C: 1.0", "C: 0.5")
    commit_all(iris, "try a smaller C")
    record = run_json(iris)
    steps = statuses(record)
    assert steps["register"] == "ran" and steps["promote"] == "skipped" and steps["deploy"] == "skipped"
    shown = json.loads(conveyor(iris, "models", "show", "iris@production", "--json").stdout)
    assert shown["version"] == 1


def test_runs_list_and_show(iris: Path) -> None:
    run_json(iris)
    listed = conveyor(iris, "runs", "list")
    assert "passed" in listed.stdout and "iris@1" in listed.stdout
    shown = conveyor(iris, "runs", "show")
    assert "stage:train" in shown.stdout and "gates" in shown.stdout
    missing = conveyor(iris, "runs", "show", "nope", check=False)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


def test_the_line_makes_the_onnx_serving_form_when_configured(iris: Path) -> None:
    config = iris / "conveyor.yaml"
    config.write_text(config.read_text() + "\npackage:\n  runtime: onnx\n")
    commit_all(iris, "serve with onnxruntime")
    shown_run = conveyor(iris, "run", "--no-deploy")
    assert "serving form" in shown_run.stdout and "onnx (checked 305 rows, max difference" in shown_run.stdout
    shown = json.loads(conveyor(iris, "models", "show", "iris@1", "--json").stdout)
    serving = shown["lineage"]["serving"]
    assert serving["runtime"] == "onnx" and serving["converted_from"] == shown["digest"]
    assert serving["rows_checked"] == 305 and serving["max_abs_difference"] < 1e-6
    assert serving["converter"].startswith("skl2onnx ")

    # A model skl2onnx cannot convert: the line says why and goes on; only packaging it as onnx would fail.
    train = iris / "src" / "train.py"
    train.write_text(train.read_text()
                     .replace("from sklearn.linear_model import LogisticRegression",
                              "from sklearn.neighbors import NearestCentroid")
                     .replace('LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]))',
                              "NearestCentroid()"))
    config.write_text(config.read_text().replace("min: 0.9", "min: 0.5").replace("tolerance: 0.02", "tolerance: 0.5"))
    commit_all(iris, "nearest centroid")
    record = run_json(iris, "--no-deploy")
    assert record["status"] == "passed", record["error"]
    step = next(s for s in record["steps"] if s["name"] == "serving form")
    assert step["status"] == "skipped"
    assert "skl2onnx cannot convert a NearestCentroid" in step["summary"]
    assert "package.runtime: native" in step["summary"]
    assert "serving" not in json.loads(conveyor(iris, "models", "show", "iris@2", "--json").stdout)["lineage"]
