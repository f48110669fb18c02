"""Commands for data and artifacts: `data add|status|checkout`, `push`, `pull`, `verify`, `gc`, `import dvc`.

Thin, like `cli.py`: parse, resolve settings at the edge (flag >
`CONVEYOR_REMOTE` > `remote:` in conveyor.yaml), call the library, render.
Only click is imported up front, so `conveyor data status` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from conveyor import defaults
from conveyor.exceptions import ConveyorError
from conveyor.project import Project

if TYPE_CHECKING:
    from conveyor.references import Roots
    from conveyor.remote import Remote, ResultsTransfer, Transfer
    from conveyor.store import ArtifactStore


def _store(project: Project) -> ArtifactStore:
    from conveyor.store import ArtifactStore

    return ArtifactStore(project.cache_dir)


def _remote(project: Project, flag: str | None) -> Remote:
    from conveyor.remote import Remote

    url = flag or os.environ.get("CONVEYOR_REMOTE")
    if not url:
        from conveyor import config as config_module

        url = config_module.load(project.root, project.state_dir).remote
    if not url:
        raise ConveyorError("no remote configured; add `remote: s3://bucket/prefix` (or a directory) to "
                            "conveyor.yaml, set CONVEYOR_REMOTE, or pass --remote URL")
    return Remote(url)


def _registry_url(project: Project) -> str:
    from conveyor.cli import _registry_url as resolve

    return resolve(project)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _progress(label: str) -> Any:
    """A progress bar on stderr (stdout stays clean for --json), gone when done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                    console=Console(stderr=True))


def _select(project: Project, run_id: str | None, model: str | None, everything: bool) -> Roots | None:
    """Roots for a transfer, or None for everything."""
    from conveyor import references

    chosen = sum(x is not None for x in (run_id, model)) + int(everything)
    if chosen > 1:
        raise ConveyorError("give at most one of --run, --model and --all")
    if everything:
        return None
    if run_id is not None:
        return references.run_roots(project, run_id=run_id)
    if model is not None:
        return references.version_roots(_registry_url(project), ref=model)
    return references.merge(references.data_roots(project.root), references.run_roots(project),
                            references.version_roots(_registry_url(project)))


def _report(kind: str, result: Transfer, stages: ResultsTransfer | None, as_json: bool) -> None:
    """The one-line summary (or --json); missing or corrupt objects end it with an error."""
    if as_json:
        click.echo(json.dumps({"moved": result.moved, "present": result.present, "bytes": result.bytes,
                               "missing": result.missing, "corrupt": result.corrupt,
                               "stage_results": None if stages is None else {
                                   "moved": stages.moved, "present": stages.present,
                                   "invalid": len(stages.invalid), "held_back": len(stages.held_back)}},
                              indent=2))
    else:
        line = f"{kind} {result.moved} object(s), {_human(result.bytes)}; {result.present} already there."
        if stages is not None and (stages.moved or stages.present or stages.invalid or stages.held_back):
            line += f" Stage results: {stages.moved} {kind.lower()}, {stages.present} already there"
            if stages.held_back:
                line += f", {len(stages.held_back)} held back (their outputs are not on the remote)"
            if stages.invalid:
                line += (f", {len(stages.invalid)} invalid and skipped "
                         f"({', '.join(stages.invalid[:3])}{'…' if len(stages.invalid) > 3 else ''})")
            line += "."
        click.echo(line)
    problems = []
    if result.missing:
        problems.append(f"{len(result.missing)} object(s) missing ({', '.join(d[:12] for d in result.missing[:5])}…)")
    if result.corrupt:
        problems.append(f"{len(result.corrupt)} object(s) arrived corrupt and were dropped "
                        f"({', '.join(d[:12] for d in result.corrupt[:5])}…); run `conveyor verify --remote`")
    if problems:
        raise ConveyorError("; ".join(problems))


_SELECT = [
    click.option("--run", "run_id", metavar="RUN", help="Only the objects of this run (an id or its prefix)."),
    click.option("--model", metavar="NAME@VERSION", help="Only this model version's artifact."),
    click.option("--all", "everything", is_flag=True, help="Every object (the default: what versions, runs "
                 "and tracked data need); stage results move with both, not with --run or --model."),
    click.option("--jobs", "-j", type=click.IntRange(1, 256), default=defaults.REMOTE_JOBS, show_default=True,
                 help="Batches in flight at once."),
    click.option("--remote", "remote_url", metavar="URL", help="Remote to use (default: CONVEYOR_REMOTE, then "
                 "`remote:` in conveyor.yaml)."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable summary."),
]


def _with_selection(func: Any) -> Any:
    for option in reversed(_SELECT):
        func = option(func)
    return func


@click.command()
@_with_selection
def push(run_id: str | None, model: str | None, everything: bool, jobs: int, remote_url: str | None,
         as_json: bool) -> None:
    """Upload objects the remote lacks; an interrupted push resumes where it stopped.

    Stage results (the stage cache's entries) follow, each only once every
    output it names is on the remote, so another clone can skip those stages.

    \b
    Examples:
      conveyor push                      # what versions, runs and tracked data need
      conveyor push --model iris@3
      CONVEYOR_REMOTE=s3://bucket/iris conveyor push --all --jobs 16
    """
    from conveyor.references import closure

    project = Project.find()
    store = _store(project)
    remote = _remote(project, remote_url)
    roots = _select(project, run_id, model, everything)
    digests = list(store.digests()) if roots is None else list(closure(store, roots).needed)
    with _progress("push") as bar:
        task = bar.add_task("push", total=len(digests))
        result = remote.push(store, digests, jobs=jobs, progress=lambda n: bar.advance(task, n))
    everything_or_default = run_id is None and model is None  # --run/--model leave stage results alone
    stages = remote.push_results(store, project.stage_cache_dir, jobs=jobs) if everything_or_default else None
    _report("Pushed", result, stages, as_json)


@click.command()
@_with_selection
def pull(run_id: str | None, model: str | None, everything: bool, jobs: int, remote_url: str | None,
         as_json: bool) -> None:
    """Download objects the local store lacks; every one is re-hashed before it is kept.

    Stage results come too (each checked before it is written; a malformed
    one is skipped and counted), with the outputs of each stage's newest one,
    so `conveyor run` on a fresh clone restores its unchanged stages.

    \b
    Examples:
      conveyor pull && conveyor data checkout   # a fresh clone gets its data
      conveyor pull && conveyor run             # ... and its unchanged stages from cache
      conveyor pull --model iris@3
      conveyor pull --all
    """
    project = Project.find()
    store = _store(project)
    remote = _remote(project, remote_url)
    roots = _select(project, run_id, model, everything)
    everything_or_default = run_id is None and model is None  # --run/--model leave stage results alone
    stages = remote.pull_results(project.stage_cache_dir) if everything_or_default else None
    wanted = None if roots is None else sorted(set(roots) | (stages.newest_outs if stages else set()))
    with _progress("pull") as bar:
        task = bar.add_task("pull", total=None)
        result = remote.pull(store, wanted, jobs=jobs, progress=lambda n: bar.advance(task, n))
    if roots is not None and stages is not None and result.missing:
        from conveyor.references import closure

        needed = closure(store, roots).needed  # a stage result without its outputs is a miss, not an error
        result.missing = [d for d in result.missing if d in needed]
    _report("Pulled", result, stages, as_json)


@click.command()
@click.option("--remote", "check_remote", is_flag=True, help="Also re-hash the remote's objects.")
@click.option("--remote-url", metavar="URL", help="Remote to check (default: CONVEYOR_REMOTE, then conveyor.yaml).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def verify(check_remote: bool, remote_url: str | None, as_json: bool) -> None:
    """Re-hash every stored object; remove corrupt ones and list what is corrupt or missing.

    Exits 1 when anything is corrupt or missing, naming the versions, runs and
    tracked data that need it.

    \b
    Examples:
      conveyor verify
      conveyor verify --remote
    """
    from conveyor import references

    project = Project.find()
    store = _store(project)
    roots = references.merge(references.data_roots(project.root), references.run_roots(project),
                             references.version_roots(_registry_url(project)))
    result = references.verify(store, roots)
    remote_corrupt: list[str] = []
    remote_missing: list[str] = []
    if check_remote:
        remote = _remote(project, remote_url)
        remote_corrupt, remote_missing = remote.check(references.closure(store, roots).needed)
    if as_json:
        click.echo(json.dumps({"checked": result.checked,
                               "corrupt": {d: sorted(w) for d, w in result.corrupt.items()},
                               "missing": {d: sorted(w) for d, w in result.missing.items()},
                               "remote_corrupt": remote_corrupt, "remote_missing": remote_missing}, indent=2))
    else:
        click.echo(f"Checked {result.checked} object(s).")
        for label, found in (("corrupt (removed)", result.corrupt), ("missing", result.missing)):
            for digest, who in sorted(found.items()):
                click.echo(f"  {label}: {digest[:16]}…  needed by {', '.join(sorted(who)) or 'nothing'}")
        for label, digests in (("corrupt on the remote", remote_corrupt), ("missing on the remote", remote_missing)):
            for digest in digests:
                click.echo(f"  {label}: {digest[:16]}…")
    if not result.ok or remote_corrupt or remote_missing:
        raise ConveyorError(f"{len(result.corrupt) + len(remote_corrupt)} corrupt and "
                            f"{len(result.missing) + len(remote_missing)} missing object(s); "
                            "`conveyor pull` (or re-running the line) restores them")
    if not as_json:
        click.echo("All objects are intact.")


@click.command()
@click.option("--keep-last", type=click.IntRange(0), default=None, metavar="N",
              help="Keep the objects of the last N runs (default: 10).")
@click.option("--dry-run", is_flag=True, help="Only list what would go (the default without --yes).")
@click.option("--yes", "-y", is_flag=True, help="Delete for real.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def gc(keep_last: int | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete objects no registered version, alias history, tracked data or recent run needs.

    \b
    Examples:
      conveyor gc                     # list what would go, and the bytes
      conveyor gc --keep-last 3 --yes
    """
    from conveyor import references

    project = Project.find()
    store = _store(project)
    keep = keep_last if keep_last is not None else defaults.GC_KEEP_LAST_RUNS
    roots = references.merge(references.data_roots(project.root), references.run_roots(project, last=keep),
                             references.version_roots(_registry_url(project)))
    found = references.garbage(store, roots)
    really = yes and not dry_run
    removed = references.collect(store, found.doomed) if really else 0
    if as_json:
        click.echo(json.dumps({"objects": found.doomed, "bytes": found.bytes, "kept": found.kept,
                               "deleted": really}, indent=2))
        return
    for digest in found.doomed[:20]:
        click.echo(f"  {digest}")
    if len(found.doomed) > 20:
        click.echo(f"  … and {len(found.doomed) - 20} more")
    if really:
        click.echo(f"Deleted {removed} object(s), {_human(found.bytes)}; kept {found.kept}.")
    else:
        click.echo(f"Would delete {len(found.doomed)} object(s), {_human(found.bytes)}; kept {found.kept}. "
                   "Pass --yes to delete.")


@click.group("data")
def data_group() -> None:
    """Track large files and directories: content in the store, a small pointer in git.

    \b
    Examples:
      conveyor data add data/raw && git add data/raw.conveyor data/.gitignore
      conveyor data status
      conveyor data checkout
    """


@data_group.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--copy", is_flag=True, help="Copy into the store instead of hard-linking (files stay writable).")
def data_add(paths: tuple[Path, ...], copy: bool) -> None:
    """Store a file or directory and write PATH.conveyor (commit it) plus a .gitignore entry.

    \b
    Example:
      conveyor data add data/images
    """
    from conveyor.data import add

    project = Project.find()
    store = _store(project)
    for path in paths:
        pointer = add(project.root, store, Path(os.path.abspath(path)), copy=copy)
        click.echo(f"Tracked {pointer.path}: {pointer.files} file(s), {_human(pointer.size)} → "
                   f"{pointer.path}.conveyor")


@data_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def data_status(as_json: bool) -> None:
    """Show which tracked paths changed since they were added (DVC's .dvc files included).

    \b
    Example:
      conveyor data status
    """
    from conveyor.data import status

    states = status(Project.find().root)
    if as_json:
        click.echo(json.dumps([{"path": s.path, "state": s.state, "kind": s.kind} for s in states], indent=2))
        return
    if not states:
        click.echo("Nothing is tracked; `conveyor data add PATH` tracks a file or directory.")
    for state in states:
        suffix = " (dvc)" if state.kind == "dvc" else ""
        click.echo(f"  {state.state:<10} {state.path}{suffix}")


@data_group.command("checkout")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def data_checkout(paths: tuple[Path, ...]) -> None:
    """Restore tracked paths (all, or those named) to the version their pointers record.

    \b
    Example:
      conveyor data checkout data/raw
    """
    from conveyor.data import checkout

    project = Project.find()
    restored = checkout(project.root, _store(project), [os.path.abspath(p) for p in paths] or None)
    click.echo(f"Restored {', '.join(restored)}." if restored else "Everything tracked is up to date.")


@click.group("import")
def import_group() -> None:
    """Bring another tool's pipeline under Conveyor.

    \b
    Example:
      conveyor import dvc
    """


@import_group.command("dvc")
@click.option("--model", "model_path", metavar="PATH", help="The out that is the model (guessed when absent).")
@click.option("--flavor", type=click.Choice(["sklearn", "onnx", "pyfunc"]), default="sklearn", show_default=True,
              help="How the model is saved.")
def import_dvc_command(model_path: str | None, flavor: str) -> None:
    """Turn dvc.yaml's stages (deps, params, outs, metrics, plots, wdir) into conveyor.yaml stages.

    \b
    Example:
      cd my-dvc-project && conveyor import dvc --model model.pkl && conveyor run
    """
    from conveyor.dvc import import_dvc

    try:
        root = Project.find().root
    except ConveyorError:
        root = Path.cwd()
    target = import_dvc(root, model_path, flavor)
    click.echo(f"Wrote {target.name} with the stages of dvc.yaml; check `model:` and run `conveyor run`.")


COMMANDS = [push, pull, verify, gc, data_group, import_group]
"""Registered on the main group by `cli.py`."""
