"""`conveyor verify` and `conveyor gc`: what needs which object, corrupt and missing objects, deletion."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import git, register

from conveyor import data
from conveyor.registry import Registry
from conveyor.runs import RunStore, Step
from conveyor.store import ArtifactStore

CONFIG = """\
project: refs
stages:
  train:
    cmd: echo 1 > model.txt
    outs: [model.txt]
model:
  name: refs
  path: model.txt
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "conveyor.yaml").write_text(CONFIG)
    (root / ".gitignore").write_text("/.conveyor/\n")
    git(root, "init", "-q", "-b", "main")
    return root


def _store(root: Path) -> ArtifactStore:
    return ArtifactStore(root / ".conveyor" / "cache")


def _tree(root: Path, name: str, content: str) -> str:
    """Store a small model directory; its tree digest."""
    path = root / name
    path.mkdir()
    (path / "model.bin").write_text(content)
    (path / "meta.json").write_text(json.dumps({"name": name}))
    return _store(root).put(path)


def _run(root: Path, outs: dict[str, str]) -> str:
    runs = RunStore(root / ".conveyor" / "runs")
    run = runs.create(commit=None, branch="main", dirty=False, trigger="test")
    run.steps.append(Step(name="stage:train", kind="stage", status="ran", data={"outs": outs}))
    run.status = "passed"
    runs.save(run)
    time.sleep(0.002)  # run ids carry milliseconds: keep their order
    return run.id


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                          check=False, timeout=300)


def test_verify_removes_corrupt_objects_and_names_the_version_that_needs_them(project: Path) -> None:
    digest = _tree(project, "model_v1", "weights one")
    with Registry(f"sqlite:///{project / '.conveyor' / 'registry.db'}") as registry:
        register(registry, digest, name="refs")
    assert _cli(project, "verify").returncode == 0
    store = _store(project)
    weights = next(e for e in store.tree_entries(digest) if e["path"] == "model.bin")
    victim = store.object_path(str(weights["digest"]))
    victim.chmod(0o644)
    victim.write_text("weights tampered")
    found = _cli(project, "verify", "--json")
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert report["corrupt"] == {weights["digest"]: ["refs@1"]}
    assert not victim.exists()  # removed: never served or restored again
    again = _cli(project, "verify")  # now it is missing, and still needed
    assert again.returncode == 1
    assert f"missing: {str(weights['digest'])[:16]}…  needed by refs@1" in again.stdout
    assert "Traceback" not in again.stderr and again.stderr.startswith("Error:")


def test_gc_keeps_versions_tracked_data_and_recent_runs_and_deletes_the_rest(project: Path) -> None:
    store = _store(project)
    registered = _tree(project, "model_v1", "registered")
    with Registry(f"sqlite:///{project / '.conveyor' / 'registry.db'}") as registry:
        register(registry, registered, name="refs")
    (project / "dataset").mkdir()
    (project / "dataset" / "rows.csv").write_text("a,b\n1,2\n")
    tracked = data.add(project, store, project / "dataset", copy=True).digest
    old_run = _tree(project, "model_old", "an old run's model")
    _run(project, {"model_old": old_run})
    recent_run = _tree(project, "model_new", "the latest run's model")
    _run(project, {"model_new": recent_run})
    orphan = store.put_bytes(b"nothing needs me")
    before = set(store.digests())

    dry = _cli(project, "gc", "--keep-last", "1", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert listed["deleted"] is False
    assert set(store.digests()) == before  # the default is a dry run
    old_objects = {old_run.removesuffix(".dir")} | {str(e["digest"]) for e in store.tree_entries(old_run)}
    assert set(listed["objects"]) == old_objects | {orphan}
    assert listed["bytes"] == sum(store.object_path(d).stat().st_size for d in listed["objects"])

    done = _cli(project, "gc", "--keep-last", "1", "--yes")
    assert done.returncode == 0, done.stderr
    assert set(store.digests()) == before - old_objects - {orphan}
    for kept in (registered, tracked, recent_run):
        assert store.has(kept)
        assert all(store.has(str(e["digest"])) for e in store.tree_entries(kept))


def test_gc_without_yes_only_lists(project: Path) -> None:
    orphan = _store(project).put_bytes(b"x" * 1000)
    listed = _cli(project, "gc")
    assert listed.returncode == 0
    assert orphan in listed.stdout and "Would delete 1 object(s)" in listed.stdout
    assert _store(project).has(orphan)
    assert _cli(project, "gc", "--yes", "--dry-run").returncode == 0
    assert _store(project).has(orphan)  # --dry-run wins over --yes
