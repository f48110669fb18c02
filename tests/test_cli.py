"""Every command documents itself with an example, and errors never show a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conveyor.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "conveyor")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "conveyor " in result.output.split("Example", 1)[1]


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)


def test_outside_a_project_says_what_to_do(tmp_path: Path) -> None:
    process = _cli(tmp_path, "run")
    assert process.returncode == 1
    assert process.stderr.startswith("Error: no conveyor.yaml in")
    assert "conveyor init" in process.stderr and "Traceback" not in process.stderr


def test_bad_config_is_one_clear_error(tmp_repo: Path) -> None:
    config = tmp_repo / "conveyor.yaml"
    config.write_text(config.read_text().replace("outs: [model.txt]", "outs: model.txt\n    colour: red"))
    process = _cli(tmp_repo, "run")
    assert process.returncode == 1
    assert "conveyor.yaml:11: stages.train.outs: Input should be a valid list" in process.stderr
    assert "conveyor.yaml:12: stages.train.colour: unknown key" in process.stderr
    assert "Traceback" not in process.stderr


def test_bad_option_value_names_the_option(tmp_repo: Path) -> None:
    process = _cli(tmp_repo, "run", "--jobs", "zero")
    assert process.returncode == 2 and "'--jobs'" in process.stderr


def test_unknown_model_reference(tmp_repo: Path) -> None:
    process = _cli(tmp_repo, "models", "show", "tiny@production")
    assert process.returncode == 1 and process.stderr.startswith("Error: ")
    assert "Traceback" not in process.stderr
