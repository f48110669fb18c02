"""`conveyor package` on the iris example: full build, model-only rebuild, image size over the base.

The full build starts from an empty runtime-package cache and rebuilds every
layer (`--no-cache`); the rebuild packages a new model version (another
`train.C`) with the layer cache warm. Both serving runtimes are measured side
by side on the same versions: `native` (scikit-learn) and `onnx` (the ONNX
form the line made at registration, served by onnxruntime). Needs podman (see
scripts/containers.sh). Results are appended to `benchmarks/RESULTS.md`.

    python benchmarks/package.py [--rounds N] [--runtime native|onnx|both]
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


def _package(root: Path, ref: str, tag: str, cache: Path, base: str, use_cache: bool, runtime: str) -> float:
    from conveyor.packaging.package import package
    from conveyor.project import Project
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    project = Project(root)
    started = time.perf_counter()
    with Registry(project.default_registry_url, create=False) as registry:
        package(project, registry, ArtifactStore(project.cache_dir), ref, output=root.parent / "ctx" / ref,
                cache_dir=cache, base_image=base, builder="podman", tag=tag, use_cache=use_cache, runtime=runtime)
    return time.perf_counter() - started


def _run_line(root: Path) -> float | None:
    """Run the line; return how long its `serving form` step (the ONNX conversion) took, if it has one."""
    record = json.loads(_sh([sys.executable, "-m", "conveyor", "run", "--no-deploy", "--json"], root))
    step = next((s for s in record["steps"] if s["name"] == "serving form"), None)
    return float(step["duration_s"]) if step else None


def _cells(values: list[float], unit: str, scale: float = 1.0) -> str:
    shown = [v / scale for v in values]
    return f"{statistics.median(shown):.1f} {unit} ({', '.join(f'{x:.1f}' for x in shown)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", choices=["native", "onnx", "both"], default="both",
                        help="which serving runtime's image to measure (both: side by side, same versions)")
    args = parser.parse_args()
    runtimes = ["native", "onnx"] if args.runtime == "both" else [args.runtime]
    env = _sh(["bash", str(REPO / "scripts" / "containers.sh")], REPO)
    for line in env.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value.strip("'")
    base = os.environ["CONVEYOR_BASE_IMAGE"]
    full: dict[str, list[float]] = {r: [] for r in runtimes}
    rebuild: dict[str, list[float]] = {r: [] for r in runtimes}
    added: dict[str, list[float]] = {r: [] for r in runtimes}
    conversion: list[float] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-package-") as tmp:
        root = Path(tmp) / "iris"
        conveyor = [sys.executable, "-m", "conveyor"]
        _sh([*conveyor, "init", str(root), "--example", "iris"], Path(tmp))
        if "onnx" in runtimes:  # the line makes each version's ONNX form when it registers it
            config = root / "conveyor.yaml"
            config.write_text(config.read_text() + "\npackage:\n  runtime: onnx\n")
            _sh(["git", "commit", "-qam", "serve with onnxruntime"], root)
        _run_line(root)
        params = root / "params.yaml"
        for n in range(args.rounds):
            for runtime in runtimes:
                cache = Path(tmp) / f"cache-{runtime}-{n}"  # empty: pip prepares the runtime packages again
                tag = f"localhost/bench-iris:{runtime}-full-{n}"
                full[runtime].append(_package(root, "iris@latest", tag, cache, base, False, runtime))
                added[runtime].append(_size(tag) - _size(base))
            params.write_text(params.read_text().replace(f"C: {1.0 + n:.1f}", f"C: {2.0 + n:.1f}"))
            _sh(["git", "commit", "-qam", f"C round {n}"], root)
            took = _run_line(root)
            if took is not None:
                conversion.append(took)
            for runtime in runtimes:
                cache = Path(tmp) / f"cache-{runtime}-{n}"
                tag = f"localhost/bench-iris:{runtime}-rebuild-{n}"
                rebuild[runtime].append(_package(root, "iris@latest", tag, cache, base, True, runtime))
                shutil.rmtree(cache)
        _sh(["podman", "rmi", "--force", *(f"localhost/bench-iris:{runtime}-{kind}-{n}" for runtime in runtimes
                                            for kind in ("full", "rebuild") for n in range(args.rounds))], REPO)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = " | ".join(f"{r}: median (all rounds)" for r in runtimes)
    rows = [
        ("full build (empty package cache, `--no-cache`)", [_cells(full[r], "s") for r in runtimes]),
        ("rebuild after a model-only change", [_cells(rebuild[r], "s") for r in runtimes]),
        ("image size added over the base", [_cells(added[r], "MB", 1e6) for r in runtimes]),
    ]
    table = "\n".join(f"| {what} | {' | '.join(cells)} |" for what, cells in rows)
    floors = "\n".join(
        f"- {r}: rebuild / full build (floor < 10 %): "
        f"**{100 * statistics.median(rebuild[r]) / statistics.median(full[r]):.1f} %**; "
        f"size added over the base (floor < 150 MB): **{statistics.median(added[r]) / 1e6:.1f} MB**"
        for r in runtimes)
    converted = (f"\n- ONNX conversion and verification (the line's `serving form` step, at registration; not in "
                 f"any build above): {_cells(conversion, 's')}" if conversion else "")
    text = f"""
## Packaging: `conveyor package` on the iris example ({now})

Command: `python benchmarks/package.py --rounds {args.rounds} --runtime {args.runtime}` (or `make bench-package`)
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; podman, base image {base}.

| measure | {header} |
|---|{'---|' * len(runtimes)}
{table}

{floors}{converted}
"""
    with RESULTS.open("a") as out:
        out.write(text)
    print(text)
    print(json.dumps({"full_s": full, "rebuild_s": rebuild, "added_bytes": added, "conversion_s": conversion}))


if __name__ == "__main__":
    main()
