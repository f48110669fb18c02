"""DVC interoperability: import a `dvc.yaml` pipeline, read `.dvc` pointers and `dvc.lock`.

An existing DVC project runs under Conveyor unchanged: `conveyor import dvc`
turns each `dvc.yaml` stage (cmd, deps, params, outs, metrics, plots, wdir)
into a `conveyor.yaml` stage. Templated pipelines (`foreach`, `matrix`,
`${…}` variables) have no single stage list to import and are refused with a
message that says so. `.dvc` pointer files show in `conveyor data status`;
data they point to that is missing is fetched with `dvc pull` when DVC is
installed. A registered version's lineage records the `dvc.lock` md5s.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conveyor import defaults
from conveyor.data import DataState
from conveyor.exceptions import ConveyorError

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"
_STAGE_KEYS = {"cmd", "deps", "params", "outs", "metrics", "plots", "wdir", "desc", "frozen", "always_changed",
               "meta"}


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConveyorError(f"{path.name}: cannot read it ({str(exc).splitlines()[0]})") from None


def _paths(items: Any, where: str) -> list[str]:
    """Paths from a DVC list whose items are `path` or `{path: {options}}`."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConveyorError(f"{DVC_YAML}: {where}: expected a list")
    paths = []
    for item in items:
        if isinstance(item, str):
            paths.append(item)
        elif isinstance(item, dict) and len(item) == 1:
            paths.append(str(next(iter(item))))
        else:
            raise ConveyorError(f"{DVC_YAML}: {where}: cannot read entry {item!r}")
    return paths


def _in_wdir(wdir: str, path: str) -> str:
    return Path(os.path.normpath(os.path.join(wdir, path))).as_posix()


def convert_stage(name: str, stage: Any) -> dict[str, Any]:
    """One `dvc.yaml` stage as a `conveyor.yaml` stage mapping."""
    if not isinstance(stage, dict):
        raise ConveyorError(f"{DVC_YAML}: stages.{name}: expected a mapping with cmd, deps, outs …")
    for templated in ("foreach", "matrix"):
        if templated in stage:
            raise ConveyorError(f"{DVC_YAML}: stages.{name}: '{templated}' stages are not supported; write one "
                                "stage per item in conveyor.yaml, or run this pipeline with `dvc repro`")
    unknown = sorted(set(stage) - _STAGE_KEYS)
    if unknown:
        raise ConveyorError(f"{DVC_YAML}: stages.{name}: unknown key(s) {', '.join(unknown)}")
    cmd = stage.get("cmd")
    if isinstance(cmd, list):
        cmd = " && ".join(str(c) for c in cmd)
    if not isinstance(cmd, str) or not cmd.strip():
        raise ConveyorError(f"{DVC_YAML}: stages.{name}: cmd is missing")
    wdir = str(stage.get("wdir", ".") or ".")
    if wdir != ".":
        cmd = f"cd {shlex.quote(wdir)} && {cmd}"
    deps = [_in_wdir(wdir, p) for p in _paths(stage.get("deps"), f"stages.{name}.deps")]
    params: list[str] = []
    for item in stage.get("params") or []:
        if isinstance(item, str) and wdir == ".":
            params.append(item)
        elif isinstance(item, str):  # a params.yaml of its own: depend on the whole file
            deps.append(_in_wdir(wdir, defaults.PARAMS_FILE))
        elif isinstance(item, dict):
            for file, keys in item.items():
                file_path = _in_wdir(wdir, str(file))
                if file_path == defaults.PARAMS_FILE and keys:
                    params += [str(k) for k in keys]
                else:  # Conveyor reads params from params.yaml only; another file counts as a whole
                    deps.append(file_path)
        else:
            raise ConveyorError(f"{DVC_YAML}: stages.{name}.params: cannot read entry {item!r}")
    outs = [_in_wdir(wdir, p) for p in _paths(stage.get("outs"), f"stages.{name}.outs")]
    outs += [_in_wdir(wdir, p) for p in _paths(stage.get("plots"), f"stages.{name}.plots")]
    metrics = [_in_wdir(wdir, p) for p in _paths(stage.get("metrics"), f"stages.{name}.metrics")]
    converted: dict[str, Any] = {"cmd": cmd}
    for key, values in (("deps", deps), ("params", params), ("outs", outs), ("metrics", metrics)):
        if values:
            converted[key] = list(dict.fromkeys(values))
    return converted


def convert(root: Path) -> dict[str, dict[str, Any]]:
    """The stages of the project's `dvc.yaml`, as `conveyor.yaml` stages."""
    path = root / DVC_YAML
    if not path.is_file():
        raise ConveyorError(f"no {DVC_YAML} in {root}; run this in the root of a DVC project")
    if "${" in path.read_text(encoding="utf-8", errors="replace"):
        raise ConveyorError(f"{DVC_YAML}: uses ${{…}} templating, which Conveyor does not expand; "
                            "write the values out, then import again")
    data = _load_yaml(path)
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise ConveyorError(f"{DVC_YAML}: has no stages to import")
    return {str(name): convert_stage(str(name), stage) for name, stage in stages.items()}


def import_dvc(root: Path, model_path: str | None = None, flavor: str = "sklearn") -> Path:
    """Write the `dvc.yaml` stages into `conveyor.yaml` (created when absent) and check the result.

    An existing `conveyor.yaml` keeps its other keys; its `stages` are replaced.
    """
    import yaml

    from conveyor.config import parse

    stages = convert(root)
    target = root / defaults.CONFIG_FILE
    if target.is_file():
        config = _load_yaml(target) or {}
        if not isinstance(config, dict):
            raise ConveyorError(f"{defaults.CONFIG_FILE}: expected a mapping")
        config["stages"] = stages
        if model_path:
            config["model"] = {**(config.get("model") or {}), "path": model_path}
    else:
        outs = [o for s in stages.values() for o in s.get("outs", [])]
        guess = model_path or next((o for o in outs if "model" in Path(o).name.lower()), None)
        if guess is None:
            raise ConveyorError("cannot tell which out is the model; pass --model PATH (an out of a stage)")
        name = "".join(c if c.isalnum() or c in "._-" else "-" for c in root.name).strip("-._") or "project"
        config = {"project": name, "stages": stages, "model": {"name": name, "path": guess, "flavor": flavor}}
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    parse(text)  # refuse to write a file `conveyor run` would reject
    target.write_text(text, encoding="utf-8")
    return target


def lock_md5s(root: Path) -> dict[str, dict[str, str]]:
    """`dvc.lock` as stage → {path: md5} for deps and outs (empty when there is no lock)."""
    path = root / DVC_LOCK
    if not path.is_file():
        return {}
    data = _load_yaml(path)
    stages = data.get("stages", {}) if isinstance(data, dict) else {}
    found: dict[str, dict[str, str]] = {}
    for name, stage in (stages or {}).items():
        if not isinstance(stage, dict):
            continue
        entries = [*(stage.get("deps") or []), *(stage.get("outs") or [])]
        found[str(name)] = {str(e["path"]): str(e.get("md5") or e.get("hash") or "")
                            for e in entries if isinstance(e, dict) and "path" in e}
    return found


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _outs(root: Path, dvc_file: Path) -> list[dict[str, Any]]:
    data = _load_yaml(dvc_file)
    outs = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(outs, list) or not all(isinstance(o, dict) and "path" in o for o in outs):
        raise ConveyorError(f"{dvc_file.relative_to(root).as_posix()}: not a DVC pointer (no outs with a path)")
    return outs


def dvc_state(root: Path, dvc_file: Path) -> DataState:
    """A `.dvc` pointer's data: missing, unchanged or modified (by md5 for a file), or present (a directory)."""
    out = _outs(root, dvc_file)[0]
    target = dvc_file.parent / str(out["path"])
    rel = target.relative_to(root).as_posix() if target.is_relative_to(root) else str(out["path"])
    md5 = str(out.get("md5") or "")
    if not target.exists():
        return DataState(rel, "missing", kind="dvc", digest=md5)
    if target.is_dir() or not md5:
        return DataState(rel, "present", kind="dvc", digest=md5)
    return DataState(rel, "unchanged" if _md5(target) == md5 else "modified", kind="dvc", digest=md5)


def pull_if_missing(root: Path, dep: str) -> None:
    """If `dep` is missing and `dep.dvc` tracks it, fetch it with `dvc pull`; an error if that cannot be done."""
    dvc_file = root / f"{dep.rstrip('/')}.dvc"
    if (root / dep).exists() or not dvc_file.is_file():
        return
    dvc = shutil.which("dvc")
    if dvc is None:
        raise ConveyorError(f"'{dep}' is tracked by DVC ({dvc_file.name}) and missing here; install DVC "
                            f"and run `dvc pull {dvc_file.relative_to(root).as_posix()}`")
    done = subprocess.run([dvc, "pull", dvc_file.relative_to(root).as_posix()], cwd=root, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or not (root / dep).exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConveyorError(f"`dvc pull {dvc_file.name}` did not bring '{dep}' back (exit {done.returncode}: {last})")
