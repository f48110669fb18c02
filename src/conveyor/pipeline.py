"""The stage graph: cache keys, execution in dependency order, restore from cache.

A stage's cache key is the blake3 hash of its command, the content of its
deps, the values of its params and the list of its outs. After a stage runs,
its outs go to the artifact store and a small entry `stages/<key>.json`
records their digests (written to a temp file, then renamed). When the key
is found again the command is not run: outs that differ from the entry are
restored from the store. A corrupt or unreadable entry is a miss, not a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from conveyor import defaults
from conveyor.config import Config, StageConfig, locate, stage_dependencies
from conveyor.exceptions import ConfigError, ConveyorError, IntegrityError, ObjectMissing
from conveyor.lock import held_fds
from conveyor.store import ArtifactStore, atomic_write_text, hash_bytes, hash_path


@dataclass
class StageResult:
    """What happened to one stage: `ran`, `cached`, `restored` or `failed`."""

    name: str
    status: str
    key: str = ""
    duration_s: float = 0.0
    exit_code: int | None = None
    deps: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    outs: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def load_params(root: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The project's `params.yaml` (empty when there is none), as JSON-compatible values.

    With `cache_dir`, an unchanged file is read from a JSON copy keyed by its
    digest, which spares a cached run the import of PyYAML.
    """
    path = root / defaults.PARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise ConfigError(defaults.PARAMS_FILE, [(None, "", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    key = hash_bytes(text.encode())
    cache_file = cache_dir / "params.json" if cache_dir else None
    if cache_file is not None:
        try:
            entry = json.loads(cache_file.read_text(encoding="utf-8"))
            if entry["key"] == key and isinstance(entry["params"], dict):
                cached: dict[str, Any] = entry["params"]
                return cached
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a missing or corrupt copy is a miss
    import yaml

    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(defaults.PARAMS_FILE, [(None, "", f"not valid YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(defaults.PARAMS_FILE, [(1, "", "expected a mapping of parameter names to values")])
    params: dict[str, Any] = json.loads(json.dumps(data, default=str))  # dates become strings, on every path
    if cache_file is not None and cache_file.parent.is_dir():
        atomic_write_text(cache_file, json.dumps({"key": key, "params": params}))
    return params


def _lookup(params: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def stage_params(root: Path, config: Config, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's declared params with their values; every missing key is reported with its line."""
    values: dict[str, dict[str, Any]] = {}
    problems: list[tuple[int | None, str, str]] = []
    for name, stage in config.stages.items():
        values[name] = {}
        for i, key in enumerate(stage.params):
            found, value = _lookup(params, key)
            if found:
                values[name][key] = value
            else:
                problems.append((locate(root, ("stages", name, "params", i)), f"stages.{name}.params",
                                 f"'{key}' is not in {defaults.PARAMS_FILE}; add it there or remove it here"))
    if problems:
        raise ConfigError(defaults.CONFIG_FILE, problems)
    return values


def command_env(**extra: str) -> dict[str, str]:
    """The environment for a stage or test command.

    The directory of the interpreter running Conveyor goes first on PATH, so
    `python` and `pytest` in conveyor.yaml mean the environment Conveyor (and
    so the training code that imports it) is installed in, activated or not.
    """
    env = {**os.environ, **extra}
    own_bin = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != own_bin:
        env["PATH"] = os.pathsep.join([own_bin, *(p for p in parts if p)])
    return env


def cache_key(stage: StageConfig, deps: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """The content hash that decides whether a stage must run."""
    payload = {"cmd": stage.cmd, "deps": dict(sorted(deps.items())), "params": dict(sorted(params.items())),
               "outs": sorted(stage.all_outs)}
    return hash_bytes(json.dumps(payload, sort_keys=True, default=str).encode())


def hash_deps(root: Path, paths: list[str], store: ArtifactStore | None = None) -> dict[str, str]:
    """Digest of each dep; a missing dep is an error naming it.

    A dep tracked by `conveyor data add` takes its digest from the stat index
    (no re-hash of an unchanged tree) and is restored from `store` when missing.
    """
    from conveyor.data import dep_digest

    digests = {}
    for dep in paths:
        path = root / dep
        tracked = dep_digest(root, store, dep)
        if tracked is not None:
            digests[dep] = tracked
            continue
        if not path.exists():
            raise ConveyorError(f"dep '{dep}' does not exist (was it deleted after the config was checked?)")
        digests[dep] = hash_path(path)
    return digests


class StageCache:
    """Entries `<key>.json` → digests of the outs a stage produced for that key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str) -> dict[str, str] | None:
        try:
            entry = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
            outs = entry["outs"]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        if not isinstance(outs, dict) or not all(isinstance(v, str) for v in outs.values()):
            return None
        return outs

    def put(self, key: str, stage: str, outs: Mapping[str, str]) -> None:
        atomic_write_text(
            self.root / f"{key}.json",
            json.dumps({"stage": stage, "outs": dict(outs), "created_at": time.time()}, indent=1),
        )


StageEvent = Callable[[str, StageResult | None], None]
"""Called with (stage name, None) when a stage starts and (name, result) when it ends."""


class Pipeline:
    """Runs a config's stages against a project root, a store and a stage cache."""

    def __init__(self, root: Path, config: Config, store: ArtifactStore, cache: StageCache) -> None:
        self.root = root
        self.config = config
        self.store = store
        self.cache = cache
        self.params = stage_params(root, config, load_params(root, cache.root))

    def order(self) -> list[str]:
        """Stages in an order that respects their deps (ties broken by name)."""
        sorter = TopologicalSorter(stage_dependencies(self.config))
        return list(sorter.static_order())

    def _restore_cached(self, outs: Mapping[str, str]) -> bool:
        """Make the workspace match cached outs; True if anything was copied.

        An entry can arrive without its objects (`conveyor pull`, `gc`): an out
        the workspace already holds goes back into the store, and one it lacks
        raises `ObjectMissing`, a miss.
        """
        restored = False
        for out, digest in outs.items():
            path = self.root / out
            if path.exists() and hash_path(path) == digest:
                if not self.store.has(digest):  # later steps (and `push`) read outs from the store
                    self.store.put(path)
                continue
            self.store.restore(digest, path)
            restored = True
        return restored

    def run_stage(self, name: str, *, force: bool, log_path: Path) -> StageResult:
        """Run one stage, or restore it from cache; never raises for a failing command."""
        stage = self.config.stages[name]
        started = time.perf_counter()
        params = self.params[name]
        deps = hash_deps(self.root, stage.deps, self.store)
        key = cache_key(stage, deps, params)
        result = StageResult(name=name, status="cached", key=key, deps=deps, params=params)
        cached = None if force else self.cache.get(key)
        if cached is not None and set(cached) == set(stage.all_outs):
            try:
                if self._restore_cached(cached):
                    result.status = "restored"
                result.outs = dict(cached)
                result.duration_s = time.perf_counter() - started
                return result
            except (ObjectMissing, IntegrityError):
                pass  # the cache cannot give these outs back: run the command instead
        return self._execute(name, stage, result, log_path, started)

    def _execute(self, name: str, stage: StageConfig, result: StageResult, log_path: Path, started: float) -> StageResult:
        for out in stage.all_outs:  # a stage must write its outs afresh, not inherit stale ones
            path = self.root / out
            if os.path.normpath(out) in (".", "") or os.path.normpath(out).startswith("..") or os.path.isabs(out):
                raise ConveyorError(f"stage '{name}': out '{out}' is not inside the project; refusing to delete it")
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = command_env(CONVEYOR_STAGE=name)
        with open(log_path, "wb") as log:
            log.write(f"$ {stage.cmd}\n".encode())
            log.flush()
            # The command comes from the project's own conveyor.yaml, as a Makefile recipe does.
            process = subprocess.run(stage.cmd, shell=True, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, check=False, pass_fds=held_fds())
        result.exit_code = process.returncode
        result.status = "ran"
        if process.returncode != 0:
            result.status = "failed"
            result.error = f"command exited with code {process.returncode}"
        else:
            missing = [out for out in stage.all_outs if not (self.root / out).exists()]
            if missing:
                result.status = "failed"
                result.error = f"command succeeded but did not write {', '.join(missing)}"
            else:
                result.outs = {out: self.store.put(self.root / out) for out in stage.all_outs}
                self.cache.put(result.key, name, result.outs)
        result.duration_s = time.perf_counter() - started
        return result

    def run(self, *, force: bool = False, jobs: int = 1, log_path_for: Callable[[str], Path],
            on_event: StageEvent | None = None) -> list[StageResult]:
        """Run every stage in dependency order, up to `jobs` at once; stop scheduling after a failure."""
        notify = on_event or (lambda _name, _result: None)
        sorter = TopologicalSorter(stage_dependencies(self.config))
        sorter.prepare()
        results: dict[str, StageResult] = {}
        failed = False
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            running: dict[Future[StageResult], str] = {}
            while sorter.is_active() and not failed:
                for name in sorted(sorter.get_ready()):
                    notify(name, None)
                    running[pool.submit(self.run_stage, name, force=force, log_path=log_path_for(name))] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    result = future.result()
                    results[name] = result
                    notify(name, result)
                    if result.status == "failed":
                        failed = True
                    else:
                        sorter.done(name)
            for future in list(running):  # let stages already started finish
                name = running.pop(future)
                results[name] = future.result()
                notify(name, results[name])
        return [results[name] for name in self.order() if name in results]
