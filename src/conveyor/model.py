"""Model directories: what a training script saves and what the server loads.

A model is a directory: the flavor's artifact (e.g. `model.joblib`) plus
`conveyor-model.json` (flavor, artifact name, signature, environment). The file
holds no timestamp, so retraining to the same bytes yields the same digest.

Loading a pickle runs code. Server-side loading therefore goes through
`load_verified`: restore the tree for the digest the registry recorded, re-hash
it, and only then unpickle.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError, IntegrityError
from conveyor.store import TREE_SUFFIX, ArtifactStore, hash_path, swap_in_dir

if TYPE_CHECKING:
    import numpy as np

METADATA_FILE = "conveyor-model.json"
FORMAT_VERSION = 1
_DIGEST = re.compile(r"^[0-9a-f]{64}\.dir$")


@dataclass(frozen=True)
class ModelMetadata:
    """The contents of `conveyor-model.json`."""

    flavor: str
    artifact: str
    signature: dict[str, Any]
    environment: dict[str, Any]
    sample: list[list[Any]] | None = None  # a few rows of the training sample, in signature column order


SAMPLE_ROWS = 5
"""Rows of the sample input kept in the model directory, to time predict on real data."""


def package_versions(packages: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of `packages` (and Conveyor), as a model directory records them; None if absent."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for key, name in [*((p, p) for p in packages), ("conveyor", "conveyor-ml")]:
        try:
            found[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found


def save_model(
    model: Any,
    path: str | Path,
    sample_input: Any,
    *,
    flavor: str = "sklearn",
    input_names: Sequence[str] | None = None,
) -> Path:
    """Write `model` as a model directory at `path`, replacing what was there.

    `sample_input` (a 2-D array, a DataFrame or a list of dicts, a few rows of
    training data) fixes the signature requests are validated against;
    `input_names` names the columns of an array sample.
    """
    from conveyor import flavors, signature

    impl = flavors.get(flavor)
    impl.check(model)
    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise ConveyorError(f"{dest} is a file; save_model writes a directory there, so pick another path")
    sig = signature.infer_signature(
        sample_input, lambda X, columns: impl.predict(model, X, columns), input_names=input_names
    )
    sample = signature.to_array(sig, sample_input)[:SAMPLE_ROWS].tolist()  # what the latency gate times
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
    try:
        artifact = impl.save(model, staging)
        document = {
            "format": FORMAT_VERSION,
            "flavor": flavor,
            "artifact": artifact,
            "signature": sig,
            "sample": sample,
            "environment": {"python": platform.python_version(), "packages": package_versions(impl.PACKAGES)},
        }
        (staging / METADATA_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        swap_in_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def read_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of the model directory at `path` (no artifact is loaded)."""
    from conveyor.signature import check_signature

    file = Path(path) / METADATA_FILE
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise ConveyorError(
            f"{path} is not a Conveyor model directory (no {METADATA_FILE}); "
            "write it from the training script with conveyor.save_model(model, path, sample_input)"
        ) from None
    except ValueError as exc:
        raise ConveyorError(f"{file} is not valid JSON ({exc}); save the model again") from None
    try:
        flavor, artifact = document["flavor"], document["artifact"]
        environment = document.get("environment", {})
    except (KeyError, TypeError):
        raise ConveyorError(f"{file} lacks 'flavor' or 'artifact'; save the model again") from None
    if not isinstance(artifact, str) or "/" in artifact or artifact.startswith("."):
        raise ConveyorError(f"{file}: artifact {artifact!r} must be a plain file name in the model directory")
    sample = document.get("sample")
    valid_sample = isinstance(sample, list) and bool(sample) and all(isinstance(row, list) for row in sample)
    return ModelMetadata(
        flavor=str(flavor),
        artifact=artifact,
        signature=check_signature(document.get("signature"), str(file)),
        environment=environment if isinstance(environment, dict) else {},
        sample=sample if valid_sample else None,
    )


class LoadedModel:
    """A model in memory, called through its flavor and checked against its signature."""

    def __init__(self, path: Path, metadata: ModelMetadata, model: Any) -> None:
        from conveyor import flavors
        from conveyor.signature import column_names

        self.path = path
        self.metadata = metadata
        self.model = model
        self._flavor = flavors.get(metadata.flavor)
        self._columns = column_names(metadata.signature)
        # An ONNX graph converted from a scikit-learn regressor answers (n, 1) where the estimator
        # answered (n,): the signature (kept from the estimator) says which shape clients get.
        shape = metadata.signature.get("outputs", {}).get("shape", [-1])
        self._flatten = metadata.flavor == "onnx" and len(shape) == 1

    @property
    def signature(self) -> dict[str, Any]:
        return self.metadata.signature

    def predict(self, X: Any) -> np.ndarray:
        """Predictions for `X`: a 2-D array in signature column order, a DataFrame or a list of rows."""
        from conveyor.signature import to_array

        return self.predict_array(to_array(self.metadata.signature, X))

    def predict_array(self, X: np.ndarray) -> np.ndarray:
        """Predictions for an array already validated against the signature (the request path)."""
        predicted = self._flavor.predict(self.model, X, self._columns)
        if self._flatten and predicted.ndim == 2 and predicted.shape[1] == 1:
            return predicted[:, 0]
        return predicted

    def warm(self) -> None:
        """Predict once on the saved sample rows (or, for older model directories, a row built
        from the signature), so the first request is not the slow one and a model that cannot
        answer real input is never swapped in."""
        from conveyor.signature import sample_rows, to_array

        sample = self.metadata.sample
        self.predict_array(to_array(self.metadata.signature, sample) if sample else sample_rows(self.metadata.signature))

    def __repr__(self) -> str:
        return f"LoadedModel({str(self.path)!r}, flavor={self.metadata.flavor!r})"


def load_model(path: str | Path) -> LoadedModel:
    """Load the model directory at `path` (trusted: your own training output)."""
    from conveyor import flavors

    directory = Path(path)
    metadata = read_metadata(directory)
    artifact = directory / metadata.artifact
    if not artifact.is_file():
        raise ConveyorError(f"{artifact} is missing; the model directory is incomplete, save it again")
    return LoadedModel(directory, metadata, flavors.get(metadata.flavor).load(artifact))


def materialize(store: ArtifactStore, models_dir: Path, digest: str) -> Path:
    """The verified model directory for `digest`, restored from `store` if needed.

    The directory is `models_dir/<hex>`; it is reused only when its content
    re-hashes to `digest`, else rebuilt from the store (which checks every
    byte). Raises `IntegrityError` if the result still does not match.
    """
    if not _DIGEST.match(digest):
        raise ConveyorError(
            f"'{digest}' is not a model directory digest (64 hex digits + '{TREE_SUFFIX}'); "
            "save models with conveyor.save_model, which writes a directory"
        )
    dest = models_dir / digest.removesuffix(TREE_SUFFIX)
    if dest.is_dir() and hash_path(dest) == digest:
        return dest
    try:
        store.restore(digest, dest)
    except OSError:  # another process restored the same digest at the same moment
        if not dest.is_dir():
            raise
    actual = hash_path(dest)
    if actual != digest:
        raise IntegrityError(f"model directory {dest}", digest, actual)
    return dest


def load_verified(store: ArtifactStore, models_dir: Path, digest: str) -> LoadedModel:
    """Materialise, verify and load the model stored under `digest` (as recorded by the registry)."""
    return load_model(materialize(store, models_dir, digest))
