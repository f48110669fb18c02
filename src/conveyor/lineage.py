"""Where a model version came from and how two versions differ.

Everything here reads the version records (their `lineage` is written by the
line: git commit, stage deps/outs digests, environment), the artifact store
for sizes, and git for the commits between two versions.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.registry import ModelVersion
    from conveyor.store import ArtifactStore


@dataclass(frozen=True)
class Change:
    """One key that differs (or not) between version A and version B."""

    key: str
    a: Any
    b: Any

    @property
    def delta(self) -> float | None:
        if isinstance(self.a, (int, float)) and isinstance(self.b, (int, float)):
            return float(self.b) - float(self.a)
        return None


@dataclass(frozen=True)
class VersionDiff:
    a: str
    b: str
    metrics: list[Change]
    params: list[Change]
    data: list[Change]
    commits: list[str] | None  # `git log --oneline A..B`: what B has that A has not; None when git cannot tell
    commits_back: list[str] | None  # `B..A`: what A has that B has not (B is older, or on another branch)
    size_bytes: tuple[int | None, int | None]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("metrics", "params", "data"):
            out[key] = [{**asdict(c), "delta": c.delta} for c in getattr(self, key)]
        return out


def data_digests(version: ModelVersion) -> dict[str, str]:
    """The digest of every stage dep the version was built from (code and data), by path."""
    digests: dict[str, str] = {}
    for stage in version.lineage.get("stages", {}).values():
        digests.update(stage.get("deps", {}))
    return digests


def artifact_size(store: ArtifactStore, digest: str) -> int | None:
    """Bytes of the version's artifact, from the local store (None when it is not here)."""
    from conveyor.exceptions import ConveyorError

    try:
        entries = store.tree_entries(digest)
        return sum(store.object_path(str(e["digest"])).stat().st_size for e in entries)
    except (ConveyorError, OSError):
        return None


def commits_between(root: Path, a: str | None, b: str | None) -> list[str] | None:
    """One line per commit reachable from `b` but not from `a`."""
    if not a or not b:
        return None
    found = subprocess.run(["git", "log", "--oneline", "--no-decorate", f"{a}..{b}", "--"], cwd=root,
                           capture_output=True, text=True, check=False)
    return found.stdout.splitlines() if found.returncode == 0 else None


def _changes(a: dict[str, Any], b: dict[str, Any], only_changed: bool) -> list[Change]:
    keys = sorted(set(a) | set(b))
    return [Change(k, a.get(k), b.get(k)) for k in keys if not only_changed or a.get(k) != b.get(k)]


def _commit(version: ModelVersion) -> str | None:
    commit = version.lineage.get("git", {}).get("commit")
    return commit if isinstance(commit, str) else None


def diff(a: ModelVersion, b: ModelVersion, *, root: Path, store: ArtifactStore) -> VersionDiff:
    """Metrics (all, with deltas), params and data that changed, commits between, sizes."""
    return VersionDiff(
        a=a.ref, b=b.ref,
        metrics=_changes(a.metrics, b.metrics, only_changed=False),
        params=_changes(a.params, b.params, only_changed=True),
        data=_changes(data_digests(a), data_digests(b), only_changed=True),
        commits=commits_between(root, _commit(a), _commit(b)),
        commits_back=commits_between(root, _commit(b), _commit(a)),
        size_bytes=(artifact_size(store, a.digest), artifact_size(store, b.digest)),
    )


@dataclass(frozen=True)
class Lineage:
    """commit → data digests → model digest → image → deployments, for one version."""

    ref: str
    aliases: list[str]
    commit: str | None
    branch: str | None
    dirty: bool
    run_id: str | None
    data: dict[str, str]
    digest: str
    image: str | None
    deployments: list[str] = field(default_factory=list)
    serving: dict[str, Any] | None = None  # the ONNX form an image may serve instead (`package.runtime: onnx`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lineage(version: ModelVersion, aliases: list[str], deployments: list[str]) -> Lineage:
    git = version.lineage.get("git", {})
    image = version.lineage.get("image")
    return Lineage(
        ref=version.ref, aliases=aliases, commit=git.get("commit"), branch=git.get("branch"),
        dirty=bool(git.get("dirty")), run_id=version.run_id, data=data_digests(version), digest=version.digest,
        image=image.get("digest") if isinstance(image, dict) else None, deployments=deployments,
        serving=serving if isinstance(serving := version.lineage.get("serving"), dict) else None,
    )
