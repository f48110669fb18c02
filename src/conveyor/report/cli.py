"""`conveyor report`: a run's report as Markdown/HTML with plots, JUnit XML, or a pull-request comment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.command("report")
@click.argument("run_id", required=False, metavar="[RUN]")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True,
              help="Page format (with --output).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the page and its PNG plots; without it, Markdown goes to stdout.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the steps and gates as JUnit XML here (for Jenkins' junit, GitLab's reports).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (no matplotlib needed).")
@click.option("--github-comment", is_flag=True,
              help="Create or update this pull request's one Conveyor comment (GitHub Actions; GITHUB_TOKEN).")
def report(run_id: str | None, fmt: str, output: Path | None, junit: Path | None, no_plots: bool,
           github_comment: bool) -> None:
    """Report a run (default: the latest): gates, candidate vs production, changes, steps, plots.

    \b
    Examples:
      conveyor report
      conveyor report --format html --output report/
      conveyor report --output conveyor-report --junit conveyor-report/junit.xml
      conveyor report --github-comment
    """
    from conveyor import config as config_module
    from conveyor.project import Project
    from conveyor.report.build import build
    from conveyor.report.junit import junit_xml
    from conveyor.report.render import markdown, write
    from conveyor.runs import RunStore
    from conveyor.store import atomic_write_text

    project = Project.find()
    config = config_module.load(project.root, project.state_dir)
    runs = RunStore(project.runs_dir)
    run = runs.latest(run_id or "")
    registry = None
    if run.model:
        from conveyor.registry import Registry

        registry = Registry(os.environ.get("CONVEYOR_REGISTRY_URL") or config.registry
                            or project.default_registry_url, create=False)
    matrix = next((project.root / out for stage in config.stages.values() for out in stage.all_outs
                   if Path(out).name == "confusion_matrix.json"), None)
    try:
        data = build(project.root, config.project, runs, run.id, registry, confusion_matrix=matrix)
    finally:
        if registry is not None:
            registry.close()
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(junit, junit_xml(data.run))
        click.echo(f"  {click.style('wrote', fg='green')} {junit}", err=output is None and not github_comment)
    if output is not None:
        page = write(data, output, fmt, draw_plots=not no_plots)
        click.echo(f"  {click.style('wrote', fg='green')} {page}")
    if github_comment:
        from conveyor.report.github import pull_request_from, upsert_comment

        event_path = os.environ.get("GITHUB_EVENT_PATH")
        event = json.loads(Path(event_path).read_text(encoding="utf-8")) if event_path and Path(event_path).is_file() else None
        pr = pull_request_from(os.environ, event)
        posted = upsert_comment(pr, os.environ.get("GITHUB_TOKEN", ""), markdown(data, marker=True))
        click.echo(f"  {click.style(posted.action, fg='green')} comment {posted.comment_id} on "
                   f"{pr.repository}#{pr.number} {posted.url}".rstrip())
    if output is None and junit is None and not github_comment:
        click.echo(markdown(data), nl=False)
