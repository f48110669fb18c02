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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conveyor.model import LoadedModel

CANDIDATE_ENV = "CONVEYOR_CANDIDATE_PATH"
REPORT_ENV = "CONVEYOR_TEST_REPORT"


def _candidate_path(pytest_config: pytest.Config) -> Path:
    from_env = os.environ.get(CANDIDATE_ENV)
    if from_env:
        return Path(from_env)
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
        pytest.fail(f"candidate_model: {exc}", pytrace=False)
    return project.root / parsed.model.path


@pytest.fixture(scope="session")
def candidate_model(request: pytest.FixtureRequest) -> LoadedModel:
    """The model under test: `$CONVEYOR_CANDIDATE_PATH`, else `model.path` of the nearest conveyor.yaml."""
    from conveyor.exceptions import ConveyorError
    from conveyor.model import METADATA_FILE, load_model

    path = _candidate_path(request.config)
    if not (path / METADATA_FILE).is_file():
        pytest.fail(
            f"candidate_model: no model at {path} yet; run `conveyor run` first "
            "(or run the training stage that saves it with conveyor.save_model)",
            pytrace=False,
        )
    try:
        return load_model(path)
    except ConveyorError as exc:
        pytest.fail(f"candidate_model: {exc}", pytrace=False)


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
