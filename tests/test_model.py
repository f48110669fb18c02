"""Model directories: save/load round trip, metadata, and verified materialisation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import IRIS
from sklearn.linear_model import LogisticRegression

from conveyor.exceptions import ConveyorError, IntegrityError
from conveyor.model import (
    METADATA_FILE,
    load_model,
    load_verified,
    materialize,
    read_metadata,
    save_model,
)
from conveyor.store import ArtifactStore, hash_path


@pytest.fixture
def saved(tmp_path: Path, classifier: LogisticRegression, iris: tuple[np.ndarray, Any]) -> Path:
    return save_model(classifier, tmp_path / "model", iris[0][:5], input_names=IRIS)


def test_round_trip_predicts_the_same(saved: Path, classifier: LogisticRegression, iris: Any) -> None:
    X = iris[0]
    loaded = load_model(saved)
    assert np.array_equal(loaded.predict(X), classifier.predict(X))
    assert loaded.predict([dict(zip(IRIS, X[0]))]).tolist() == classifier.predict(X[:1]).tolist()
    assert [c["name"] for c in loaded.signature["inputs"]] == IRIS
    assert loaded.signature["outputs"] == {"dtype": "int64", "shape": [-1]}
    loaded.warm()


def test_metadata_records_flavor_and_environment(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [METADATA_FILE, "model.joblib"]
    meta = read_metadata(saved)
    assert (meta.flavor, meta.artifact) == ("sklearn", "model.joblib")
    assert meta.environment["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(meta.environment["packages"]) == {"scikit-learn", "numpy", "joblib", "conveyor"}
    assert all(meta.environment["packages"].values())


def test_saving_twice_gives_the_same_digest(saved: Path, classifier: LogisticRegression, iris: Any) -> None:
    first = hash_path(saved)
    save_model(classifier, saved, iris[0][:5], input_names=IRIS)
    assert hash_path(saved) == first


def test_save_replaces_and_leaves_no_temp_dirs(saved: Path, iris: Any) -> None:
    (saved / "stale.txt").write_text("old")
    other = LogisticRegression(C=0.01, max_iter=1000).fit(*iris)
    save_model(other, saved, iris[0][:5])
    assert not (saved / "stale.txt").exists()
    assert [p.name for p in saved.parent.iterdir()] == ["model"]
    assert read_metadata(saved).signature["inputs"][0]["name"] == "x0"


def test_save_rejects_a_non_model_and_leaves_nothing(tmp_path: Path, iris: Any) -> None:
    with pytest.raises(ConveyorError, match="no predict method"):
        save_model(object(), tmp_path / "m", iris[0][:2])
    with pytest.raises(ConveyorError, match="unknown model flavor 'torch'; supported flavors: onnx, pyfunc, sklearn"):
        save_model(object(), tmp_path / "m", iris[0][:2], flavor="torch")
    assert list(tmp_path.iterdir()) == []


def test_save_over_a_file_is_refused(tmp_path: Path, classifier: Any, iris: Any) -> None:
    (tmp_path / "m").write_text("x")
    with pytest.raises(ConveyorError, match="is a file"):
        save_model(classifier, tmp_path / "m", iris[0][:2])


def test_read_metadata_errors_say_how_to_fix(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(ConveyorError, match="conveyor.save_model"):
        read_metadata(tmp_path)
    pickled = tmp_path / "model.pkl"  # a stage whose model out is one file, not a saved model directory
    pickled.write_bytes(b"not a model directory")
    with pytest.raises(ConveyorError, match="not a Conveyor model directory"):
        read_metadata(pickled)
    (saved / METADATA_FILE).write_text("{not json")
    with pytest.raises(ConveyorError, match="not valid JSON"):
        read_metadata(saved)
    (saved / METADATA_FILE).write_text(json.dumps({"flavor": "sklearn", "artifact": "../x", "signature": {}}))
    with pytest.raises(ConveyorError, match="plain file name"):
        read_metadata(saved)


def test_load_model_needs_the_artifact(saved: Path) -> None:
    (saved / "model.joblib").unlink()
    with pytest.raises(ConveyorError, match="incomplete"):
        load_model(saved)


def test_import_stays_light() -> None:
    code = "import sys, conveyor.model; print(sorted(m for m in ('numpy', 'joblib', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- materialize --------------------------------------------------------------


@pytest.fixture
def stored(tmp_path: Path, saved: Path) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path / "cache")
    return store, store.put(saved)


def test_materialize_restores_a_verified_copy(tmp_path: Path, stored: tuple[ArtifactStore, str], iris: Any) -> None:
    store, digest = stored
    path = materialize(store, tmp_path / "models", digest)
    assert path == tmp_path / "models" / digest.removesuffix(".dir")
    assert hash_path(path) == digest
    assert load_verified(store, tmp_path / "models", digest).predict(iris[0][:3]).shape == (3,)


def test_materialize_reuses_a_good_copy(tmp_path: Path, stored: tuple[ArtifactStore, str]) -> None:
    store, digest = stored
    path = materialize(store, tmp_path / "models", digest)
    inode = (path / "model.joblib").stat().st_ino
    assert materialize(store, tmp_path / "models", digest) == path
    assert (path / "model.joblib").stat().st_ino == inode


def test_materialize_rebuilds_a_tampered_copy(tmp_path: Path, stored: tuple[ArtifactStore, str]) -> None:
    store, digest = stored
    path = materialize(store, tmp_path / "models", digest)
    (path / "model.joblib").write_bytes(b"not the model")
    (path / "extra.py").write_text("import os")
    assert materialize(store, tmp_path / "models", digest) == path
    assert hash_path(path) == digest
    assert not (path / "extra.py").exists()


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
    path.write_bytes(data)


def test_materialize_rejects_a_tampered_object(tmp_path: Path, stored: tuple[ArtifactStore, str]) -> None:
    store, digest = stored
    artifact = next(e for e in store.tree_entries(digest) if e["path"] == "model.joblib")
    _tamper(store.object_path(str(artifact["digest"])), b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(IntegrityError, match="corrupt"):
        materialize(store, tmp_path / "models", digest)
    assert not (tmp_path / "models" / digest.removesuffix(".dir")).exists()


def test_materialize_rejects_a_tampered_manifest(tmp_path: Path, stored: tuple[ArtifactStore, str]) -> None:
    store, digest = stored
    _tamper(store.object_path(digest), b"[]")
    with pytest.raises(IntegrityError):
        materialize(store, tmp_path / "models", digest)


def test_materialize_wants_a_tree_digest(tmp_path: Path, stored: tuple[ArtifactStore, str]) -> None:
    store, _ = stored
    for bad in ("../../etc", "ab" * 32, "zz" * 32 + ".dir"):
        with pytest.raises(ConveyorError, match="not a model directory digest"):
            materialize(store, tmp_path / "models", bad)
