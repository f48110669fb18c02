"""The build context and Dockerfile of a model version's image.

Layers go from what changes least to what changes most, so a new model
version with the same dependencies reuses every layer but the last:
user + empty venv, runtime packages, Conveyor's serving code, the model.
Labels come after the last layer: they change with every build and would
otherwise invalidate the cache of every layer below them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from conveyor.packaging import runtime
from conveyor.registry import ModelVersion

USER_ID = 10001
"""The image's non-root user."""

_READABLE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH

_HEALTHCHECK = ("import urllib.request; "
                f"urllib.request.urlopen('http://127.0.0.1:{runtime.PORT}/healthz', timeout=3)")


def runtime_dockerfile(base_image: str, python: str) -> str:
    """The layers every version with the same dependencies shares: `python` (X.Y) must be the base's Python."""
    site = f"/opt/venv/lib/python{python}/site-packages"
    return f"""\
# Written by `conveyor package`; layers ordered from least to most often changed.
FROM {base_image}
# Recent onnxruntime wheels send usage telemetry on Linux unless told not to: a served model phones nobody.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH ORT_DISABLE_TELEMETRY=1
# An empty venv (no pip, no setuptools: nothing installs at run time) and the non-root user.
RUN python3 -m venv --without-pip /opt/venv \\
 && useradd --no-log-init --uid {USER_ID} --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin conveyor
# What the flavor and the server need to predict, prepared on the host (no network in the build).
COPY runtime/ {site}/
# Conveyor's serving code.
COPY conveyor/ {site}/conveyor/
# How the image runs, settled here: every instruction after the model's COPY is one more commit in a rebuild.
WORKDIR /app
USER {USER_ID}
EXPOSE {runtime.PORT}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\
  CMD ["python3", "-c", "{_HEALTHCHECK}"]
CMD ["python3", "-m", "conveyor.packaging.runtime"]
"""


def _model_part(labels: Mapping[str, str]) -> str:
    label_lines = " \\\n      ".join(f"{key}={json.dumps(value)}" for key, value in sorted(labels.items()))
    return f"""\
# The model and its version record: the only layer a new version with the same dependencies changes.
COPY app/ /app/
LABEL {label_lines}
"""


def dockerfile(base_image: str, python: str, labels: Mapping[str, str]) -> str:
    """The whole Dockerfile (the build context's `Dockerfile`, for any builder)."""
    return runtime_dockerfile(base_image, python) + _model_part(labels)


def model_dockerfile(runtime_image: str, labels: Mapping[str, str]) -> str:
    """The model layer on top of an image built from `runtime_dockerfile`: the same layers as
    `dockerfile`, without asking the builder to re-hash the runtime packages to find its cache."""
    return f"FROM {runtime_image}\n" + _model_part(labels)


def version_record(version: ModelVersion) -> str:
    """The version's record as the image keeps it (read back by `runtime.read_version`)."""
    data = asdict(version)
    data["created_at"] = version.created_at.isoformat()
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def copy_readable(source: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy with hard links where the file system allows (the runtime tree is large), keeping mtimes.

    Everything ends up readable by all (directories 0755): the image's non-root user reads it,
    and the store keeps unpacked models in private (0700) directories.
    """
    def link_or_copy(src: str, dst: str) -> object:
        mode = os.stat(src).st_mode
        if mode & _READABLE == _READABLE:
            try:
                os.link(src, dst)
                return dst
            except OSError:
                pass
        shutil.copy2(src, dst)
        os.chmod(dst, stat.S_IMODE(mode) | _READABLE)
        return dst

    shutil.copytree(source, dest, copy_function=link_or_copy, ignore=shutil.ignore_patterns(*skip))
    for directory, _dirs, _files in os.walk(dest):
        os.chmod(directory, 0o755)


def write(output: Path, *, text: str, runtime_tree: Path, conveyor_dir: Path, model_dir: Path,
          version: ModelVersion, extra: Mapping[str, str] | None = None, expected_digest: str | None = None) -> Path:
    """Write the build context at `output` (replacing it) and return its Dockerfile.

    `extra`: more Dockerfiles by file name (the split one `package` builds from).
    `expected_digest`: the digest of `model_dir` when it is not the version's own (its ONNX form),
    written where the image's runtime checks the directory against it."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    copy_readable(runtime_tree, output / "runtime", skip=(".complete",))
    copy_readable(conveyor_dir, output / "conveyor", skip=("__pycache__", "*.pyc", "templates"))
    copy_readable(model_dir, output / "app" / Path(runtime.MODEL_DIR).name)
    (output / "app" / Path(runtime.VERSION_FILE).name).write_text(version_record(version), encoding="utf-8")
    if expected_digest is not None:
        (output / "app" / Path(runtime.SERVING_FILE).name).write_text(
            json.dumps({"runtime": "onnx", "digest": expected_digest}, indent=2) + "\n", encoding="utf-8")
    for name, content in (extra or {}).items():
        (output / name).write_text(content, encoding="utf-8")
    path = output / "Dockerfile"
    path.write_text(text, encoding="utf-8")
    return path
