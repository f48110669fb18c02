"""`conveyor ci generate|check`: the generated files pass the real checkers, and bad input writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conveyor.ci.check import CheckResult, check, java_home
from conveyor.ci.generate import ENGINES, TARGETS, render
from conveyor.scaffold import init_project

pytestmark = pytest.mark.xdist_group("ci-checkers")  # actionlint, Groovy's JVM: one at a time


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The iris example project, with a schedule and a remote configured."""
    root = tmp_path / "iris"
    init_project(root, "iris")
    config = (root / "conveyor.yaml").read_text()
    config = config.replace("triggers:\n  branch: main\n", "triggers:\n  branch: main\n  schedule: \"0 3 * * 1\"\n")
    (root / "conveyor.yaml").write_text(config + "remote: s3://models/iris\n")
    return root


def _checked(root: Path) -> list[CheckResult]:
    return check(root, java_home=java_home(os.environ, shutil.which("java")))


@pytest.mark.slow
@pytest.mark.parametrize("deploy", [False, True], ids=["line", "deploy"])
def test_generated_files_pass_actionlint_jsonschema_and_groovy(example: Path, deploy: bool) -> None:
    for engine in ENGINES:
        args = ["ci", "generate", engine, *(["--deploy"] if deploy else [])]
        done = _cli(example, *args)
        assert done.returncode == 0, done.stderr
        assert (example / TARGETS[engine]).is_file()
    results = _checked(example)
    assert {(r.tool, r.file) for r in results} == {
        ("actionlint", ".github/workflows/conveyor.yml"), ("check-jsonschema", ".github/workflows/conveyor.yml"),
        ("check-jsonschema", ".gitlab-ci.yml"), ("groovy", "Jenkinsfile")}
    assert [r for r in results if r.status != "passed"] == []
    done = _cli(example, "ci", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == 4


@pytest.mark.slow
def test_check_fails_on_broken_files_and_names_the_tool(example: Path) -> None:
    for engine in ENGINES:
        assert _cli(example, "ci", "generate", engine).returncode == 0
    workflow = example / TARGETS["github"]
    workflow.write_text(workflow.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"))
    gitlab = example / TARGETS["gitlab"]
    gitlab.write_text(gitlab.read_text().replace("  stage: line\n", "  stage: line\n  timeout: [1h]\n"))
    jenkins = example / TARGETS["jenkins"]
    jenkins.write_text(jenkins.read_text().replace("stage('Train') {", "stage('Train') {{", 1))
    results = {(r.tool, r.file): r for r in _checked(example)}
    assert {key: r.status for key, r in results.items()} == {
        ("actionlint", ".github/workflows/conveyor.yml"): "failed",
        ("check-jsonschema", ".github/workflows/conveyor.yml"): "failed",
        ("check-jsonschema", ".gitlab-ci.yml"): "failed", ("groovy", "Jenkinsfile"): "failed"}
    assert "runs_on" in results[("actionlint", ".github/workflows/conveyor.yml")].output
    done = _cli(example, "ci", "check")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr


def _commands(engine: str, text: str) -> list[str]:
    """Every command the file runs: `run:` steps, `script:` lines, `sh` steps."""
    if engine == "jenkins":
        return [line.strip()[4:-1] for line in text.splitlines() if line.strip().startswith("sh '")]
    data = yaml.safe_load(text)
    found: list[str] = []
    for job in (data.get("jobs") or {k: v for k, v in data.items() if isinstance(v, dict) and "script" in v}).values():
        found += [step["run"] for step in job.get("steps", []) if "run" in step]
        found += [*job.get("script", []), *job.get("after_script", [])]
    return found


@pytest.mark.parametrize("engine", ENGINES)
def test_every_step_calls_only_conveyor_or_pip(example: Path, engine: str) -> None:
    commands = _commands(engine, render(example, engine, deploy=True).text)  # type: ignore[arg-type]
    assert "conveyor run --no-deploy" in commands
    assert "conveyor pull" in commands and "conveyor push" in commands
    for command in commands:
        assert command.split()[0] == "conveyor" or command.startswith(("python -m pip install", "python3 -m venv")), command


def _parse(args: list[str]) -> None:
    """Parse a command line with Conveyor's own CLI, as far as the command it names, without running it."""
    import click

    from conveyor.cli import main

    command: click.Command = main
    name, parent = "conveyor", None
    while True:
        ctx = command.make_context(name, list(args), parent=parent)
        rest = [*ctx._protected_args, *ctx.args]
        if not isinstance(command, click.Group) or not rest:
            return
        found_name, found, args = command.resolve_command(ctx, rest)
        assert found is not None and found_name is not None, rest
        name, command, parent = found_name, found, ctx


@pytest.mark.parametrize("engine", ENGINES)
def test_every_generated_conveyor_command_parses_with_the_real_cli(example: Path, engine: str) -> None:
    import shlex

    commands = [c for c in _commands(engine, render(example, engine, deploy=True).text)  # type: ignore[arg-type]
                if c.startswith("conveyor ")]
    assert "conveyor package iris@production" in commands and "conveyor deploy iris@production" in commands
    for command in commands:
        # a missing argument or an unknown option raises a click UsageError
        _parse(shlex.split(command.split(" || ")[0])[1:])


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_remote_nothing_is_pulled_or_pushed(example: Path, engine: str) -> None:
    config = example / "conveyor.yaml"
    config.write_text(config.read_text().replace("remote: s3://models/iris\n", ""))
    commands = _commands(engine, render(example, engine).text)  # type: ignore[arg-type]
    assert "conveyor run --no-deploy" in commands
    assert not {"conveyor pull", "conveyor push"} & set(commands)
    assert not any(c.startswith(("conveyor package", "conveyor deploy")) for c in commands)


def test_github_workflow_triggers_cache_and_production_environment(example: Path) -> None:
    workflow = yaml.safe_load(render(example, "github", deploy=True).text)
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["push"] == {"branches": ["main"]}
    assert triggers["schedule"] == [{"cron": "0 3 * * 1"}]
    assert "pull_request" in triggers and "workflow_dispatch" in triggers
    assert workflow["permissions"] == {"contents": "read"} and "concurrency" in workflow
    line = workflow["jobs"]["line"]
    uses = [step.get("uses", "") for step in line["steps"]]
    assert "actions/checkout@v6" in uses and "actions/setup-python@v6" in uses
    cache = next(step for step in line["steps"] if step.get("uses", "").startswith("actions/cache@"))
    # the objects and the stage results that point at them: with both, an unchanged stage is not run again
    assert cache["with"]["path"].split() == [".conveyor/cache", ".conveyor/stages"]
    assert "hashFiles('requirements.txt')" in cache["with"]["key"]
    assert workflow["jobs"]["deploy"]["environment"] == "production"
    assert all("timeout-minutes" in job for job in workflow["jobs"].values())


def test_jenkinsfile_stages_triggers_and_release_branch(example: Path) -> None:
    text = render(example, "jenkins", deploy=True).text
    for stage in ("Setup", "Train", "Test", "Gate", "Package", "Deploy"):
        assert f"stage('{stage}')" in text
    assert "cron('0 3 * * 1')" in text and "pollSCM(" in text
    assert text.count("when { branch 'main' }") == 2
    for piece in ("timestamps()", "disableConcurrentBuilds()", "timeout(", "junit ", "archiveArtifacts", "failure {"):
        assert piece in text


def test_a_branch_name_cannot_break_out_of_its_quotes(example: Path) -> None:
    config = example / "conveyor.yaml"
    config.write_text(config.read_text().replace("  branch: main\n", "  branch: \"it's-${env.X}\"\n"))
    assert "when { branch 'it\\'s-${env.X}' }" in render(example, "jenkins", deploy=True).text
    workflow = yaml.safe_load(render(example, "github", deploy=True).text)
    assert workflow[True]["push"]["branches"] == ["it's-${env.X}"]
    assert "format('refs/heads/{0}', 'it''s-${env.X}')" in workflow["jobs"]["deploy"]["if"]


def test_an_invalid_config_fails_with_the_config_error_and_writes_nothing(example: Path) -> None:
    config = example / "conveyor.yaml"
    config.write_text(config.read_text().replace("  branch: main\n", "  branch: main\n  sheduled: daily\n"))
    done = _cli(example, "ci", "generate", "github")
    assert done.returncode == 1
    line = config.read_text().splitlines().index("  sheduled: daily") + 1
    assert f"Error: conveyor.yaml:{line}: triggers.sheduled: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (example / ".github").exists()


def test_a_bad_schedule_is_a_config_error_with_its_line(example: Path) -> None:
    config = example / "conveyor.yaml"
    config.write_text(config.read_text().replace('"0 3 * * 1"', '"0 25 * * *"'))
    done = _cli(example, "ci", "generate", "gitlab")
    assert done.returncode == 1
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "schedule:" in text)
    assert f"conveyor.yaml:{line}: triggers.schedule: '0 25 * * *' is not a valid cron expression" in done.stderr
    config.write_text(config.read_text().replace('"0 25 * * *"', '"0 0 3 * * *"'))
    assert "must have five fields" in _cli(example, "ci", "generate", "gitlab").stderr
    assert not (example / ".gitlab-ci.yml").exists()


def test_an_existing_file_is_kept_without_force(example: Path) -> None:
    jenkinsfile = example / "Jenkinsfile"
    jenkinsfile.write_bytes(b"// hand-written\r\npipeline {}\n")
    done = _cli(example, "ci", "generate", "jenkins")
    assert done.returncode == 1
    assert "Error: Jenkinsfile exists; pass --force" in done.stderr
    assert jenkinsfile.read_bytes() == b"// hand-written\r\npipeline {}\n"
    printed = _cli(example, "ci", "generate", "jenkins", "--stdout")
    assert printed.returncode == 0 and printed.stdout.startswith("// Written by `conveyor ci generate jenkins`")
    assert jenkinsfile.read_bytes() == b"// hand-written\r\npipeline {}\n"
    assert _cli(example, "ci", "generate", "jenkins", "--force").returncode == 0
    assert jenkinsfile.read_text() == printed.stdout


def test_check_with_no_ci_file_says_how_to_write_one(example: Path) -> None:
    done = _cli(example, "ci", "check")
    assert done.returncode == 1
    assert done.stderr.strip() == ("Error: no CI file here to check; write one with "
                                   "`conveyor ci generate github|gitlab|jenkins`")
