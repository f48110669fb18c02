"""Shared fixtures: real git repositories in temp dirs, a git identity for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import postgres
import pytest
import sqlalchemy as sa

from conveyor.registry import ModelVersion, Registry


def pytest_configure(config: pytest.Config) -> None:
    """Let the processes the tests start take Ctrl-C, whoever started the tests.

    A shell that starts a command in the background without job control makes it
    ignore SIGINT, and an ignored signal stays ignored across exec: the tests that
    interrupt a run or a server start would then wait for an exit that never comes.
    A handler, unlike an ignore, is reset to the default at exec.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits made by tests need an author even on a machine with no git config."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Conveyor Tests")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "tests@conveyor.local")


IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
"""Column names of scikit-learn's iris features, as the example project names them."""


@pytest.fixture(scope="module")
def iris() -> tuple[Any, Any]:
    """scikit-learn's bundled iris data: (features, labels)."""
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    return features, labels


@pytest.fixture(scope="module")
def classifier(iris: tuple[Any, Any]) -> Any:
    """A LogisticRegression fitted on iris."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(*iris)


def git(root: Path, *args: str) -> str:
    """Run git in `root` and return its output."""
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


# A two-stage pipeline whose commands append to `ran.log`, so tests can see what ran.
TWO_STAGE_CONFIG = """\
project: tiny
stages:
  prepare:
    cmd: {py} steps.py prepare
    deps: [steps.py, data.txt]
    params: [prepare.factor]
    outs: [prepared/]
  train:
    cmd: {py} steps.py train
    deps: [steps.py, prepared/]
    outs: [model.txt]
    metrics: [metrics.json]
model:
  name: tiny
  path: model.txt
"""

STEPS_SCRIPT = """\
import json, pathlib, sys, yaml
step = sys.argv[1]
with open("ran.log", "a") as log:
    log.write(step + "\\n")
params = yaml.safe_load(open("params.yaml"))
if step == "prepare":
    out = pathlib.Path("prepared"); out.mkdir()
    values = [float(x) * params["prepare"]["factor"] for x in open("data.txt").read().split()]
    (out / "values.txt").write_text(" ".join(map(str, values)))
    (out / "sub").mkdir(); (out / "sub" / "n.txt").write_text(str(len(values)))
else:
    values = [float(x) for x in open("prepared/values.txt").read().split()]
    pathlib.Path("model.txt").write_text(str(sum(values)))
    pathlib.Path("metrics.json").write_text(json.dumps({"total": sum(values)}))
"""


@pytest.fixture
def tmp_repo(tmp_path: Path) -> Path:
    """A committed git repository with the two-stage pipeline above."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "conveyor.yaml").write_text(TWO_STAGE_CONFIG.format(py=sys.executable))
    (root / "steps.py").write_text(STEPS_SCRIPT)
    (root / "data.txt").write_text("1 2 3")
    (root / "params.yaml").write_text("prepare:\n  factor: 2\n")
    (root / ".gitignore").write_text("/prepared/\n/model.txt\n/metrics.json\n/ran.log\n/.conveyor/\n")
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "tiny pipeline")
    return root


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """A throwaway PostgreSQL server on a free loopback port, for the whole session (one per xdist worker).

    Without PostgreSQL installed this skips, except in CI (CI=true), where it
    fails: .ci/run installs PostgreSQL, so its absence there is a broken build.
    """
    try:
        cluster = postgres.Cluster.start()
    except postgres.Unavailable as exc:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true but {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty registry: a SQLite file, or a fresh database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / '.conveyor' / 'registry.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database()


# -- the registry ------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / ".conveyor" / "registry.db"


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    registry = Registry(registry_url)
    yield registry
    registry.close()


@pytest.fixture
def sqlite_registry(db_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{db_path}")
    yield registry
    registry.close()


def engine_for(url: str) -> sa.Engine:
    """A plain engine on a registry's database, to look at it or build old layouts by hand."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def another_url(registry_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second empty database on the same backend as `registry_url`."""
    if registry_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database()


def register(registry: Registry, digest: str, name: str = "iris", **fields: Any) -> tuple[ModelVersion, bool]:
    values: dict[str, Any] = {
        "flavor": "sklearn",
        "signature": {"inputs": [{"name": "x", "type": "double"}]},
        "metrics": {"accuracy": 0.9},
        "params": {"C": 1.0},
        "lineage": {"commit": "abc123", "dirty": False},
        "gates": [],
        "run_id": "run-1",
        **fields,
    }
    return registry.register(name=name, digest=digest, **values)
