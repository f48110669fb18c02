"""What a packaged image runs: serve the one model version baked into it.

The image holds no registry and no artifact store: only the model directory
and the version record it came from (`version.json`). The directory is
re-hashed at start, so an image whose model was altered refuses to serve.
An image serving the version's ONNX form (`package.runtime: onnx`) also holds
`serving.json`, naming the digest the directory must have instead.
"""

from __future__ import annotations

import json
import logging
import os
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

SERVING_FILE = "/app/serving.json"
"""Where an image serving another form of the version than its own keeps that form's digest."""

PORT = 8080
"""Port the image's server listens on (EXPOSEd)."""


def read_version(path: Path) -> ModelVersion:
    """The version record written by `conveyor package` (the inverse of `version_record`)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return ModelVersion(**data)


class BakedSource(ModelSource):
    """A model source that always answers with the version baked into the image."""

    def __init__(self, version: ModelVersion, model_dir: Path, expected_digest: str | None = None) -> None:
        self.version = version
        self.model_dir = model_dir
        self.ref = version.ref
        self.expected_digest = expected_digest or version.digest

    def resolve(self, ref: str | None = None) -> ModelVersion:
        if ref not in (None, self.ref, f"{self.version.name}@{self.version.version}"):
            raise ServingError(f"this image serves only {self.ref}; package {ref} as an image of its own")
        return self.version

    def load(self, version: ModelVersion) -> Served:
        started = time.perf_counter()
        actual = hash_path(self.model_dir)
        if actual != self.expected_digest:
            raise IntegrityError(f"model directory {self.model_dir}", self.expected_digest, actual)
        try:
            model = load_model(self.model_dir)
            model.warm()
        except ConveyorError:
            raise
        except Exception as exc:
            raise ServingError(f"{version.ref} cannot be served: {type(exc).__name__}: {exc}") from exc
        return Served(version, model, time.time(), load_seconds=time.perf_counter() - started)


def read_expected_digest(path: Path) -> str | None:
    """The digest `serving.json` says the model directory has, or None when the image has no such file."""
    if not path.is_file():
        return None
    digest = json.loads(path.read_text(encoding="utf-8")).get("digest")
    if not isinstance(digest, str):
        raise ValueError(f"{path} names no digest; package the image again")
    return digest


def main() -> None:
    """Load, verify and serve the baked model on 0.0.0.0:$PORT until SIGTERM/SIGINT."""
    import uvicorn

    from conveyor.serving.app import ServingApp
    from conveyor.serving.metrics import MetricsMiddleware, ServingMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        source = BakedSource(read_version(Path(VERSION_FILE)), Path(os.environ.get("CONVEYOR_MODEL_DIR", MODEL_DIR)),
                             read_expected_digest(Path(SERVING_FILE)))
        served = source.load(source.version)
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
