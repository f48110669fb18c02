"""Registry commands on a real project: history, promote behind the gates, rollback, diff, lineage.

One scenario is built once (v1 and v2 promoted by the line on main, v3 a weak
model registered from a branch with looser gates); each test that moves an
alias works on its own copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import commit_all, git

from conveyor.scaffold import init_project

pytestmark = pytest.mark.slow

_IDENTITY = {f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER")
             for key, value in (("NAME", "Conveyor Tests"), ("EMAIL", "tests@conveyor.local"))}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(root: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                             timeout=180, check=False, env={**os.environ, **_IDENTITY, **env})
    if check and process.returncode != 0:
        raise AssertionError(f"conveyor {' '.join(args)} exited {process.returncode}\n{process.stdout}\n{process.stderr}")
    return process


def as_json(root: Path, *args: str) -> Any:
    return json.loads(cli(root, *args, "--json").stdout)


def _set(root: Path, path: str, old: str, new: str) -> None:
    text = (root / path).read_text()
    assert old in text
    (root / path).write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenario") / "iris"
    os.environ.update(_IDENTITY)  # the module-scoped commits below need an author too
    init_project(root, "iris")
    cli(root, "run", "--no-deploy")
    _set(root, "params.yaml", "C: 1.0", "C: 0.5")
    commit_all(root, "smaller C")
    cli(root, "run", "--no-deploy")
    git(root, "checkout", "-q", "-b", "weak")
    _set(root, "params.yaml", "C: 0.5", "C: 0.0001")
    _set(root, "conveyor.yaml", "    min: 0.9", "    min: 0.5")
    _set(root, "conveyor.yaml", "    tolerance: 0.02", "    tolerance: 0.5")
    commit_all(root, "a weak model, looser gates")
    cli(root, "run", "--no-deploy")
    git(root, "checkout", "-q", "main")
    return root


@pytest.fixture
def project(scenario: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the scenario, with its own server port; any server is stopped afterwards."""
    root = tmp_path / "iris"
    shutil.copytree(scenario, root, symlinks=True)
    shutil.rmtree(root / ".conveyor" / "models", ignore_errors=True)
    yield root
    cli(root, "deployments", "stop", check=False)


def test_the_scenario_has_three_versions(scenario: Path) -> None:
    versions = as_json(scenario, "models", "list")
    assert [(v["version"], v["aliases"]) for v in versions] == [(3, []), (2, ["production"]), (1, [])]


def test_history_records_every_move(scenario: Path) -> None:
    moves = as_json(scenario, "models", "history", "iris")
    assert [(m["from_version"], m["to_version"], m["kind"]) for m in moves] == [(1, 2, "line"), (None, 1, "line")]
    assert all(m["actor"] == "tests@conveyor.local" and m["run_id"] for m in moves)
    table = cli(scenario, "models", "history", "iris").stdout
    assert "v1 → v2" in table and "gates passed in run" in table


def test_promote_refuses_a_version_that_fails_the_gates(project: Path) -> None:
    refused = cli(project, "models", "promote", "iris", "3", "--to", "production", "--reason", "try", check=False)
    assert refused.returncode == 1
    assert "FAIL" in refused.stdout and "gates failed" in refused.stderr and "--force" in refused.stderr
    assert as_json(project, "models", "show", "iris@production")["version"] == 2

    forced = cli(project, "models", "promote", "iris", "3", "--to", "production", "--reason", "try", "--force")
    assert "forced" in forced.stdout
    assert as_json(project, "models", "show", "iris@production")["version"] == 3
    newest = as_json(project, "models", "history", "iris")[0]
    assert (newest["from_version"], newest["to_version"], newest["kind"]) == (2, 3, "forced")
    assert newest["reason"].startswith("try (forced past failing gates: accuracy >= 0.9")


def test_promote_to_a_new_alias(project: Path) -> None:
    cli(project, "models", "promote", "iris", "1", "--to", "staging", "--reason", "compare with production")
    assert as_json(project, "models", "show", "iris@staging")["version"] == 1
    missing_reason = cli(project, "models", "promote", "iris", "1", "--to", "staging", "--reason", " ", check=False)
    assert missing_reason.returncode == 1 and "--reason" in missing_reason.stderr


def test_rollback_serves_the_previous_version_and_the_line_respects_it(project: Path) -> None:
    port = str(_free_port())
    cli(project, "run", CONVEYOR_PORT=port)  # starts the server on v2
    assert httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()["version"] == 2

    rolled = cli(project, "rollback", "iris", "--reason", "bad answers")
    assert "v2 → v1 (rollback)" in rolled.stdout and "now serves v1" in rolled.stdout
    assert httpx.get(f"http://127.0.0.1:{port}/version", timeout=10).json()["version"] == 1
    newest = as_json(project, "models", "history", "iris")[0]
    assert (newest["to_version"], newest["kind"], newest["reason"]) == (1, "rollback", "bad answers")

    again = json.loads(cli(project, "run", "--json", CONVEYOR_PORT=port).stdout)  # HEAD still builds v2
    promote = next(s for s in again["steps"] if s["name"] == "promote")
    assert promote["status"] == "skipped" and "rolled back" in promote["summary"]
    assert as_json(project, "models", "show", "iris@production")["version"] == 1

    nothing_left = cli(project, "rollback", "iris", check=False)
    assert nothing_left.returncode == 1 and "no earlier version" in nothing_left.stderr


def test_rollback_of_an_alias_that_does_not_exist(scenario: Path) -> None:
    process = cli(scenario, "rollback", "iris", "--alias", "staging", check=False)
    assert process.returncode == 1 and "has no alias 'staging'" in process.stderr


def test_diff_shows_what_changed(scenario: Path) -> None:
    changes = as_json(scenario, "models", "diff", "iris@1", "iris@2")
    assert [(c["key"], c["a"], c["b"]) for c in changes["params"]] == [("train.C", 1.0, 0.5)]
    assert {c["key"] for c in changes["metrics"]} == {"accuracy", "f1_macro"}
    assert changes["data"] == []  # params are tracked as params; no dep file changed
    assert len(changes["commits"]) == 1 and changes["commits"][0].endswith("smaller C")
    assert changes["commits_back"] == []
    backwards = as_json(scenario, "models", "diff", "iris@2", "iris@1")
    assert backwards["commits"] == [] and len(backwards["commits_back"]) == 1
    assert all(size and size > 0 for size in changes["size_bytes"])
    text = cli(scenario, "models", "diff", "iris@1", "iris@2").stdout
    assert "train.C: 1.0 → 0.5" in text


def test_lineage_from_commit_to_model(scenario: Path) -> None:
    found = as_json(scenario, "models", "lineage", "iris@production")
    assert found["ref"] == "iris@2" and found["aliases"] == ["production"]
    assert found["commit"] == git(scenario, "rev-parse", "main") and found["branch"] == "main"
    assert "data/iris.csv" in found["data"] and found["digest"].endswith(".dir")
    assert found["image"] is None and found["deployments"] == []


def test_gates_explains_the_verdict(scenario: Path) -> None:
    assert cli(scenario, "gates", "iris@2").returncode == 0
    weak = cli(scenario, "gates", "iris@3", check=False)
    assert weak.returncode == 1 and "FAIL" in weak.stdout
    against = json.loads(cli(scenario, "gates", "iris@1", "--against", "production", "--json").stdout)
    assert all(r["passed"] for r in against)


def test_unknown_names_are_one_line_errors(scenario: Path) -> None:
    for args in (("models", "show", "nope"), ("models", "show", "iris@99"), ("models", "diff", "iris@1", "iris@9"),
                 ("models", "promote", "iris", "9", "--to", "production", "--reason", "x")):
        process = cli(scenario, *args, check=False)
        assert process.returncode == 1, args
        assert process.stderr.startswith("Error: ") and "Traceback" not in process.stderr, args


def test_gates_against_an_alias_that_does_not_exist(scenario: Path) -> None:
    process = cli(scenario, "gates", "iris@1", "--against", "prodution", check=False)
    assert process.returncode == 1
    assert "iris has no alias 'prodution' (its aliases: production)" in process.stderr


def test_history_of_unknown_models_and_aliases(scenario: Path) -> None:
    unknown = cli(scenario, "models", "history", "nosuch", check=False)
    assert unknown.returncode == 1 and "no model version matches 'nosuch'" in unknown.stderr
    no_alias = cli(scenario, "models", "history", "iris", "--alias", "staging", check=False)
    assert no_alias.returncode == 1 and "iris has no alias 'staging'" in no_alias.stderr


def test_a_mistyped_registry_path_is_not_created(scenario: Path, tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "registry.db"
    process = cli(scenario, "models", "list", check=False, CONVEYOR_REGISTRY_URL=f"sqlite:///{missing}")
    assert process.returncode == 1 and "there is no registry at" in process.stderr
    assert not missing.parent.exists()


def test_the_gates_judge_only_the_projects_model(scenario: Path) -> None:
    process = cli(scenario, "models", "promote", "other", "1", "--to", "production", "--reason", "x", check=False)
    assert process.returncode == 1 and "gates judge the model 'iris', not 'other'" in process.stderr
