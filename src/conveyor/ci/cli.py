"""`conveyor ci generate|check`: write a CI engine's file, check it with the real tools."""

from __future__ import annotations

import os
import shutil
import sys
from typing import cast

import click

from conveyor.ci.generate import ENGINES, Engine


@click.group("ci")
def ci() -> None:
    """Run the line in GitHub Actions, GitLab CI or Jenkins.

    \b
    Examples:
      conveyor ci generate github --deploy
      conveyor ci check
    """


@ci.command("generate")
@click.argument("engine", type=click.Choice(ENGINES))
@click.option("--deploy", is_flag=True, help="Also package and push the image, and deploy to production, on the release branch.")
@click.option("--force", is_flag=True, help="Overwrite the engine's file if it exists.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the file instead of writing it.")
def generate(engine: str, deploy: bool, force: bool, to_stdout: bool) -> None:
    """Write the engine's file from conveyor.yaml (.github/workflows/conveyor.yml, .gitlab-ci.yml, Jenkinsfile).

    \b
    Examples:
      conveyor ci generate github
      conveyor ci generate jenkins --deploy --force
      conveyor ci generate gitlab --stdout
    """
    from conveyor.ci.generate import render, write
    from conveyor.project import Project

    project = Project.find()
    if to_stdout:
        click.echo(render(project.root, cast(Engine, engine), deploy=deploy).text, nl=False)
        return
    generated = write(project.root, cast(Engine, engine), deploy=deploy, force=force)
    click.echo(f"  {click.style('wrote', fg='green')} {generated.path}")


@ci.command("check")
def check_command() -> None:
    """Check the CI files here with actionlint, check-jsonschema and Groovy, whichever are installed.

    Exits 1 when a check fails; a tool that is missing is listed as skipped.

    \b
    Example:
      conveyor ci generate github && conveyor ci check
    """
    from conveyor.ci.check import check, java_home
    from conveyor.exceptions import ConveyorError
    from conveyor.project import Project

    project = Project.find()
    results = check(project.root, java_home=java_home(os.environ, shutil.which("java")))
    if not results:
        raise ConveyorError("no CI file here to check; write one with `conveyor ci generate github|gitlab|jenkins`")
    colours = {"passed": "green", "failed": "red", "skipped": "yellow"}
    for result in results:
        click.echo(f"  {click.style(result.status, fg=colours[result.status]):<8} {result.tool:<17} {result.file}")
        if result.status == "failed" and result.output:
            click.echo("\n".join("      " + line for line in result.output.splitlines()))
    if any(r.status == "failed" for r in results):
        sys.exit(1)
