"""The Python packages a serving image needs, prepared on the host so the build needs no network.

Only what predicting needs goes in: the flavor's packages and the serving
stack, pinned (the project's `requirements.txt` pins first, then the versions
the model was saved with, then the versions this Conveyor runs with). The tree
is installed once per pin set with `pip install --target` for the image's
Python and platform, trimmed (tests, bytecode, scripts, debug symbols) and
cached under `~/.cache/conveyor/runtime/`, so rebuilding is a copy.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from conveyor.exceptions import ConveyorError
from conveyor.store import hash_bytes

SERVING_PACKAGES = ("starlette", "uvicorn", "orjson", "numpy", "prometheus-client", "blake3")
"""What `conveyor.packaging.runtime` imports besides the flavor (uvicorn without its extras)."""

_SOURCES_ONLY = (".pyi", ".pxd", ".pyx", ".c", ".cpp", ".h", ".hpp")
"""Files only a compiler or type checker reads."""

_NOT_FOR_SERVING = ("onnxruntime/transformers", "onnxruntime/tools", "onnxruntime/quantization",
                    "onnxruntime/datasets", "onnxruntime/capi/libonnxruntime.so.*")
"""Parts of wheels no prediction reads, as globs in the tree: onnxruntime's pure-Python tooling (model
optimisation, quantization, sample data: 9 MB) and its C API library (35 MB), which its Python module
never loads (it links the runtime in itself). Checked by the image tests: a session still runs."""

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(requirements: Path | None) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name (other lines are not pins)."""
    if requirements is None or not requirements.is_file():
        return {}
    pins: dict[str, str] = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        found = _PIN.match(line)
        if found:
            pins[_canonical(found.group(1))] = found.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime_requirements(flavor_packages: Sequence[str], saved_with: Mapping[str, str | None],
                         pins: Mapping[str, str]) -> list[str]:
    """Pinned requirement lines for the flavor and the serving stack, sorted (they key the cache)."""
    wanted: dict[str, str | None] = {}
    saved = {_canonical(k): v for k, v in saved_with.items()}
    for name in (*flavor_packages, *SERVING_PACKAGES):
        key = _canonical(name)
        wanted[key] = pins.get(key) or saved.get(key) or _installed(name)
    return sorted(f"{name}=={version}" if version else name for name, version in wanted.items())


def _trim(tree: Path) -> None:
    """Drop what a serving process never reads: test suites, bytecode, scripts, debug symbols,
    and the parts of wheels in `_NOT_FOR_SERVING`."""
    for pattern in _NOT_FOR_SERVING:
        for found in tree.glob(pattern):
            if found.is_dir() and not found.is_symlink():
                shutil.rmtree(found)
            else:
                found.unlink()
    for path in sorted(tree.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink():
            continue
        if path.is_dir() and path.name in ("tests", "__pycache__"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in _SOURCES_ONLY:
            path.unlink()
    shutil.rmtree(tree / "bin", ignore_errors=True)
    _link_duplicates(tree)
    strip = shutil.which("strip")
    if strip is None:
        return
    # Only the packages' own extension modules: the libraries auditwheel vendored into `*.libs/` are
    # already stripped and patched, and strip breaks their segment alignment (numpy then fails to load).
    libraries = [str(p) for p in tree.rglob("*.so") if p.is_file() and not p.is_symlink()
                 and not any(part.endswith(".libs") for part in p.relative_to(tree).parts)]
    for start in range(0, len(libraries), 200):
        # A library strip cannot read is left as it is: smaller is a bonus, not a requirement.
        subprocess.run([strip, "--strip-unneeded", *libraries[start:start + 200]], capture_output=True, check=False)


def _link_duplicates(tree: Path) -> None:
    """Hard-link identical vendored libraries (numpy and scipy both ship libgfortran): a layer
    stores a hard link once."""
    seen: dict[tuple[str, int], Path] = {}
    for path in sorted(tree.glob("*.libs/*")):
        if not path.is_file() or path.is_symlink():
            continue
        key = (path.name, path.stat().st_size)
        first = seen.setdefault(key, path)
        if first is not path and first.read_bytes() == path.read_bytes():
            path.unlink()
            os.link(first, path)


def prepare(requirements: Sequence[str], python: str, cache_dir: Path) -> Path:
    """A site-packages tree holding `requirements` for CPython `python` (X.Y) on Linux, cached by pin set."""
    machine = platform.machine() or "x86_64"
    key = hash_bytes("\n".join([python, machine, *requirements]).encode())[:24]
    dest = cache_dir / key
    if (dest / ".complete").is_file():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{key}-"))
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in (36, 35, 34, 28, 27, 17)] + [f"manylinux2014_{machine}"]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               *(arg for p in platforms for arg in ("--platform", p)), "--target", str(staging), *requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise ConveyorError(f"cannot prepare the image's Python packages ({' '.join(requirements)}) for "
                                f"Python {python}: pip says:\n{tail}")
        _trim(staging)
        (staging / ".complete").write_text("\n".join(requirements) + "\n")
        try:
            os.replace(staging, dest)
        except OSError:  # another process prepared the same set first: keep theirs (others may be reading it)
            if not (dest / ".complete").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
