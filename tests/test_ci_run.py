"""The generated Jenkinsfile's `sh` steps, run in order as written, the way Jenkins' agent would.

No package registry ships Jenkins, so a small stand-in runner plays its part
(the test name says so): it checks out a detached clone, puts this Python
first on PATH in place of the Setup stage's venv, sets Jenkins' variables, and
runs every `sh` step of each stage with bash, stopping at the first failure.
The install step runs too: everything it names is already installed, so pip
only confirms it. The GitHub and GitLab files run with real runners (act,
gitlab-ci-local): tests/test_ci_runners.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_ci_runners import _clone, origin  # noqa: F401 - origin: the iris example with its CI files committed

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ci-runs")]

STEP_TIMEOUT_S = 600.0


def _run_steps(workspace: Path, commands: list[str], env: dict[str, str]) -> list[str]:
    """Run each command with bash -e in the workspace, in order; return their outputs."""
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=workspace, env=env,
                              capture_output=True, text=True, check=False, timeout=STEP_TIMEOUT_S)
        assert done.returncode == 0, f"step `{command}` failed:\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    return outputs


def _runner_env(**extra: str) -> dict[str, str]:
    """The test's Python first on PATH, as setup-python or the job's image would put one there."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "CONVEYOR_"))}
    return {**base, "PATH": path, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CI": "true", **extra}


def _run_records(workspace: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((workspace / ".conveyor" / "runs").glob("*/run.json"))]


def _groovy_string(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), literal)


def test_jenkinsfile_sh_steps_run_in_order_with_stand_in_jenkins(origin: Path, tmp_path: Path) -> None:
    text = (origin / "Jenkinsfile").read_text()
    stages = re.findall(r"stage\('([^']*)'\)\s*\{(.*?)\n        \}", text, flags=re.S)
    assert [name for name, _ in stages] == ["Setup", "Train", "Test", "Gate"]
    workspace = _clone(origin, tmp_path / "workspace", detached=True)  # Jenkins checks out a detached commit
    commands = []
    for name, body in stages:
        steps = [_groovy_string(s) for s in re.findall(r"\bsh '((?:[^'\\]|\\.)*)'", body)]
        if name == "Setup":  # the stand-in's agent already has a Python with Conveyor: its venv is this one
            assert steps[0] == "python3 -m venv .conveyor/venv" and steps[1].startswith("python -m pip install")
            steps = steps[1:]
        commands += steps
    assert commands[1:] == ["conveyor run --no-deploy",
                            "conveyor report --format md --output .conveyor/report --junit .conveyor/report/junit.xml"]
    env = _runner_env(CONVEYOR_TRIGGER="ci", BRANCH_NAME="main", WORKSPACE=str(workspace))
    _run_steps(workspace, commands, env)
    (record,) = _run_records(workspace)
    assert (record["status"], record["branch"]) == ("passed", "main")
    junit_step = re.search(r"junit testResults: '([^']+)'", text)
    assert junit_step is not None and (workspace / junit_step.group(1)).is_file()
