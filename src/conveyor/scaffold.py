"""`conveyor init`: start a project from a bundled example, or describe an existing one.

An example is copied from `conveyor/templates/<name>/` as it is, given its
data, and committed, so the first `conveyor run` has a clean commit to record.
For an existing project, a `conveyor.yaml` is guessed from the files present
and left uncommitted for the user to check.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from conveyor import defaults
from conveyor.config import parse
from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

EXAMPLES = ("iris",)
"""Names accepted by `init_project(example=...)`, one directory each under templates/."""

FALLBACK_GIT_IDENTITY = {"user.name": "Conveyor", "user.email": "conveyor@localhost"}
"""Identity for the first commit when git has none configured (that commit only)."""

_IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
_TRAIN_SCRIPTS = ("train.py", "src/train.py", "scripts/train.py")


@dataclass
class InitResult:
    """What `init_project` did: the files it wrote (relative to root) and what to do next."""

    root: Path
    files: list[Path] = field(default_factory=list)
    commit: str | None = None
    notes: list[str] = field(default_factory=list)


def init_project(dest: Path, example: str | None = None) -> InitResult:
    """Create the example project `example` in `dest`, or a conveyor.yaml for the project there.

    With an example, `dest` must be missing or empty and the result is a git
    repository with one commit. Without, `dest` must exist and have no
    conveyor.yaml yet; nothing is committed.
    """
    if example is None:
        return _describe_existing(dest)
    if example not in EXAMPLES:
        raise ConveyorError(f"unknown example '{example}'; choose one of: {', '.join(EXAMPLES)}")
    return _create_example(dest, example)


# -- examples ---------------------------------------------------------------


def _create_example(dest: Path, example: str) -> InitResult:
    if dest.exists() and not dest.is_dir():
        raise ConveyorError(f"{dest} is a file; give a new or empty directory for the example")
    if dest.is_dir() and any(dest.iterdir()):
        raise ConveyorError(
            f"{dest} is not empty; give the example a new or empty directory, "
            "or run `conveyor init` without --example to describe the project already there"
        )
    git = _require_git()
    data = _iris_csv()  # before writing anything: fails cleanly without scikit-learn

    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    result = InitResult(root=root)
    template = resources.files("conveyor") / "templates" / example
    _copy_tree(template, root, Path(), result.files)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "iris.csv").write_text(data, encoding="utf-8")
    result.files.append(Path("data/iris.csv"))
    result.files.sort()

    result.commit = _first_commit(git, root, f"Start {example} project (conveyor init --example {example})",
                                  result.notes)
    result.notes.append(
        f"next: cd {dest} && conveyor run  (prepare, train, test, gate, register and serve the model)"
    )
    return result


def _copy_tree(source: Traversable, dest: Path, relative: Path, written: list[Path]) -> None:
    """Copy a template directory byte for byte (package data keeps its `.gitignore`)."""
    for entry in sorted(source.iterdir(), key=lambda item: item.name):
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue  # left behind when the templates are used from a source checkout
        name = entry.name
        if entry.is_dir():
            (dest / name).mkdir(exist_ok=True)
            _copy_tree(entry, dest / name, relative / name, written)
        else:
            (dest / name).write_bytes(entry.read_bytes())
            written.append(relative / name)


def _iris_csv() -> str:
    """scikit-learn's bundled iris data set as csv (it ships inside the package: no network)."""
    try:
        from sklearn.datasets import load_iris
    except ImportError:
        raise ConveyorError(
            "the iris example needs scikit-learn; install it with `pip install 'conveyor-ml[sklearn]'`"
        ) from None
    iris = load_iris()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_IRIS_COLUMNS)
    for features, label in zip(iris.data, iris.target):
        writer.writerow([*(repr(float(value)) for value in features), int(label)])
    return buffer.getvalue()


# -- git --------------------------------------------------------------------


def _require_git() -> str:
    git = shutil.which("git")
    if git is None:
        raise ConveyorError(
            "git is not installed; Conveyor projects are git repositories "
            "(install git, e.g. `apt-get install git`, and run this again)"
        )
    return git


def _run_git(git: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([git, *args], cwd=root, capture_output=True, text=True, check=False)


def _checked_git(git: str, root: Path, *args: str) -> str:
    done = _run_git(git, root, *args)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise ConveyorError(f"`git {' '.join(args)}` failed in {root}: {detail}")
    return done.stdout.strip()


def _first_commit(git: str, root: Path, message: str, notes: list[str]) -> str:
    """`git init` (branch main) unless root is already a repository's top, add all, commit."""
    top = _run_git(git, root, "rev-parse", "--show-toplevel")
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
        if top.returncode == 0:
            notes.append(f"{root} was inside the git repository {top.stdout.strip()}; "
                         "it now has a repository of its own")
        _checked_git(git, root, "init", "-q")
        # `git init -b` needs git 2.28; pointing HEAD by hand works with any version.
        _checked_git(git, root, "symbolic-ref", "HEAD", f"refs/heads/{defaults.BRANCH}")
    _checked_git(git, root, "add", "-A")

    overrides: list[str] = []
    for key, fallback in FALLBACK_GIT_IDENTITY.items():
        if not _run_git(git, root, "config", key).stdout.strip():
            overrides += ["-c", f"{key}={fallback}"]
            notes.append(
                f"git has no {key} configured, so the first commit was made with {key}={fallback}; "
                f"set yours with `git config --global {key} ...`"
            )
    _checked_git(git, root, *overrides, "commit", "-q", "-m", message)
    return _checked_git(git, root, "rev-parse", "HEAD")


# -- existing projects ------------------------------------------------------


def _describe_existing(dest: Path) -> InitResult:
    if not dest.is_dir():
        raise ConveyorError(f"{dest} is not a directory; create the project first, or use --example")
    root = dest.resolve()
    config_path = root / defaults.CONFIG_FILE
    if config_path.exists():
        raise ConveyorError(
            f"{config_path} already exists; edit it, or remove it to have `conveyor init` guess a new one"
        )
    result = InitResult(root=root)
    text = _guess_config(root, result.notes)
    parse(text, defaults.CONFIG_FILE)  # what we write must at least be a valid schema
    config_path.write_text(text, encoding="utf-8")
    result.files.append(Path(defaults.CONFIG_FILE))
    _ignore_products(root, result)
    result.notes.append(
        f"check {defaults.CONFIG_FILE}: the stages, outs, metrics and gates are guesses; "
        "then commit it and run `conveyor run`"
    )
    return result


def _project_name(root: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).lstrip("-_.")
    return name or "project"


def _flow(value: Any) -> str:
    """A YAML scalar or list on one line, quoted only where YAML needs it."""
    text = str(yaml.safe_dump(value, default_flow_style=True, width=10_000))
    return text.removesuffix("\n...\n").rstrip("\n")


def _train_params(root: Path, notes: list[str]) -> list[str]:
    path = root / defaults.PARAMS_FILE
    if not path.is_file():
        return []
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        notes.append(f"{defaults.PARAMS_FILE} is not valid YAML, so no params were listed")
        return []
    section = params.get("train") if isinstance(params, dict) else None
    if not isinstance(section, dict):
        return []
    return [f"train.{key}" for key in section]


def _guess_config(root: Path, notes: list[str]) -> str:
    name = _project_name(root)
    script = next((s for s in _TRAIN_SCRIPTS if (root / s).is_file()), None)
    if script is None:
        script = "train.py"
        deps: list[str] = []
        notes.append(
            "no training script found (looked for " + ", ".join(_TRAIN_SCRIPTS) + "); "
            "set stages.train.cmd and its deps"
        )
    else:
        deps = [script]
    if (root / "data").is_dir():
        deps.append("data/")
    params = _train_params(root, notes)

    lines = [
        "# conveyor.yaml written by `conveyor init` from the files it found: check every",
        "# guess below. Paths are relative to this file.",
        "",
        f"project: {_flow(name)}",
        "",
        "# A stage re-runs only when its cmd, the content of its deps or the values",
        f"# of its params (keys of {defaults.PARAMS_FILE}) change.",
        "stages:",
        "  train:",
        f"    cmd: {_flow('python ' + script)}",
        f"    deps: {_flow(deps)}",
    ]
    if params:
        lines.append(f"    params: {_flow(params)}")
    lines += [
        "    outs: [model/]            # save the model here with conveyor.save_model(model, \"model\", ...)",
        "    metrics: [metrics.json]   # write metrics with conveyor.log_metrics({...}, \"metrics.json\")",
        "",
    ]
    if (root / "tests").is_dir():
        lines += [
            "# The project's tests, run against the candidate model (fixture `candidate_model`).",
            "tests: pytest -q tests",
            "",
        ]
    else:
        notes.append("no tests/ directory: add model tests and a `tests:` command to conveyor.yaml")
    lines += [
        "model:",
        f"  name: {_flow(name)}",
        "  path: model/",
        "  flavor: sklearn",
        "",
        "# Checks a candidate must pass before promotion; uncomment and name a key of metrics.json.",
        "# gates:",
        "#   - metric: accuracy",
        "#     min: 0.9",
        "#   - metric: accuracy",
        "#     no_worse_than: production",
        "#     tolerance: 0.02",
        "",
        "deploy:",
        "  target: local",
        f"  port: {defaults.PORT}",
        "",
        "# Only commits on this branch are promoted to production and deployed.",
        "triggers:",
        f"  branch: {_flow(_current_branch(root) or defaults.BRANCH)}",
    ]
    return "\n".join(lines) + "\n"


def _current_branch(root: Path) -> str | None:
    """The checked-out branch, so the guessed release branch is the one in use."""
    try:
        found = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=root,
                               capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return found.stdout.strip() or None


_IGNORED = (f"/{defaults.STATE_DIR}/", "/model/", "/metrics.json")
"""What the guessed config produces: the line's state and the train stage's outs."""


def _ignore_products(root: Path, result: InitResult) -> None:
    """Add the line's state and products to .gitignore, so they are never committed
    (`.conveyor/server.json` holds the server's management token)."""
    path = root / ".gitignore"
    existing = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    missing = [entry for entry in _IGNORED if entry not in existing and entry.strip("/") not in existing]
    if not missing:
        return
    text = "\n".join([*existing, "# written by `conveyor init`", *missing]) + "\n"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    result.files.append(Path(".gitignore"))
