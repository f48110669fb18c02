"""The content-addressed store: digests, atomic writes, verified reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.exceptions import IntegrityError, ObjectMissing
from conveyor.store import TREE_SUFFIX, ArtifactStore, hash_path


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)))
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    return root


def test_file_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    source = tmp_path / "f.txt"
    source.write_text("hello")
    digest = store.put(source)
    assert digest == hash_path(source) and len(digest) == 64
    assert store.object_path(digest).is_file()
    store.restore(digest, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text() == "hello"


def test_tree_round_trip_keeps_content_and_exec_bit(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    source = _tree(tmp_path / "model")
    digest = store.put(source)
    assert digest.endswith(TREE_SUFFIX) and digest == hash_path(source)
    dest = tmp_path / "restored"
    (dest / "stale").mkdir(parents=True)  # replaced wholesale, not merged
    store.restore(digest, dest)
    assert hash_path(dest) == digest
    assert not (dest / "stale").exists()
    assert os.access(dest / "run.sh", os.X_OK)


def test_same_content_is_stored_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    for name in ("x", "y"):
        (tmp_path / name).write_text("same")
        store.put(tmp_path / name)
    objects = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(objects) == 1


def test_corrupt_object_is_never_restored(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    source = _tree(tmp_path / "model")
    digest = store.put(source)
    victim = store.object_path(hash_path(source / "a.txt"))
    victim.chmod(0o644)
    victim.write_text("tampered")
    dest = tmp_path / "restored"
    with pytest.raises(IntegrityError, match="corrupt"):
        store.restore(digest, dest)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_corrupt_object_is_dropped_and_repaired_by_the_next_write(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    source = tmp_path / "f.txt"
    source.write_text("hello")
    digest = store.put(source)
    victim = store.object_path(digest)
    victim.chmod(0o644)
    victim.write_text("bit rot")
    store.put(source)  # a write of the same content notices and replaces it
    assert victim.read_text() == "hello"
    victim.chmod(0o644)
    victim.write_text("bit rot again")
    with pytest.raises(IntegrityError):
        store.restore(digest, tmp_path / "copy.txt")
    assert not victim.exists()  # never served again
    with pytest.raises(ObjectMissing):
        store.restore(digest, tmp_path / "copy.txt")


def test_missing_object(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(ObjectMissing):
        store.restore("0" * 64, tmp_path / "nothing")


@settings(max_examples=30, deadline=None)
@given(files=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.binary(max_size=512), min_size=1))
def test_any_tree_round_trips(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> None:
    base = tmp_path_factory.mktemp("prop")
    source = base / "src"
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
    store = ArtifactStore(base / "cache")
    digest = store.put(source)
    store.restore(digest, base / "dest")
    assert {p.name: p.read_bytes() for p in (base / "dest").iterdir()} == files
