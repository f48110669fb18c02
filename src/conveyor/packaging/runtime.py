"""What a packaged image runs: serve the model version baked into it, or one swapped in since.

The image holds no registry and no artifact store: only the model directory
and the version record it came from (`version.json`). The container target
can hot-swap a later version with the same dependencies into a running
container: it mounts a directory (read-only, at `SWAPPED_DIR`) holding that
version's record and model directory and asks the server to `/-/deploy` it.
Every model directory is re-hashed before it is loaded, so an altered one
refuses to serve. An image serving ONNX forms (`package.runtime: onnx`) also
holds `serving.json`, naming the digest its model directory has instead of the
version's; a version swapped into it is checked against the ONNX form its
record names (`lineage.serving`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from conveyor.exceptions import ConveyorError, IntegrityError, ServingError
from conveyor.model import load_model
from conveyor.registry import ModelVersion
from conveyor.serving.app import ModelSource, Served
from conveyor.store import hash_path

MODEL_DIR = "/app/model"
"""Where the image keeps the model directory."""

VERSION_FILE = "/app/version.json"
"""Where the image keeps the model version's record."""

PORT = 8080
"""Port the image's server listens on (EXPOSEd)."""

SERVING_FILE = "/app/serving.json"
"""Where an image serving another form of the version than its own keeps that form's digest."""

SWAPPED_DIR = "/var/lib/conveyor/models"
"""Where the container target mounts hot-swapped versions: `NAME@VERSION/{version.json,model/}`, and
`current` naming the one to serve when the container starts again."""

CURRENT_FILE = "current"
"""The file in `SWAPPED_DIR` naming the version a restarted container serves."""

_PINNED_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[0-9]+$")


def read_version(path: Path) -> ModelVersion:
    """The version record written by `conveyor package` (the inverse of `version_record`)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return ModelVersion(**data)


class ImageSource(ModelSource):
    """The version baked into the image, and the versions swapped into `swapped_dir` since."""

    def __init__(self, version: ModelVersion, model_dir: Path, swapped_dir: Path | None = None, *,
                 expected_digest: str | None = None) -> None:
        self.version = version
        self.model_dir = model_dir
        self.swapped_dir = swapped_dir
        self.ref = version.ref
        self.expected_digest = expected_digest  # the baked ONNX form's, when the image serves ONNX forms

    def resolve(self, ref: str | None = None) -> ModelVersion:
        if ref in (None, self.ref, f"{self.version.name}@{self.version.version}"):
            return self.version
        record = self._swapped(ref)
        if record is None:
            raise ServingError(f"this container serves {self.ref} and the versions `conveyor deploy --target "
                               f"container` copied into {SWAPPED_DIR}; {ref} is not one of them")
        return read_version(record / Path(VERSION_FILE).name)

    def _swapped(self, ref: str | None) -> Path | None:
        if self.swapped_dir is None or ref is None or not _PINNED_REF.match(ref):
            return None
        record = self.swapped_dir / ref
        return record if (record / Path(VERSION_FILE).name).is_file() else None

    def _model_dir(self, version: ModelVersion) -> Path:
        if version == self.version:
            return self.model_dir
        swapped = self._swapped(version.ref)
        if swapped is None:
            raise ServingError(f"{version.ref} is not in {SWAPPED_DIR}")
        return swapped / "model"

    def _digest(self, version: ModelVersion) -> str:
        """The digest `version`'s model directory must have here: its own, or in an image serving
        ONNX forms, that of the form (`serving.json` for the baked one, the record's lineage for others)."""
        if self.expected_digest is None:
            return version.digest
        if version == self.version:
            return self.expected_digest
        from conveyor.packaging.serving_form import recorded

        form = recorded(version)
        if form is None:
            raise ServingError(f"{version.ref} has no ONNX form recorded, and this image serves ONNX forms; "
                               "package it with package.runtime: onnx")
        return form.digest

    def load(self, version: ModelVersion) -> Served:
        started = time.perf_counter()
        model_dir = self._model_dir(version)
        expected = self._digest(version)
        actual = hash_path(model_dir)
        if actual != expected:
            raise IntegrityError(f"model directory {model_dir}", expected, actual)
        try:
            model = load_model(model_dir)
            model.warm()
        except ConveyorError:
            raise
        except Exception as exc:
            raise ServingError(f"{version.ref} cannot be served: {type(exc).__name__}: {exc}") from exc
        return Served(version, model, time.time(), load_seconds=time.perf_counter() - started)

    def first(self) -> ModelVersion:
        """What to serve at start: the version the container target swapped in last, else the baked one."""
        if self.swapped_dir is None:
            return self.version
        try:
            ref = (self.swapped_dir / CURRENT_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return self.version
        try:
            return self.resolve(ref)
        except (ConveyorError, OSError, ValueError) as exc:
            logging.getLogger(__name__).error("%s names %s, which cannot be read (%s); serving %s",
                                              self.swapped_dir / CURRENT_FILE, ref, exc, self.ref)
            return self.version


def read_expected_digest(path: Path) -> str | None:
    """The digest `serving.json` says the model directory has, or None when the image has no such file."""
    if not path.is_file():
        return None
    digest = json.loads(path.read_text(encoding="utf-8")).get("digest")
    if not isinstance(digest, str):
        raise ValueError(f"{path} names no digest; package the image again")
    return digest


def main() -> None:
    """Load, verify and serve the model (the one swapped in last, else the baked one) on 0.0.0.0:$PORT
    until SIGTERM/SIGINT."""
    import uvicorn

    from conveyor.serving.app import ServingApp
    from conveyor.serving.metrics import MetricsMiddleware, ServingMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        swapped = Path(os.environ.get("CONVEYOR_SWAPPED_DIR", SWAPPED_DIR))
        source = ImageSource(read_version(Path(VERSION_FILE)), Path(os.environ.get("CONVEYOR_MODEL_DIR", MODEL_DIR)),
                             swapped if swapped.is_dir() else None,
                             expected_digest=read_expected_digest(Path(SERVING_FILE)))
        first = source.first()
        try:
            served = source.load(first)
        except ConveyorError as exc:
            if first == source.version:
                raise
            logging.getLogger(__name__).error("cannot serve %s (%s); serving %s", first.ref, exc, source.ref)
            first, served = source.version, source.load(source.version)
        source.ref = first.ref
    except (ConveyorError, OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    metrics = ServingMetrics()
    app = ServingApp(source, token=os.environ.get("CONVEYOR_SERVER_TOKEN") or None, served=served, metrics=metrics)
    uvicorn.run(MetricsMiddleware(app, metrics), host=os.environ.get("CONVEYOR_HOST", "0.0.0.0"),
                port=int(os.environ.get("CONVEYOR_PORT", PORT)), log_level="info", access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
