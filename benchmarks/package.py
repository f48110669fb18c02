"""`conveyor package` on the iris example: full build, model-only rebuild, image size over the base.

The full build starts from an empty runtime-package cache and rebuilds every
layer (`--no-cache`); the rebuild packages a new model version (another
`train.C`) with the layer cache warm. Needs podman (see scripts/containers.sh).
Results are appended to `benchmarks/RESULTS.md`.

    python benchmarks/package.py [--rounds N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"


def _sh(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return done.stdout


def _size(image: str) -> int:
    return int(_sh(["podman", "image", "inspect", "--format", "{{.Size}}", image], REPO).strip())


def _package(root: Path, ref: str, tag: str, cache: Path, base: str, use_cache: bool) -> float:
    from conveyor.packaging.package import package
    from conveyor.project import Project
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    project = Project(root)
    started = time.perf_counter()
    with Registry(project.default_registry_url, create=False) as registry:
        package(project, registry, ArtifactStore(project.cache_dir), ref, output=root.parent / "ctx" / ref,
                cache_dir=cache, base_image=base, builder="podman", tag=tag, use_cache=use_cache)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = _sh(["bash", str(REPO / "scripts" / "containers.sh")], REPO)
    for line in env.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value.strip("'")
    base = os.environ["CONVEYOR_BASE_IMAGE"]
    full: list[float] = []
    rebuild: list[float] = []
    added: list[int] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-package-") as tmp:
        root = Path(tmp) / "iris"
        conveyor = [sys.executable, "-m", "conveyor"]
        _sh([*conveyor, "init", str(root), "--example", "iris"], Path(tmp))
        _sh([*conveyor, "run", "--no-deploy"], root)
        params = root / "params.yaml"
        for n in range(args.rounds):
            cache = Path(tmp) / f"cache-{n}"  # empty: pip prepares the runtime packages again
            full.append(_package(root, "iris@latest", f"localhost/bench-iris:full-{n}", cache, base, False))
            added.append(_size(f"localhost/bench-iris:full-{n}") - _size(base))
            params.write_text(params.read_text().replace(f"C: {1.0 + n:.1f}", f"C: {2.0 + n:.1f}"))
            _sh(["git", "commit", "-qam", f"C round {n}"], root)
            _sh([*conveyor, "run", "--no-deploy"], root)
            rebuild.append(_package(root, "iris@latest", f"localhost/bench-iris:rebuild-{n}", cache, base, True))
            shutil.rmtree(cache)
        _sh(["podman", "rmi", "--force", *(f"localhost/bench-iris:{kind}-{n}" for kind in ("full", "rebuild")
                                            for n in range(args.rounds))], REPO)
    full_s, rebuild_s, added_mb = statistics.median(full), statistics.median(rebuild), statistics.median(added) / 1e6
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""
## Packaging: `conveyor package` on the iris example ({now})

Command: `python benchmarks/package.py --rounds {args.rounds}` (or `make bench-package`)
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; podman, base image {base}.

| measure | median | all rounds |
|---|---|---|
| full build (empty package cache, `--no-cache`) | {full_s:.1f} s | {', '.join(f'{x:.1f}' for x in full)} |
| rebuild after a model-only change | {rebuild_s:.1f} s | {', '.join(f'{x:.1f}' for x in rebuild)} |
| image size added over the base | {added_mb:.1f} MB | {', '.join(f'{x / 1e6:.1f}' for x in added)} |

- rebuild / full build (floor < 10 %): **{100 * rebuild_s / full_s:.1f} %**
- size added over the base (floor < 150 MB): **{added_mb:.1f} MB**
"""
    with RESULTS.open("a") as out:
        out.write(text)
    print(text)
    print(json.dumps({"full_s": full, "rebuild_s": rebuild, "added_bytes": added}))


if __name__ == "__main__":
    main()
