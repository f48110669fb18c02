"""A fully cached `conveyor run` against `dvc repro` with nothing to do, side by side.

Both tools get the same two-stage pipeline (the bundled iris example's
prepare → train) in one git repository. DVC is installed in its own venv
under `benchmarks/.work/` on first use. The runs alternate, N of each, and
the medians and their ratio are appended to `benchmarks/RESULTS.md`.

    python benchmarks/noop_run.py [--runs N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
DVC_VENV = WORK / "dvc-venv"
RESULTS = HERE / "RESULTS.md"

DVC_YAML = """\
stages:
  prepare:
    cmd: python src/prepare.py
    deps: [src/prepare.py, data/iris.csv]
    params: [prepare.test_size, prepare.seed]
    outs: [data/prepared]
  train:
    cmd: python src/train.py
    deps: [src/train.py, data/prepared]
    params: [train.C, train.max_iter]
    outs: [model]
    metrics:
      - metrics.json:
          cache: true
"""


def _sh(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _dvc() -> Path:
    binary = DVC_VENV / "bin" / "dvc"
    if not binary.exists():
        print("installing DVC into", DVC_VENV, "(once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], check=True)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _time(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{process.stdout}\n{process.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each tool (default 7)")
    args = parser.parse_args()
    dvc = _dvc()
    conveyor = Path(sys.executable).with_name("conveyor")
    # A regular install byte-compiles the package; an editable one under
    # PYTHONDONTWRITEBYTECODE (set on CI machines here) would compile it on every run.
    import conveyor as conveyor_package

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(conveyor_package.__file__).parent)], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        root = Path(tmp) / "iris"
        _sh([str(conveyor), "init", str(root), "--example", "iris"], cwd=Path(tmp), env=env)
        (root / "dvc.yaml").write_text(DVC_YAML)
        (root / ".gitignore").write_text((root / ".gitignore").read_text() + "/.dvc/tmp/\n")
        _sh([str(dvc), "init", "-q"], cwd=root, env=env)
        _sh([str(dvc), "repro", "-q"], cwd=root, env=env)
        _sh(["git", "add", "-A"], cwd=root, env=env)
        _sh(["git", "commit", "-q", "-m", "dvc pipeline"], cwd=root, env=env)
        env["CONVEYOR_PORT"] = str(_free_port())
        _sh([str(conveyor), "run"], cwd=root, env=env)  # first, real run: trains and starts the server
        commands = {
            "conveyor --no-deploy": [str(conveyor), "run", "--no-deploy"],
            "conveyor": [str(conveyor), "run"],
            "dvc": [str(dvc), "repro"],
        }
        try:
            for command in commands.values():  # warm the OS caches for all
                _time(command, root, env)
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, command in commands.items():
                    times[name].append(_time(command, root, env))
        finally:
            _sh([str(conveyor), "deployments", "stop"], cwd=root, env=env)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: medians[name] / medians["dvc"] for name in commands if name != "dvc"}
    dvc_version = subprocess.run([str(dvc), "--version"], capture_output=True, text=True).stdout.strip()
    for name, values in times.items():
        print(f"{name:9} median {medians[name] * 1000:7.1f} ms   runs: " + ", ".join(f"{v * 1000:.0f}" for v in values))
    for name, ratio in ratios.items():
        print(f"ratio {name} / dvc = {ratio:.3f} (target: at most 0.2)")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(
            f"\n## No-op run: `conveyor run` vs `dvc repro` ({stamp})\n\n"
            f"Command: `python benchmarks/noop_run.py --runs {args.runs}` (or `make bench`)\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, DVC {dvc_version}\n"
            "Pipeline: the iris example's prepare → train, everything cached. Conveyor also checks its cached\n"
            "tests and the registry; `conveyor run` (without `--no-deploy`) also checks that the live server\n"
            "serves production. Alternating runs, after one warm-up run of each.\n\n"
            "| command | median | all runs (ms) |\n|---|---|---|\n"
            + "".join(f"| `{name}` | {medians[name] * 1000:.1f} ms | {', '.join(f'{v * 1000:.0f}' for v in times[name])} |\n"
                      for name in commands)
            + "\n" + "".join(f"Ratio `{name}` / `dvc repro`: **{ratio:.3f}**\n" for name, ratio in ratios.items())
            + "(the issue asks for at most 0.2)\n"
        )


if __name__ == "__main__":
    main()
