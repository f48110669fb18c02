"""Data tracking: pointers, the stat index, checkout, and tracked data as a stage dep."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import commit_all, git

from conveyor import data
from conveyor.cli import main
from conveyor.config import load
from conveyor.exceptions import BadDigest, ConveyorError
from conveyor.pipeline import Pipeline, StageCache
from conveyor.store import ArtifactStore, hash_path

CONFIG = """\
project: tracked
stages:
  train:
    cmd: {py} -c "import pathlib; pathlib.Path('model.txt').write_text(str(len(list(pathlib.Path('images').rglob('*')))))"
    deps: [images]
    outs: [model.txt]
model:
  name: tracked
  path: model.txt
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository with conveyor.yaml and a directory of files to track."""
    root = tmp_path / "proj"
    images = root / "images"
    (images / "cats").mkdir(parents=True)
    for i in range(20):
        (images / "cats" / f"{i}.bin").write_bytes(os.urandom(100 + i))
    (images / "README").write_text("pictures\n")
    (images / "run.sh").write_text("#!/bin/sh\n")
    (images / "run.sh").chmod(0o755)
    (root / "conveyor.yaml").write_text(CONFIG.format(py=sys.executable))
    (root / ".gitignore").write_text("/.conveyor/\n/model.txt\n")
    git(root, "init", "-q", "-b", "main")
    return root


def _store(root: Path) -> ArtifactStore:
    return ArtifactStore(root / ".conveyor" / "cache")


def test_add_writes_a_pointer_with_the_store_digest_and_ignores_the_path(project: Path) -> None:
    pointer = data.add(project, _store(project), project / "images")
    written = json.loads((project / "images.conveyor").read_text())
    assert written == {"path": "images", "digest": pointer.digest, "size": pointer.size, "files": 22}
    assert pointer.digest == hash_path(project / "images")  # the same digest a stage dep would get
    assert "/images" in (project / ".gitignore").read_text().splitlines()
    assert git(project, "status", "--porcelain", "--untracked-files=all").count("images/") == 0
    data.add(project, _store(project), project / "images")  # again: the .gitignore line is not repeated
    assert (project / ".gitignore").read_text().splitlines().count("/images") == 1


def test_add_hard_links_by_default_and_copies_with_copy(project: Path) -> None:
    store = _store(project)
    (project / "one.bin").write_bytes(b"linked content")
    (project / "two.bin").write_bytes(b"copied content")
    linked = data.add(project, store, project / "one.bin")
    copied = data.add(project, store, project / "two.bin", copy=True)
    assert os.stat(project / "one.bin").st_ino == store.object_path(linked.digest).stat().st_ino
    assert os.stat(project / "one.bin").st_mode & 0o222 == 0  # read-only, so no edit in place
    assert os.stat(project / "two.bin").st_ino != store.object_path(copied.digest).stat().st_ino
    assert os.stat(project / "two.bin").st_mode & 0o200


def test_status_sees_changes_added_files_deleted_files_and_missing_paths(project: Path) -> None:
    data.add(project, _store(project), project / "images")
    assert [(s.path, s.state) for s in data.status(project)] == [("images", "unchanged")]
    (project / "images" / "new.txt").write_text("new")
    assert data.status(project)[0].state == "modified"
    (project / "images" / "new.txt").unlink()
    assert data.status(project)[0].state == "unchanged"
    (project / "images" / "cats" / "3.bin").unlink()
    assert data.status(project)[0].state == "modified"
    (project / "images" / "cats" / "3.bin").write_bytes(b"back")
    (project / "images" / "run.sh").chmod(0o444)  # the exec bit is part of the manifest
    assert data.status(project)[0].state == "modified"
    os.replace(project / "images", project / "elsewhere")
    assert data.status(project)[0].state == "missing"


def test_unchanged_files_are_never_read_again(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data.add(project, _store(project), project / "images")
    hashed: list[Path] = []
    real = data.hash_large
    monkeypatch.setattr(data, "hash_large", lambda path: hashed.append(path) or real(path))
    assert data.status(project)[0].state == "unchanged"
    assert hashed == []  # the listing matched: nothing parsed, nothing read
    victim = project / "images" / "cats" / "7.bin"
    victim.unlink()  # replace the read-only link with new content
    victim.write_bytes(b"changed")
    assert data.status(project)[0].state == "modified"
    assert hashed == [victim]  # only the file whose stat changed was read


def test_checkout_restores_missing_and_modified_data(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(project)
    pointer = data.add(project, store, project / "images")
    original = (project / "images" / "cats" / "5.bin").read_bytes()
    (project / "images" / "cats" / "5.bin").unlink()
    (project / "images" / "cats" / "5.bin").write_bytes(b"edited")
    assert data.checkout(project, store) == ["images"]
    assert (project / "images" / "cats" / "5.bin").read_bytes() == original
    assert os.stat(project / "images" / "run.sh").st_mode & 0o100
    shutil.rmtree(project / "images")
    runner = CliRunner()
    monkeypatch.chdir(project)
    result = runner.invoke(main, ["data", "checkout"])
    assert result.exit_code == 0, result.output
    assert "Restored images." in result.output
    assert hash_path(project / "images") == pointer.digest
    assert runner.invoke(main, ["data", "status"]).output.split() == ["unchanged", "images"]


def test_checkout_never_restores_a_corrupt_object_and_says_to_pull(project: Path) -> None:
    store = _store(project)
    pointer = data.add(project, store, project / "images", copy=True)
    entry = next(e for e in store.tree_entries(pointer.digest) if e["path"] == "README")
    victim = store.object_path(str(entry["digest"]))
    victim.chmod(0o644)
    victim.write_text("tampered\n")
    shutil.rmtree(project / "images")
    with pytest.raises(ConveyorError, match="conveyor pull"):
        data.checkout(project, store)
    assert not (project / "images").exists()  # nothing half-restored
    assert not victim.exists()  # the corrupt object is gone, so it can never be served


def test_a_crafted_pointer_cannot_name_a_path_outside_the_store(project: Path) -> None:
    (project / "evil.conveyor").write_text(json.dumps({"path": "evil", "digest": "../../../../etc/passwd"}))
    with pytest.raises(ConveyorError, match="not a valid pointer"):
        data.status(project)
    with pytest.raises(BadDigest):
        _store(project).object_path("../" + "a" * 62)
    (project / "evil.conveyor").write_text(json.dumps({"path": "../outside", "digest": "a" * 64}))
    with pytest.raises(ConveyorError, match="beside it"):
        data.status(project)


def test_tracking_outside_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(ConveyorError, match="outside the project"):
        data.add(project, _store(project), tmp_path / "outside.txt")


def test_a_stage_dep_that_is_tracked_data_uses_the_pointer_and_is_restored_when_missing(project: Path) -> None:
    store = _store(project)
    pointer = data.add(project, store, project / "images")
    commit_all(project, "track images")
    shutil.rmtree(project / "images")  # a fresh clone: only the pointer
    config = load(project)
    pipeline = Pipeline(project, config, store, StageCache(project / ".conveyor" / "stages"))
    result = pipeline.run_stage("train", force=False, log_path=project / ".conveyor" / "train.log")
    assert result.status == "ran", (project / ".conveyor" / "train.log").read_text()
    assert result.deps == {"images": pointer.digest}
    assert (project / "model.txt").read_text() == "23"  # 22 files and the cats/ directory
    again = pipeline.run_stage("train", force=False, log_path=project / ".conveyor" / "train.log")
    assert again.status == "cached"
