"""The `conveyor` command: parse options, call the library, render the result.

Library errors (`ConveyorError`) become one `Error: …` line and exit code 1.
Heavy modules (registry, serving, scikit-learn) are imported inside the
commands that need them, so `conveyor run` on a cached commit stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from conveyor import __version__, defaults
from conveyor.exceptions import ConveyorError
from conveyor.project import Project


class _LazyConsole:
    """A rich Console created on first use: rich costs ~45 ms to import, and
    `conveyor run` on a cached commit prints with click alone."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False)
        return getattr(self._console, name)


def escape(text: str) -> str:
    """Escape rich markup in text that comes from the user or a log."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


console = _LazyConsole()

# status -> (mark, colour) for step and run lines
_MARKS = {"ran": ("✓", "green"), "passed": ("✓", "green"), "cached": ("●", "cyan"), "restored": ("↺", "cyan"),
          "failed": ("✗", "red"), "skipped": ("–", "bright_black"), "interrupted": ("!", "yellow"),
          "running": ("…", "yellow")}


def _mark(status: str) -> str:
    mark, colour = _MARKS.get(status, ("?", "white"))
    return click.style(mark, fg=colour)


def _step_line(step: Any) -> str:
    took = f"{step.duration_s:6.2f}s" if step.duration_s else "       "
    code = f" exit {step.exit_code}" if step.exit_code not in (None, 0) else ""
    return f" {_mark(step.status)} {step.name:<18} {step.status:<9} {took}{code}  {step.summary}"


def _registry_url(project: Project) -> str:
    """Resolve the registry at the edge: CONVEYOR_REGISTRY_URL > conveyor.yaml > the project's SQLite file."""
    from_env = os.environ.get("CONVEYOR_REGISTRY_URL")
    if from_env:
        return from_env
    from conveyor import config as config_module

    configured = config_module.load(project.root, project.state_dir).registry
    return configured or project.default_registry_url


def _dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Group(click.Group):
    """Turns library errors into one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.echo(f"{click.style('Error:', fg='red')} {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{click.style('Interrupted.', fg='yellow')} Nothing half-written was kept; "
                       "`conveyor runs show` has the record.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="conveyor")
def main() -> None:
    """Conveyor: git commit → cached stages → tests → gates → registry → live prediction API.

    \b
    Example:
      conveyor init demo --example iris && cd demo && conveyor run
    """


# -- init ---------------------------------------------------------------------------------
@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--example", type=click.Choice(["iris"]), help="Write a complete example project and commit it.")
def init(directory: Path, example: str | None) -> None:
    """Start a project: a bundled example, or a conveyor.yaml for an existing project.

    \b
    Examples:
      conveyor init demo --example iris   # a small ML project, committed, ready to run
      conveyor init                       # guess a conveyor.yaml for the project here
    """
    from conveyor.scaffold import init_project

    result = init_project(directory, example)
    for path in result.files:
        console.print(f"  [green]wrote[/] {escape(str(path))}")
    if result.commit:
        console.print(f"  [green]committed[/] {result.commit[:10]}")
    for note in result.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}")


# -- run ----------------------------------------------------------------------------------
class _StepPrinter:
    """Prints each finished step as a line; on a terminal, a spinner names the
    steps still running once they have taken longer than a moment."""

    _SPINNER_DELAY_S = 0.3

    def __init__(self) -> None:
        self.running: list[str] = []
        self.status: Any = None
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()
        self.interactive = sys.stdout.isatty()

    def __call__(self, step: Any) -> None:
        with self.lock:
            if step.status == "running":
                self.running.append(step.name)
            else:
                if step.name in self.running:
                    self.running.remove(step.name)
                click.echo(_step_line(step))
            self._update()

    def _update(self) -> None:
        if not self.interactive:
            return
        if not self.running:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.status is not None:
                self.status.stop()
                self.status = None
        elif self.status is not None:
            self.status.update(self._text())
        elif self.timer is None:
            self.timer = threading.Timer(self._SPINNER_DELAY_S, self._show)
            self.timer.daemon = True
            self.timer.start()

    def _text(self) -> str:
        return "running " + ", ".join(self.running) + "…"

    def _show(self) -> None:
        with self.lock:
            self.timer = None
            if self.running and self.status is None:
                self.status = console.status(self._text())
                self.status.start()

    def close(self) -> None:
        with self.lock:
            self.running.clear()
            self._update()


def _render_gates(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from rich import box

    table = Table(title="Gates", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("gate", "actual", "required", "result", "detail"):
        table.add_column(column)
    for row in rows:
        actual = row.get("actual")
        table.add_row(escape(str(row["gate"])), "-" if actual is None else f"{actual:.6g}",
                      escape(str(row["required"])),
                      "[green]pass[/]" if row["passed"] else "[red]FAIL[/]", escape(str(row.get("detail", ""))))
    console.print(table)


def _render_failure_log(project: Project, run: Any) -> None:
    from conveyor.runs import RunStore

    store = RunStore(project.runs_dir)
    for step in run.steps:
        if step.status == "failed" and step.log:
            tail = store.log_tail(run, step, defaults.LOG_TAIL_LINES)
            if tail:
                click.secho(f"── last {len(tail)} lines of {step.name} ({store.run_dir(run.id) / step.log}) ──",
                            fg="red")
                click.echo("\n".join(tail))


@main.command()
@click.option("--force", is_flag=True, help="Re-run every stage and the tests, ignoring the cache.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=defaults.JOBS, show_default=True,
              help="Independent stages to run at once.")
@click.option("--allow-dirty", is_flag=True, help="Run on uncommitted changes (the model is marked dirty, never promoted).")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=0.0, metavar="SECONDS",
              help="Wait this long for another run in this repository to finish.")
@click.option("--no-deploy", is_flag=True, help="Stop after promotion; do not touch the local server.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port of the local server (default: deploy.port).")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
def run(force: bool, jobs: int, allow_dirty: bool, wait_s: float, no_deploy: bool, port: int | None,
        as_json: bool) -> None:
    """Run the line for the current commit.

    Stages run in dependency order and are skipped when their inputs are
    unchanged; then the tests, the gates, registration, promotion to
    production (on the release branch) and the local deployment.

    \b
    Examples:
      conveyor run
      conveyor run --jobs 2 --json
      conveyor run --force --allow-dirty
    """
    from conveyor.line import LineOptions, run_line

    project = Project.find()
    options = LineOptions(
        registry_url=os.environ.get("CONVEYOR_REGISTRY_URL") or None, force=force, jobs=jobs,
        allow_dirty=allow_dirty, wait_s=wait_s, deploy=not no_deploy,
        port=port or _env_port(), trigger=os.environ.get("CONVEYOR_TRIGGER", "manual"), actor=_actor_from_env(),
        ci_branch=_ci_branch_from_env(),
    )
    started = time.perf_counter()
    if not as_json:
        click.echo(f"{click.style('conveyor run', bold=True)} in {project.root}")
    printer = _StepPrinter()
    try:
        result = run_line(project, options, on_step=None if as_json else printer)
    finally:
        printer.close()
    if as_json:
        _dump_json(result.as_dict())
    else:
        gates = result.step("gates")
        if gates is not None and gates.status == "failed":
            _render_gates(gates.data.get("results", []))
        _render_failure_log(project, result)
        took = time.perf_counter() - started
        if result.status == "passed":
            model = result.model or {}
            what = f"{model.get('name')}@{model.get('version')}" if model else "no model"
            click.echo(f"{click.style('passed', fg='green')} run {result.id} · {what} · {took:.2f}s")
        else:
            click.echo(f"{click.style(result.status, fg='red')} run {result.id}: {result.error or 'failed'} · {took:.2f}s")
    if result.status != "passed":
        sys.exit(1)


def _ci_branch_from_env() -> str | None:
    from conveyor.git import ci_branch

    return ci_branch(os.environ)


def _env_port() -> int | None:
    env_port = os.environ.get("CONVEYOR_PORT")
    if not env_port:
        return None
    try:
        port = int(env_port)
    except ValueError:
        raise ConveyorError(f"CONVEYOR_PORT must be a port number, not {env_port!r}") from None
    if not 1 <= port <= 65535:
        raise ConveyorError(f"CONVEYOR_PORT must be between 1 and 65535, not {port}")
    return port


# -- runs ---------------------------------------------------------------------------------
@main.group()
def runs() -> None:
    """Look at past runs of the line.

    \b
    Examples:
      conveyor runs list
      conveyor runs show            # the latest run
      conveyor runs show 20261127-1530
    """


@runs.command("list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="How many runs to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_list(limit: int, as_json: bool) -> None:
    """List runs, newest first.

    \b
    Example:
      conveyor runs list --limit 5
    """
    from rich.table import Table

    from conveyor.runs import RunStore

    project = Project.find()
    records = RunStore(project.runs_dir).recent(limit)
    if as_json:
        _dump_json([r.as_dict() for r in records])
        return
    if not records:
        console.print("No runs yet: `conveyor run` starts one.")
        return
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("run", "commit", "trigger", "status", "model", "took"):
        table.add_column(column, no_wrap=True)
    for r in records:
        model = f"{r.model['name']}@{r.model['version']}" if r.model else "-"
        took = f"{r.duration_s:.1f}s" if r.duration_s is not None else "-"
        mark, colour = _MARKS.get(r.status, ("?", "white"))
        commit = (r.commit or "-")[:8] + ("*" if r.dirty else "") + (f" {r.branch}" if r.branch else "")
        table.add_row(r.id, escape(commit), r.trigger, f"[{colour}]{mark}[/] {r.status}", model, took)
    console.print(table)


@runs.command("show")
@click.argument("run_id", default="")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_show(run_id: str, as_json: bool) -> None:
    """Show one run's steps; a failed step shows the tail of its log.

    RUN_ID may be a prefix; without it, the latest run is shown.

    \b
    Example:
      conveyor runs show 20261127
    """
    from conveyor.runs import RunStore

    project = Project.find()
    record = RunStore(project.runs_dir).latest(run_id)
    if as_json:
        _dump_json(record.as_dict())
        return
    console.print(f"[bold]run {record.id}[/] · {record.status} · commit {(record.commit or '-')[:10]}"
                  f"{' (dirty)' if record.dirty else ''} · branch {record.branch or '-'} · trigger {record.trigger}")
    for step in record.steps:
        click.echo(_step_line(step))
    gates = record.step("gates")
    if gates is not None and gates.data.get("results"):
        _render_gates(gates.data.get("results", []))
    _render_failure_log(project, record)
    if record.error:
        console.print(f"[red]{escape(record.error)}[/]")


# -- models -------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Registered model versions and their aliases.

    \b
    Examples:
      conveyor models list
      conveyor models show iris@production
    """


@models.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(name: str | None, as_json: bool) -> None:
    """List models, or the versions of one model.

    \b
    Examples:
      conveyor models list
      conveyor models list iris --json
    """
    from rich.table import Table

    from conveyor.registry import Registry

    project = Project.find()
    registry = Registry(_registry_url(project), create=False)
    try:
        names = [name] if name else registry.models()
        rows = []
        for model_name in names:
            by_version: dict[int, list[str]] = {}
            for alias, version in registry.aliases(model_name).items():
                by_version.setdefault(version, []).append(alias)
            for mv in registry.versions(model_name):
                rows.append((mv, sorted(by_version.get(mv.version, []))))
    finally:
        registry.close()
    if as_json:
        _dump_json([{**_version_dict(mv), "aliases": aliases} for mv, aliases in rows])
        return
    if not rows:
        console.print("No models registered yet: `conveyor run` registers one when its gates pass.")
        return
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("model", "aliases", "metrics", "commit", "created"):
        table.add_column(column, no_wrap=column != "metrics")
    for mv, aliases in rows:
        metrics = "\n".join(f"{k}={v:.4g}" for k, v in sorted(mv.metrics.items()))
        git = mv.lineage.get("git", {})
        commit = str(git.get("commit", "-"))[:10] + ("*" if git.get("dirty") else "")
        table.add_row(mv.ref, ", ".join(aliases), metrics, commit, mv.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


def _version_dict(mv: Any) -> dict[str, Any]:
    return {"name": mv.name, "version": mv.version, "digest": mv.digest, "flavor": mv.flavor,
            "signature": mv.signature, "metrics": mv.metrics, "params": mv.params, "lineage": mv.lineage,
            "gates": mv.gates, "run_id": mv.run_id, "created_at": mv.created_at.isoformat()}


@models.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_show(ref: str, as_json: bool) -> None:
    """Show one version with its lineage: NAME, NAME@VERSION or NAME@ALIAS.

    \b
    Examples:
      conveyor models show iris@production
      conveyor models show iris@2 --json
    """
    from conveyor.registry import Registry

    project = Project.find()
    registry = Registry(_registry_url(project), create=False)
    try:
        mv = registry.resolve(ref)
        aliases = sorted(a for a, v in registry.aliases(mv.name).items() if v == mv.version)
    finally:
        registry.close()
    if as_json:
        _dump_json({**_version_dict(mv), "aliases": aliases})
        return
    git = mv.lineage.get("git", {})
    console.print(f"[bold]{mv.ref}[/] {'(' + ', '.join(aliases) + ')' if aliases else ''}")
    console.print(f"  digest    {mv.digest}")
    console.print(f"  flavor    {mv.flavor}")
    console.print(f"  created   {mv.created_at.isoformat()} by run {mv.run_id}")
    console.print(f"  commit    {git.get('commit', '-')} on {git.get('branch', '-')}{' (dirty)' if git.get('dirty') else ''}")
    console.print("  metrics   " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(mv.metrics.items())))
    console.print("  params    " + ", ".join(f"{k}={v}" for k, v in sorted(mv.params.items())))
    inputs = mv.signature.get("inputs", [])
    if isinstance(inputs, list):
        cols = ", ".join(f"{c.get('name')}:{c.get('dtype')}" for c in inputs if isinstance(c, dict))
        console.print(f"  inputs    {escape(cols)}")
    for stage, info in mv.lineage.get("stages", {}).items():
        deps = ", ".join(f"{p}={d[:10]}" for p, d in info.get("deps", {}).items())
        console.print(f"  stage {stage}: {escape(deps)}")
    for gate in mv.gates:
        mark = "[green]pass[/]" if gate.get("passed") else "[red]FAIL[/]"
        console.print(f"  gate      {mark} {escape(str(gate.get('gate')))}")


def _actor_from_env() -> str | None:
    """Who is acting, as CI engines and users name themselves in the environment."""
    for variable, prefix in (("CONVEYOR_ACTOR", ""), ("GITHUB_ACTOR", "github:"), ("GITLAB_USER_LOGIN", "gitlab:"),
                             ("BUILD_USER_ID", "jenkins:")):
        value = os.environ.get(variable)
        if value:
            return prefix + value
    return None


def _actor(project: Project) -> str:
    from conveyor.git import user

    return _actor_from_env() or user(project.root)


class _ProjectRegistry:
    """The project, its config, registry and store, opened once for a registry command."""

    def __init__(self) -> None:
        from conveyor import config as config_module
        from conveyor.registry import Registry
        from conveyor.store import ArtifactStore

        self.project = Project.find()
        self.config = config_module.load(self.project.root, self.project.state_dir)
        self.registry = Registry(os.environ.get("CONVEYOR_REGISTRY_URL") or self.config.registry
                                 or self.project.default_registry_url, create=False)
        self.store = ArtifactStore(self.project.cache_dir)

    def __enter__(self) -> _ProjectRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.registry.close()

    def gates_for(self, name: str) -> Any:
        """The gates of conveyor.yaml, which judge this project's model and no other."""
        if name != self.config.model.name:
            raise ConveyorError(f"conveyor.yaml's gates judge the model '{self.config.model.name}', not '{name}'; "
                                f"run this from the project of '{name}'")
        return self.config.gates

    def model_path(self, version: Any) -> Path | None:
        """The version's verified artifact, when this machine's store has it."""
        from conveyor.exceptions import ObjectMissing
        from conveyor.model import materialize

        try:
            return materialize(self.store, self.project.models_dir, version.digest)
        except ObjectMissing:
            return None

    def follow(self, name: str, alias: str) -> str | None:
        """If the local server follows NAME@ALIAS (or, with `deploy.target` container or kubernetes, if the
        line deploys NAME@ALIAS there and it is live), make it serve where the alias now points."""
        from conveyor.deploy import local

        if self.config.deploy.target != "local":
            return self._follow_elsewhere(name, alias)
        live = local.current(self.project)
        ref = f"{name}@{alias}"
        if live is None or live.ref != ref:
            return None
        target = self.registry.resolve(ref)
        started = time.perf_counter()
        from urllib.parse import urlsplit

        port = urlsplit(live.url).port or self.config.deploy.port
        deployment = local.ensure_serving(self.project, ref, host=self.config.deploy.host, port=port,
                                          registry_url=self.registry.url, expected_digest=target.digest,
                                          workers=self.config.deploy.workers,
                                          follow_interval_s=self.config.deploy.follow_interval_s,
                                          predictions_need_token=self.config.deploy.predictions_need_token)
        return f"{deployment.url} now serves v{deployment.version} ({time.perf_counter() - started:.2f}s)"

    def _follow_elsewhere(self, name: str, alias: str) -> str | None:
        from conveyor.deploy import container, kubernetes, targets

        if name != self.config.model.name or alias != defaults.PRODUCTION_ALIAS:
            return None  # the line deploys production of the project's model, nothing else
        version = self.registry.resolve(f"{name}@{alias}")
        started = time.perf_counter()
        if self.config.deploy.target == "container":
            running = [c for c in container.containers(self.config.deploy.container.deployment(name),
                                                       engine=self.config.deploy.container.engine) if c.running]
            if not running:
                return None
            placed = targets.to_container(self.project, self.config, self.registry, version,
                                          port=self.config.deploy.port)
        else:
            if kubernetes.applied_image(self.config.deploy.kubernetes.deployment(name),
                                        state_dir=self.project.state_dir) is None:
                return None
            placed = targets.to_kubernetes(self.project, self.config, self.registry, version)
        return f"{placed.summary} ({time.perf_counter() - started:.2f}s)"


@models.command("promote")
@click.argument("name")
@click.argument("version", type=click.IntRange(1))
@click.option("--to", "alias", required=True, help="Alias to move, e.g. staging or production.")
@click.option("--reason", required=True, help="Why; recorded in the alias history.")
@click.option("--force", is_flag=True, help="Promote even if the gates fail (recorded as forced).")
def models_promote(name: str, version: int, alias: str, reason: str, force: bool) -> None:
    """Point an alias at a version, after the project's gates pass for it.

    \b
    Examples:
      conveyor models promote iris 3 --to production --reason "better on the new data"
      conveyor models promote iris 2 --to staging --reason "try it" --force
    """
    from conveyor.promotion import GatesRefused, promote

    with _ProjectRegistry() as ctx:
        try:
            done = promote(ctx.registry, name, version, alias, reason=reason, actor=_actor(ctx.project),
                           gates=ctx.gates_for(name),
                           model_path=ctx.model_path, force=force)
        except GatesRefused as refused:
            _render_gates([r.as_dict() for r in refused.results])
            raise
        if done.results:
            _render_gates([r.as_dict() for r in done.results])
        before = f"v{done.move.from_version}" if done.move.from_version else "(none)"
        forced = " (forced: gates failed)" if done.forced else ""
        console.print(f"{name}@{alias}: {before} → v{version}{forced}")
        followed = ctx.follow(name, alias)
        if followed:
            console.print(followed, soft_wrap=True)


@main.command()
@click.argument("name")
@click.option("--alias", default=defaults.PRODUCTION_ALIAS, show_default=True, help="Alias to move back.")
@click.option("--reason", default=None, help="Why; recorded in the alias history.")
def rollback(name: str, alias: str, reason: str | None) -> None:
    """Move an alias back to the version it held before, and serve it if it is live here.

    Repeated rollbacks walk further back through the promotions. The line
    does not promote a rolled-back version again on its own.

    \b
    Examples:
      conveyor rollback iris
      conveyor rollback iris --alias staging --reason "latency regression"
    """
    from conveyor.promotion import rollback as roll_back

    with _ProjectRegistry() as ctx:
        move = roll_back(ctx.registry, name, alias, actor=_actor(ctx.project), reason=reason)
        console.print(f"{name}@{alias}: v{move.from_version} → v{move.to_version} (rollback)")
        followed = ctx.follow(name, alias)
        if followed:
            console.print(followed, soft_wrap=True)


@main.command("gates")
@click.argument("ref")
@click.option("--against", default=None, metavar="ALIAS", help="Compare with this alias instead of the configured one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gates_command(ref: str, against: str | None, as_json: bool) -> None:
    """Explain the gates' verdict on a registered version (exit 1 when any fails).

    \b
    Examples:
      conveyor gates iris@3
      conveyor gates iris@candidate --against staging --json
    """
    from conveyor.gates import passed
    from conveyor.promotion import check

    with _ProjectRegistry() as ctx:
        version = ctx.registry.resolve(ref)
        results = check(ctx.registry, version, ctx.gates_for(version.name), ctx.model_path, against=against,
                        against_must_exist=True)
    if as_json:
        _dump_json([r.as_dict() for r in results])
    elif results:
        _render_gates([r.as_dict() for r in results])
    else:
        console.print("No gates configured in conveyor.yaml.")
    if not passed(results):
        sys.exit(1)


@models.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_history(name: str, alias: str | None, as_json: bool) -> None:
    """Every alias move of a model, newest first: who, when, from, to, why.

    \b
    Examples:
      conveyor models history iris
      conveyor models history iris --alias production --json
    """
    from conveyor.exceptions import ModelNotFound
    from conveyor.registry import validate_alias

    with _ProjectRegistry() as ctx:
        if not ctx.registry.versions(name):
            raise ModelNotFound(name, "`conveyor models list` shows the registered models")
        if alias is not None:
            validate_alias(alias)
        moves = ctx.registry.alias_history(name, alias)
        if alias is not None and not moves:
            listed = ", ".join(sorted(ctx.registry.aliases(name))) or "none yet"
            raise ConveyorError(f"{name} has no alias '{alias}' (its aliases: {listed})")
    if as_json:
        _dump_json([{**m.__dict__, "at": m.at.isoformat()} for m in moves])
        return
    if not moves:
        console.print(f"No alias of {escape(name)} has moved yet.")
        return
    for m in moves:
        move = f"{'v' + str(m.from_version) if m.from_version else '(none)'} → " + \
               (f"v{m.to_version}" if m.to_version else "(removed)")
        click.echo(f"{m.at:%Y-%m-%d %H:%M} UTC  {m.alias}: {move}  [{m.kind}] by {m.actor}"
                   f"{' in run ' + m.run_id if m.run_id else ''}\n    {m.reason}")


@models.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_diff(a: str, b: str, as_json: bool) -> None:
    """What changed between two versions: metrics, params, data, commits, size.

    \b
    Examples:
      conveyor models diff iris@1 iris@2
      conveyor models diff iris@production iris@latest --json
    """
    from conveyor.lineage import diff

    with _ProjectRegistry() as ctx:
        changes = diff(ctx.registry.resolve(a), ctx.registry.resolve(b), root=ctx.project.root, store=ctx.store)
    if as_json:
        _dump_json(changes.as_dict())
        return
    console.print(f"[bold]{changes.a} → {changes.b}[/]")
    console.print("metrics:")
    for c in changes.metrics:
        delta = f" ({c.delta:+.6g})" if c.delta is not None else ""
        console.print(f"  {escape(c.key)}: {_num(c.a)} → {_num(c.b)}{delta}")
    console.print("params changed:" + ("" if changes.params else " none"))
    for c in changes.params:
        console.print(f"  {escape(c.key)}: {escape(str(c.a))} → {escape(str(c.b))}")
    console.print("data and code changed:" + ("" if changes.data else " none"))
    for c in changes.data:
        console.print(f"  {escape(c.key)}: {str(c.a)[:12] if c.a else '-'} → {str(c.b)[:12] if c.b else '-'}")
    if changes.commits is None:
        console.print("commits: unknown here (a commit is not in this repository)")
    else:
        console.print(f"commits from {changes.a} to {changes.b} ({len(changes.commits)}):")
        for line in changes.commits:
            console.print(f"  {escape(line)}")
        if changes.commits_back:
            console.print(f"commits in {changes.a} that {changes.b} does not have ({len(changes.commits_back)}):")
            for line in changes.commits_back:
                console.print(f"  {escape(line)}")
    size_a, size_b = changes.size_bytes
    console.print(f"artifact size: {_size(size_a)} → {_size(size_b)}")


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "-"


def _size(value: int | None) -> str:
    return "not in the local store" if value is None else f"{value / 1e6:.3f} MB"


@models.command("lineage")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_lineage(ref: str, as_json: bool) -> None:
    """Where a version came from and where it runs: commit → data → model → image → deployments.

    \b
    Examples:
      conveyor models lineage iris@production
      conveyor models lineage iris@3 --json
    """
    from conveyor.deploy import local
    from conveyor.lineage import lineage

    with _ProjectRegistry() as ctx:
        version = ctx.registry.resolve(ref)
        aliases = sorted(a for a, v in ctx.registry.aliases(version.name).items() if v == version.version)
    live = local.current(ctx.project)
    deployments = [f"local {live.url} ({live.ref})"] if live and live.digest == version.digest else []
    found = lineage(version, aliases, deployments)
    if as_json:
        _dump_json(found.as_dict())
        return
    console.print(f"[bold]{found.ref}[/]" + (f" ({', '.join(found.aliases)})" if found.aliases else ""))
    console.print(f"  commit      {found.commit or '-'} on {found.branch or '-'}{' (dirty)' if found.dirty else ''}"
                  f" · run {found.run_id or '-'}")
    for path, digest in sorted(found.data.items()):
        console.print(f"  data/code   {escape(path)} {digest[:16]}")
    console.print(f"  model       {found.digest}")
    if found.serving:
        console.print(f"  serving     {found.serving.get('runtime')} {found.serving.get('digest')} "
                      f"(checked {found.serving.get('rows_checked')} rows)")
    console.print(f"  image       {found.image or 'not packaged'}")
    for where in found.deployments or ["not deployed here"]:
        console.print(f"  deployed    {escape(where)}")


# -- serve / deployments --------------------------------------------------------------------
@main.command()
@click.argument("ref")
@click.option("--host", default=defaults.HOST, show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=defaults.PORT, show_default=True, help="Port to bind.")
@click.option("--workers", type=click.IntRange(1, 64), default=defaults.WORKERS, show_default=True,
              help="Processes sharing the socket.")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Coalesce concurrent requests into one predict call.")
@click.option("--max-batch-rows", type=click.IntRange(1), default=defaults.MAX_BATCH_ROWS, show_default=True,
              help="Most rows in one batched predict.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=defaults.MAX_BATCH_WAIT_MS, show_default=True,
              help="Longest wait for more requests to batch.")
@click.option("--access-log", is_flag=True, help="One JSON line per request on the conveyor.access logger.")
@click.option("--follow-interval", "follow_interval_s", type=click.FloatRange(0.05), default=defaults.FOLLOW_INTERVAL_S,
              show_default=True, help="Seconds between looks at where REF points (an alias that moved is swapped in).")
def serve(ref: str, host: str, port: int, workers: int, batching: bool, max_batch_rows: int, max_wait_ms: float,
          access_log: bool, follow_interval_s: float) -> None:
    """Serve a model version over HTTP in the foreground (Ctrl-C stops it).

    REF is NAME, NAME@VERSION or NAME@ALIAS. The management endpoint
    (POST /-/reload) needs the token in CONVEYOR_SERVER_TOKEN; without one it is disabled.

    \b
    Examples:
      conveyor serve iris@production --port 8000
      curl -s localhost:8000/predict -H 'content-type: application/json' \\
           -d '{"rows": [[5.1, 3.5, 1.4, 0.2]]}'
    """
    from conveyor.serving.server import serve as serve_model

    project = Project.find()
    from conveyor.serving.server import ServingOptions

    options = ServingOptions(workers=workers, batching=batching, max_batch_rows=max_batch_rows,
                             max_wait_ms=max_wait_ms, access_log=access_log, follow_interval_s=follow_interval_s,
                             predict_token=os.environ.get("CONVEYOR_PREDICT_TOKEN") or None)
    serve_model(project, ref, host=host, port=port, registry_url=_registry_url(project),
                token=os.environ.get("CONVEYOR_SERVER_TOKEN") or None, options=options)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deployments(ctx: click.Context, as_json: bool) -> None:
    """What the local deployment serves; `deployments stop` stops it.

    \b
    Examples:
      conveyor deployments
      conveyor deployments stop
    """
    if ctx.invoked_subcommand is not None:
        return
    from conveyor.deploy import local

    from conveyor.deploy.rollout import describe_split, split_report

    live = local.current(Project.find())
    traffic: dict[str, Any] | None = None
    if live is not None:
        try:
            traffic = split_report(Project.find())
        except ConveyorError:
            traffic = None
    if as_json:
        _dump_json(None if live is None else {"ref": live.ref, "name": live.name, "version": live.version,
                                               "url": live.url, "pid": live.pid, "started_at": live.started_at,
                                               "traffic": traffic})
        return
    if live is None:
        console.print("Nothing is deployed locally.")
        elsewhere = _deployed_elsewhere(Project.find())
        if elsewhere:
            console.print(elsewhere, soft_wrap=True)
        return
    split = "100% of traffic" if not traffic else (
        f"{100 - traffic['share']:g}% of traffic, {traffic['mode']} {traffic['candidate']} {traffic['share']:g}%"
        if traffic["mode"] == "canary" else f"100% of traffic, shadow {traffic['candidate']} gets {traffic['share']:g}%")
    if traffic:
        split += f" ({describe_split(traffic)})"
    console.print(f"{live.name}@{live.version} ({live.ref}) at {live.url} · pid {live.pid} · {split}", soft_wrap=True)


def _deployed_elsewhere(project: Project) -> str | None:
    """What the line's container or Kubernetes target serves (`deploy.target`), in one line."""
    from conveyor import config as config_module
    from conveyor.deploy import container, kubernetes

    settings = config_module.load(project.root, project.state_dir)
    if settings.deploy.target == "container":
        name = settings.deploy.container.deployment(settings.model.name)
        running = [c for c in container.containers(name, engine=settings.deploy.container.engine) if c.running]
        if not running:
            return f"deploy.target container: no container of '{name}' is running."
        return (f"deploy.target container: {running[0].name} serves "
                f"{container.serving_ref(project.state_dir, name, running[0])} at {running[0].url} "
                f"(`conveyor containers list --name {name}`)")
    if settings.deploy.target == "kubernetes":
        name = settings.deploy.kubernetes.deployment(settings.model.name)
        image = kubernetes.applied_image(name, state_dir=project.state_dir)
        return f"deploy.target kubernetes: deployment/{name} was last applied with {image or 'nothing yet'}."
    return None


@deployments.command("stop")
def deployments_stop() -> None:
    """Stop the local model server.

    \b
    Example:
      conveyor deployments stop
    """
    from conveyor.deploy import local

    stopped = local.stop(Project.find())
    console.print("Nothing was running." if stopped is None else f"Stopped {stopped.name}@{stopped.version} (pid {stopped.pid}).")


# -- commands that live in their own modules, registered once the groups above exist ------------
from conveyor.ci.cli import ci  # noqa: E402
from conveyor.dashboard.cli import ui  # noqa: E402
from conveyor.data_cli import COMMANDS as _DATA_COMMANDS  # noqa: E402
from conveyor.deploy import cli as _deploy_cli  # noqa: E402
from conveyor.deploy.container_cli import containers  # noqa: E402
from conveyor.deploy.kubernetes_cli import kubernetes  # noqa: E402
from conveyor.packaging.cli import package  # noqa: E402
from conveyor.report.cli import report  # noqa: E402
from conveyor.triggers.cli import hooks, watch  # noqa: E402

for _command in (_deploy_cli.deploy, package, containers, kubernetes, ci, hooks, watch, report, ui,
                 *_DATA_COMMANDS):
    main.add_command(_command)
deployments.add_command(_deploy_cli.restart)
deployments.add_command(_deploy_cli.traffic)
