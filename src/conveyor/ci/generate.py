"""Write a CI engine's file for a project, from its `conveyor.yaml`.

Templates are Jinja2 with `[[ ]]`/`[% %]` delimiters, because GitHub's own
`${{ }}` expressions must pass through untouched. Values from the config reach
a template only through the escaping filters below (`yaml`, `groovy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from conveyor import config as config_module
from conveyor import defaults
from conveyor.exceptions import ConveyorError

Engine = Literal["github", "gitlab", "jenkins"]
ENGINES: tuple[Engine, ...] = ("github", "gitlab", "jenkins")

TARGETS: dict[Engine, str] = {
    "github": ".github/workflows/conveyor.yml",
    "gitlab": ".gitlab-ci.yml",
    "jenkins": "Jenkinsfile",
}
"""Where each engine looks for its file, relative to the repository root."""

_TEMPLATES: dict[Engine, str] = {"github": "github.yml.j2", "gitlab": "gitlab-ci.yml.j2", "jenkins": "Jenkinsfile.j2"}

_LOCK_FILES = ("requirements.txt", "requirements.lock", "uv.lock", "poetry.lock", "Pipfile.lock")
"""Files whose content keys the cached dependencies and line cache, first found wins for pip."""

PYTHON = "3.11"
"""Python version the CI jobs install."""


class CIFileExists(ConveyorError):
    """The engine's file is there already; overwriting a hand-edited file needs a yes."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists; pass --force to overwrite it (or --stdout to print the new one)")


@dataclass(frozen=True)
class Generated:
    engine: Engine
    path: Path  # where it belongs, relative to the project root
    text: str


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string escapes are a subset of YAML's)."""
    return json.dumps(value)


def _groovy_str(value: str) -> str:
    """A Groovy single-quoted string literal: no `${}` interpolation happens in those."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _github_str(value: str) -> str:
    """A string literal in a GitHub Actions expression: single quotes, doubled to escape."""
    return "'" + value.replace("'", "''") + "'"


def render(root: Path, engine: Engine, *, deploy: bool = False) -> Generated:
    """The file for `engine` from the project at `root`; raises `ConfigError` for an invalid config."""
    import jinja2

    if engine not in ENGINES:
        raise ConveyorError(f"unknown CI engine '{engine}'; choose one of {', '.join(ENGINES)}")
    config = config_module.load(root)
    locks = [name for name in _LOCK_FILES if (root / name).is_file()]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("conveyor.ci", "templates"),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        variable_start_string="[[", variable_end_string="]]", block_start_string="[%", block_end_string="%]",
        comment_start_string="[#", comment_end_string="#]", autoescape=False,
    )
    env.filters["yaml"] = _yaml_str
    env.filters["groovy"] = _groovy_str
    env.filters["gh"] = _github_str
    requirements = "requirements.txt" if "requirements.txt" in locks else None
    install = f"python -m pip install {'-r ' + requirements + ' ' if requirements else ''}\"conveyor-ml[ci,report]\""
    model_dir = config.model.path.strip("/")
    text = env.get_template(_TEMPLATES[engine]).render(
        project=config.project,
        branch=config.triggers.branch,
        schedule=config.triggers.schedule,
        remote=config.remote is not None,
        tests=config.tests is not None,
        deploy=deploy,
        production=f"{config.model.name}@{defaults.PRODUCTION_ALIAS}",
        python=PYTHON,
        locks=locks,
        hash_files=", ".join(_github_str(name) for name in locks or [defaults.CONFIG_FILE]),
        requirements=requirements,
        install=install,
        # the report, and the model's metadata (signature, metrics), not its weights
        archive=f".conveyor/report/**, {model_dir}/*.json, {model_dir}/**/*.json",
        on_branch_gitlab=f"$CI_COMMIT_BRANCH == {json.dumps(config.triggers.branch)} "
                         '&& $CI_PIPELINE_SOURCE != "merge_request_event"',
    )
    return Generated(engine=engine, path=Path(TARGETS[engine]), text=text)


def write(root: Path, engine: Engine, *, deploy: bool = False, force: bool = False) -> Generated:
    """Render and write the engine's file under `root`; an existing file is kept unless `force`."""
    generated = render(root, engine, deploy=deploy)
    target = root / generated.path
    if target.exists() and not force:
        raise CIFileExists(generated.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    from conveyor.store import atomic_write_text

    atomic_write_text(target, generated.text)
    return generated
