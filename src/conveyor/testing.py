"""The pytest plugin: a project's tests get the candidate model as a fixture.

pytest loads this module for every run in an environment where Conveyor is
installed, Conveyor project or not, so it imports nothing heavy at module level
and registers its reporting hooks only when the line asks for a report.

The line sets `CONVEYOR_CANDIDATE_PATH` (the model directory under test) and
`CONVEYOR_TEST_REPORT` (where to write pass/fail counts and failing test ids).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.model import LoadedModel
    from conveyor.project import Project

CANDIDATE_ENV = "CONVEYOR_CANDIDATE_PATH"
REPORT_ENV = "CONVEYOR_TEST_REPORT"
REGISTRY_ENV = "CONVEYOR_REGISTRY_URL"


def _project(pytest_config: pytest.Config) -> tuple[Project, Config]:
    """The project the tests belong to: the nearest conveyor.yaml from where pytest ran or its test paths."""
    from conveyor import config
    from conveyor.exceptions import ConveyorError, NotAProjectError
    from conveyor.project import Project

    here = pytest_config.invocation_params.dir
    starts = [here, *(here / arg.split("::")[0] for arg in pytest_config.args)]  # where pytest ran, the tests
    try:
        for start in starts:
            try:
                project = Project.find(start if start.is_dir() else start.parent)
                break
            except NotAProjectError:
                continue
        else:
            raise NotAProjectError(str(here))
        parsed, _ = config.parse(project.config_path.read_text(encoding="utf-8"), str(project.config_path))
    except ConveyorError as exc:
        pytest.fail(f"conveyor: {exc}", pytrace=False)
    return project, parsed


def _candidate_path(pytest_config: pytest.Config) -> Path:
    from_env = os.environ.get(CANDIDATE_ENV)
    if from_env:
        return Path(from_env)
    project, parsed = _project(pytest_config)
    return project.root / parsed.model.path


def _require_model(path: Path) -> None:
    from conveyor.model import METADATA_FILE

    if not (path / METADATA_FILE).is_file():
        pytest.fail(
            f"candidate_model: no model at {path} yet; run `conveyor run` first "
            "(or run the training stage that saves it with conveyor.save_model)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def candidate_model(request: pytest.FixtureRequest) -> LoadedModel:
    """The model under test: `$CONVEYOR_CANDIDATE_PATH`, else `model.path` of the nearest conveyor.yaml."""
    from conveyor.exceptions import ConveyorError
    from conveyor.model import load_model

    path = _candidate_path(request.config)
    _require_model(path)
    try:
        return load_model(path)
    except ConveyorError as exc:
        pytest.fail(f"candidate_model: {exc}", pytrace=False)


@dataclass(frozen=True)
class CandidateVersion:
    """What the line knows about the candidate before it is registered."""

    path: Path
    digest: str
    flavor: str
    signature: dict[str, Any]
    environment: dict[str, Any]
    metrics: dict[str, float]


@pytest.fixture(scope="session")
def candidate_version(request: pytest.FixtureRequest) -> CandidateVersion:
    """The candidate's digest, signature, environment and the metrics its stages wrote."""
    from conveyor.metrics import read_metrics
    from conveyor.model import read_metadata
    from conveyor.store import hash_path

    path = _candidate_path(request.config)
    _require_model(path)
    project, parsed = _project(request.config)
    metrics: dict[str, float] = {}
    for stage in parsed.stages.values():
        for metrics_file in stage.metrics:
            if (project.root / metrics_file).is_file():
                metrics.update(read_metrics(project.root / metrics_file))
    metadata = read_metadata(path)
    return CandidateVersion(path=path, digest=hash_path(path), flavor=metadata.flavor,
                            signature=metadata.signature, environment=metadata.environment, metrics=metrics)


@pytest.fixture(scope="session")
def production_model(request: pytest.FixtureRequest) -> LoadedModel:
    """The version `production` points to, verified against its registry digest; skips when there is none."""
    from conveyor.exceptions import ConveyorError, ModelNotFound
    from conveyor.model import load_verified
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    project, parsed = _project(request.config)
    url = os.environ.get(REGISTRY_ENV) or parsed.registry or project.default_registry_url
    try:
        registry = Registry(url)
        try:
            version = registry.resolve(f"{parsed.model.name}@production")
        finally:
            registry.close()
    except ModelNotFound:
        pytest.skip(f"no production version of {parsed.model.name} yet: the first promotion has nothing to compare with")
    except ConveyorError as exc:
        pytest.fail(f"production_model: {exc}", pytrace=False)
    try:
        return load_verified(ArtifactStore(project.cache_dir), project.models_dir, version.digest)
    except ConveyorError as exc:
        pytest.fail(f"production_model: {version.ref}: {exc}", pytrace=False)


class _Report:
    """Counts outcomes and writes them where the line will read them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.passed = 0
        self.failures: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            if report.nodeid not in self.failures:
                self.failures.append(report.nodeid)
        elif report.passed and report.when == "call":
            self.passed += 1

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.failures.append(report.nodeid or "<collection>")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        data: dict[str, Any] = {"passed": self.passed, "failed": len(self.failures), "failures": self.failures}
        from conveyor.store import atomic_write_text

        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    target = os.environ.get(REPORT_ENV)
    if target:
        config.pluginmanager.register(_Report(Path(target)), "conveyor-report")
