"""Who needs which object: registered versions, runs and tracked data; and what follows from it.

`verify` re-hashes the store and names, for each corrupt or missing object,
the versions, runs and pointers that need it. `gc` deletes what nothing
needs. `push`/`pull` use the same roots to pick what to move. A tree digest
(`….dir`) needs its manifest and every file in it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.exceptions import ConveyorError, IntegrityError, ObjectMissing
from conveyor.store import TREE_SUFFIX, ArtifactStore, hash_file

if TYPE_CHECKING:
    from conveyor.project import Project

Roots = dict[str, set[str]]
"""Digest (trees with their suffix) → who needs it, e.g. {"iris@3", "run 2026…", "data/raw"}."""


def _add(roots: Roots, digest: str, who: str) -> None:
    if digest:
        roots.setdefault(digest, set()).add(who)


def version_roots(registry_url: str, *, ref: str | None = None) -> Roots:
    """Every registered version's artifact (or only `ref`'s). Alias moves point at versions, so every
    alias history entry is covered by keeping every version."""
    from conveyor.registry import Registry

    roots: Roots = {}
    with Registry(registry_url) as registry:
        if ref is not None:
            version = registry.resolve(ref)
            _add(roots, version.digest, version.ref)
            return roots
        for name in registry.models():
            for version in registry.versions(name):
                _add(roots, version.digest, version.ref)
    return roots


def run_roots(project: Project, *, last: int | None = None, run_id: str | None = None) -> Roots:
    """The stage outs and model of the last `last` runs (all runs when None), or of one run."""
    from conveyor.runs import RunStore

    runs = RunStore(project.runs_dir)
    if run_id is not None:
        chosen = [runs.latest(run_id)]
    else:
        ids = runs.ids()
        chosen = []
        for rid in (ids if last is None else ids[:last]):  # newest first
            try:
                chosen.append(runs.load(rid))
            except ConveyorError:
                continue  # an unreadable run record protects nothing
    roots: Roots = {}
    for run in chosen:
        for step in run.steps:
            outs = step.data.get("outs") or {}
            if isinstance(outs, dict):
                for digest in outs.values():
                    _add(roots, str(digest), f"run {run.id}")
        if run.model and run.model.get("digest"):
            _add(roots, str(run.model["digest"]), f"run {run.id}")
    return roots


def data_roots(root: Path) -> Roots:
    """The content of every `.conveyor` pointer in the working tree."""
    from conveyor.data import iter_pointer_digests

    roots: Roots = {}
    for digest, path in iter_pointer_digests(root):
        _add(roots, digest, path)
    return roots


def merge(*all_roots: Roots) -> Roots:
    merged: Roots = {}
    for roots in all_roots:
        for digest, who in roots.items():
            merged.setdefault(digest, set()).update(who)
    return merged


@dataclass
class Closure:
    """Every hex digest the roots need, who needs each, and those that could not be read."""

    needed: dict[str, set[str]] = field(default_factory=dict)
    missing: dict[str, set[str]] = field(default_factory=dict)
    corrupt: dict[str, set[str]] = field(default_factory=dict)


def closure(store: ArtifactStore, roots: Roots) -> Closure:
    """Expand trees into their files; a manifest that is missing or corrupt is reported, not followed."""
    result = Closure()
    for digest, who in roots.items():
        hexdigest = digest.removesuffix(TREE_SUFFIX)
        result.needed.setdefault(hexdigest, set()).update(who)
        if not digest.endswith(TREE_SUFFIX):
            continue
        try:
            entries = store.tree_entries(digest)
        except ObjectMissing:
            result.missing.setdefault(hexdigest, set()).update(who)
            continue
        except IntegrityError:
            result.corrupt.setdefault(hexdigest, set()).update(who)
            continue
        for entry in entries:
            result.needed.setdefault(str(entry["digest"]), set()).update(who)
    return result


@dataclass
class Verification:
    checked: int
    corrupt: dict[str, set[str]]  # removed from the store
    missing: dict[str, set[str]]

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify(store: ArtifactStore, roots: Roots, *, progress: Iterable[None] | None = None) -> Verification:
    """Re-hash every object (removing corrupt ones, so they are never served or restored), then
    report the needed objects that are corrupt or missing, with who needs them."""
    corrupt: set[str] = set()
    checked = 0
    for digest in list(store.digests()):
        checked += 1
        path = store.object_path(digest)
        try:
            if hash_file(path) != digest:
                corrupt.add(digest)
                store.discard(digest)
        except OSError:
            corrupt.add(digest)
            store.discard(digest)
    found = closure(store, roots)
    bad = {d: who for d, who in found.needed.items() if d in corrupt}
    bad.update(found.corrupt)
    for d in corrupt - set(bad):
        bad[d] = set()  # corrupt but needed by nothing known
    missing = {d: who for d, who in found.needed.items() if d not in corrupt and not store.has(d)}
    missing.update({d: w for d, w in found.missing.items() if d not in bad})
    return Verification(checked=checked, corrupt=bad, missing=missing)


@dataclass
class Collection:
    doomed: list[str]
    bytes: int
    kept: int


def garbage(store: ArtifactStore, roots: Roots) -> Collection:
    """The objects nothing in `roots` needs, and their total size."""
    needed = closure(store, roots).needed
    doomed, size, kept = [], 0, 0
    for digest in store.digests():
        if digest in needed:
            kept += 1
            continue
        doomed.append(digest)
        try:
            size += store.object_path(digest).stat().st_size
        except OSError:
            pass
    return Collection(sorted(doomed), size, kept)


def collect(store: ArtifactStore, doomed: Iterable[str]) -> int:
    """Delete the objects; returns how many were removed."""
    removed = 0
    for digest in doomed:
        path = store.object_path(digest)
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed
