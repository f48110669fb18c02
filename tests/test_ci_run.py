"""The generated CI files' own commands, run in order as written, the way each engine's runner would.

Marketplace actions, GitLab's runner and Jenkins cannot run here, so a small
stand-in runner plays their part (the test names say so): it checks out a
clone, puts this Python first on PATH in place of setup-python / the image /
the Setup stage's venv, sets the engine's variables, and runs every `run:`,
`script:` or `sh` command of the file with bash, stopping at the first failure.
The install step runs too: everything it names is already installed, so pip
only confirms it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from conveyor.scaffold import init_project
from test_report import _StandInGitHub

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ci-runs")]

STEP_TIMEOUT_S = 600.0


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """The iris example with all three CI files committed, as a team's repository would hold them."""
    root = tmp_path / "origin"
    init_project(root, "iris")
    for engine in ("github", "gitlab", "jenkins"):
        done = subprocess.run([sys.executable, "-m", "conveyor", "ci", "generate", engine], cwd=root,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "CI files"], cwd=root, check=True)
    return root


def _checkout(origin: Path, dest: Path, detached: bool) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    if detached:
        subprocess.run(["git", "checkout", "-q", "--detach", "HEAD"], cwd=dest, check=True)
    return dest


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


def _github_if(condition: str | None, event: str) -> bool:
    """The few expressions the generated workflow uses, evaluated for a push or a pull_request."""
    if condition is None:
        return True
    text = condition.removeprefix("${{").removesuffix("}}").strip()
    text = text.replace("!cancelled()", "True").replace("github.event_name", repr(event))
    text = text.replace("&&", " and ").replace("!=", " != ")
    return bool(eval(text, {"__builtins__": {}}, {"True": True}))  # noqa: S307 - our own generated expressions


def _run_records(workspace: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((workspace / ".conveyor" / "runs").glob("*/run.json"))]


def test_github_push_and_pull_request_jobs_run_as_written_with_stand_in_actions(origin: Path, tmp_path: Path) -> None:
    workflow = yaml.safe_load((origin / ".github/workflows/conveyor.yml").read_text())
    steps = workflow["jobs"]["line"]["steps"]
    assert [s["uses"].split("@")[0] for s in steps if "uses" in s] == [
        "actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"]

    push = _checkout(origin, tmp_path / "push", detached=False)  # checkout@v6 puts a push on its branch
    job_env = {**workflow["env"], "CONVEYOR_REGISTRY_URL": ""}  # the secret is unset: the run's own SQLite registry
    env = _runner_env(**job_env, GITHUB_REF_NAME="main", GITHUB_REF_TYPE="branch")
    _run_steps(push, [s["run"] for s in steps if "run" in s and _github_if(s.get("if"), "push")], env)
    (record,) = _run_records(push)
    assert (record["status"], record["trigger"], record["branch"]) == ("passed", "ci", "main")
    assert next(s for s in record["steps"] if s["name"] == "promote")["status"] == "ran"  # type: ignore[union-attr]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert (push / upload["with"]["path"] / "report.md").is_file()  # what the artifact step uploads exists

    github = _StandInGitHub(existing=3)
    github.thread.start()
    try:
        pull = _checkout(origin, tmp_path / "pull", detached=True)  # a PR builds its merge commit, detached
        event = tmp_path / "event.json"
        event.write_text(json.dumps({"pull_request": {"number": 7}}))
        env = _runner_env(**job_env, GITHUB_REF="refs/pull/7/merge",
                          GITHUB_REF_NAME="7/merge", GITHUB_REF_TYPE="branch", GITHUB_EVENT_PATH=str(event),
                          GITHUB_REPOSITORY="acme/iris", GITHUB_API_URL=github.url, GITHUB_TOKEN=github.TOKEN)
        pr_steps = [s for s in steps if "run" in s and _github_if(s.get("if"), "pull_request")]
        assert "conveyor report --github-comment" in [s["run"] for s in pr_steps]
        for _push_again in range(2):
            _run_steps(pull, [s["run"] for s in pr_steps], env)
    finally:
        github.server.shutdown()
        github.server.server_close()
    (comment,) = github.ours()  # two pushes to the PR, one comment
    assert "trigger ci" in comment["body"] and "branch 7/merge" in comment["body"]


def test_gitlab_job_runs_as_written_on_a_detached_commit_with_stand_in_runner(origin: Path, tmp_path: Path) -> None:
    pipeline = yaml.safe_load((origin / ".gitlab-ci.yml").read_text())
    job = pipeline["line"]
    workspace = _checkout(origin, tmp_path / "build", detached=True)  # GitLab's runner checks out a detached commit
    env = _runner_env(**{k: str(v).replace("$CI_PROJECT_DIR", str(workspace)) for k, v in pipeline["variables"].items()},
                      CI_COMMIT_BRANCH="main", CI_PROJECT_DIR=str(workspace), CI_PIPELINE_SOURCE="push")
    _run_steps(workspace, job["script"], env)
    _run_steps(workspace, job["after_script"], env)
    (record,) = _run_records(workspace)
    assert (record["status"], record["trigger"], record["branch"]) == ("passed", "ci", "main")
    for path in job["artifacts"]["paths"]:
        assert (workspace / path).exists()
    junit = ET.parse(workspace / job["artifacts"]["reports"]["junit"]).getroot()
    assert junit.get("failures") == "0" and int(junit.get("tests") or 0) >= 5


def _groovy_string(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), literal)


def test_jenkinsfile_sh_steps_run_in_order_with_stand_in_jenkins(origin: Path, tmp_path: Path) -> None:
    text = (origin / "Jenkinsfile").read_text()
    stages = re.findall(r"stage\('([^']*)'\)\s*\{(.*?)\n        \}", text, flags=re.S)
    assert [name for name, _ in stages] == ["Setup", "Train", "Test", "Gate"]
    workspace = _checkout(origin, tmp_path / "workspace", detached=True)  # Jenkins checks out a detached commit
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
