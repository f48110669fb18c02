"""Data tracking and transfers: Conveyor vs DVC on the same files, in the same run, alternating.

(a) `conveyor data add` vs `dvc add` of one 1 GiB file (re-hashed each round: its mtime is bumped);
(b) `conveyor data status` vs `dvc status` on an unchanged directory of many small files;
(c) push and pull of a directory to moto's S3 server on loopback (`conveyor push --all` vs
    `dvc push`; `conveyor pull --all && conveyor data checkout` vs `dvc pull`), a fresh remote
    prefix and an empty local cache each round.

DVC (with dvc-s3) is installed in its own venv under `benchmarks/.work/` on first use and set to
hard-link its cache, as Conveyor does. Medians and ratios are appended to `benchmarks/RESULTS.md`.

    python benchmarks/data.py [--runs 3] [--status-files 100000] [--transfer-files 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
DVC_VENV = WORK / "dvc-venv"
RESULTS = HERE / "RESULTS.md"


def _dvc() -> Path:
    binary = DVC_VENV / "bin" / "dvc"
    if not (DVC_VENV / "bin" / "python").exists() or subprocess.run(
            [str(DVC_VENV / "bin" / "python"), "-c", "import dvc_s3"], capture_output=True).returncode != 0:
        print("installing DVC and dvc-s3 into", DVC_VENV, "(once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc", "dvc-s3"], check=True)
    return binary


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{process.stdout}\n{process.stderr}")
    return took


def _repo(path: Path, env: dict[str, str], dvc: Path | None) -> Path:
    path.mkdir(parents=True)
    _run(["git", "init", "-q", "-b", "main"], path, env)
    if dvc is not None:
        _run([str(dvc), "init", "-q"], path, env)
        _run([str(dvc), "config", "cache.type", "hardlink"], path, env)
    else:
        (path / "conveyor.yaml").write_text("project: bench\nstages:\n  s:\n    cmd: echo > m\n    outs: [m]\n"
                                            "model:\n  name: bench\n  path: m\n")
        (path / ".gitignore").write_text("/.conveyor/\n")
    return path


def _small_files(root: Path, count: int) -> None:
    for i in range(count):
        sub = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"f{i % 1000:04d}.txt").write_text(f"row {i}\n")


def _bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _alternate(rounds: int, cases: dict[str, tuple[Callable[[], None], Callable[[], float]]]) -> dict[str, list[float]]:
    """Each round runs every case once (setup untimed, then the timed part)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, (setup, timed) in cases.items():
            setup()
            times[name].append(timed())
            print(f"  round {r + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def _moto(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's server on a free port; its request log goes to a file (a pipe nobody reads would fill and stall it)."""
    server = Path(sys.executable).with_name("moto_server")
    with open(log, "wb") as out:
        process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", "0"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        time.sleep(0.1)
    process.kill()
    raise SystemExit("moto_server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="rounds of each comparison (default 3)")
    parser.add_argument("--status-files", type=int, default=100_000)
    parser.add_argument("--transfer-files", type=int, default=10_000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: add,status,transfer")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    dvc = _dvc()
    conveyor = Path(sys.executable).with_name("conveyor")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    results: list[tuple[str, dict[str, list[float]], str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-data-", dir=WORK if WORK.is_dir() else None) as tmp:
        base = Path(tmp)
        if "add" not in skip:
            print(f"(a) add of a {args.big_mib} MiB file", flush=True)
            ours, theirs = _repo(base / "a-conveyor", env, None), _repo(base / "a-dvc", env, dvc)
            with open(ours / "big.bin", "wb") as out:
                for _ in range(args.big_mib):
                    out.write(os.urandom(1 << 20))
            shutil.copyfile(ours / "big.bin", theirs / "big.bin")

            def reset_ours() -> None:
                shutil.rmtree(ours / ".conveyor", ignore_errors=True)
                (ours / "big.bin").chmod(0o644)
                _bump(ours / "big.bin")

            def reset_theirs() -> None:
                shutil.rmtree(theirs / ".dvc" / "cache", ignore_errors=True)
                (theirs / "big.bin.dvc").unlink(missing_ok=True)
                (theirs / "big.bin").chmod(0o644)
                _bump(theirs / "big.bin")

            times = _alternate(args.runs, {
                "conveyor data add": (reset_ours, lambda: _run([str(conveyor), "data", "add", "big.bin"], ours, env)),
                "dvc add": (reset_theirs, lambda: _run([str(dvc), "add", "-q", "big.bin"], theirs, env)),
            })
            results.append((f"(a) add of one {args.big_mib} MiB file", times, "conveyor data add", "dvc add", 5.0))
            shutil.rmtree(ours)
            shutil.rmtree(theirs)

        if "status" not in skip:
            print(f"(b) status of {args.status_files} unchanged files", flush=True)
            ours, theirs = _repo(base / "b-conveyor", env, None), _repo(base / "b-dvc", env, dvc)
            _small_files(ours / "data", args.status_files)
            _small_files(theirs / "data", args.status_files)
            _run([str(conveyor), "data", "add", "data"], ours, env)
            _run([str(dvc), "add", "-q", "data"], theirs, env)
            _run([str(conveyor), "data", "status"], ours, env)  # warm both
            _run([str(dvc), "status", "-q"], theirs, env)
            times = _alternate(args.runs, {
                "conveyor data status": (lambda: None, lambda: _run([str(conveyor), "data", "status"], ours, env)),
                "dvc status": (lambda: None, lambda: _run([str(dvc), "status"], theirs, env)),
            })
            results.append((f"(b) status of {args.status_files:,} unchanged files", times, "conveyor data status",
                             "dvc status", 10.0))
            shutil.rmtree(ours)
            shutil.rmtree(theirs)

        if "transfer" not in skip:
            print(f"(c) push/pull of {args.transfer_files} files to moto S3", flush=True)
            s3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
            server, endpoint = _moto({**env, **s3}, base / "moto.log")
            env_s3 = {**env, **s3, "AWS_ENDPOINT_URL": endpoint}
            try:
                subprocess.run([sys.executable, "-c", "import s3fs; s3fs.S3FileSystem().mkdir('bench')"],
                               env=env_s3, check=True)
                ours, theirs = _repo(base / "c-conveyor", env, None), _repo(base / "c-dvc", env, dvc)
                _small_files(ours / "data", args.transfer_files)
                _small_files(theirs / "data", args.transfer_files)
                _run([str(conveyor), "data", "add", "data"], ours, env)
                _run([str(dvc), "add", "-q", "data"], theirs, env)
                _run([str(dvc), "remote", "add", "-d", "store", "s3://bench/dvc-0"], theirs, env)
                _run([str(dvc), "remote", "modify", "store", "endpointurl", endpoint], theirs, env)
                counter = {"ours": 0, "theirs": 0}

                def fresh_ours() -> None:
                    counter["ours"] += 1
                    env_s3["CONVEYOR_REMOTE"] = f"s3://bench/conveyor-{counter['ours']}"

                def fresh_theirs() -> None:
                    counter["theirs"] += 1
                    _run([str(dvc), "remote", "modify", "store", "url", f"s3://bench/dvc-{counter['theirs']}"],
                         theirs, env)

                def empty_ours() -> None:
                    shutil.rmtree(ours / ".conveyor" / "cache")
                    shutil.rmtree(ours / "data")

                def empty_theirs() -> None:
                    shutil.rmtree(theirs / ".dvc" / "cache")
                    shutil.rmtree(theirs / "data")

                def pull_ours() -> float:
                    return (_run([str(conveyor), "pull", "--all"], ours, env_s3)
                            + _run([str(conveyor), "data", "checkout"], ours, env_s3))

                times = _alternate(args.runs, {
                    "conveyor push": (fresh_ours, lambda: _run([str(conveyor), "push", "--all"], ours, env_s3)),
                    "dvc push": (fresh_theirs, lambda: _run([str(dvc), "push", "-q"], theirs, env_s3)),
                    "conveyor pull + checkout": (empty_ours, pull_ours),
                    "dvc pull": (empty_theirs, lambda: _run([str(dvc), "pull", "-q"], theirs, env_s3)),
                })
                label = f"(c) {args.transfer_files:,} files to/from moto S3"
                results.append((label + ": push", {k: v for k, v in times.items() if "push" in k},
                                "conveyor push", "dvc push", 3.0))
                results.append((label + ": pull", {k: v for k, v in times.items() if "pull" in k},
                                "conveyor pull + checkout", "dvc pull", 3.0))
            finally:
                server.kill()
                server.wait()
    dvc_version = subprocess.run([str(dvc), "--version"], capture_output=True, text=True).stdout.strip()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/data.py " + " ".join(sys.argv[1:])
    lines = [f"\n## Data: Conveyor vs DVC ({stamp})\n", f"Command: `{command.strip()}` (or `make bench-data`)",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work), Python "
             f"{platform.python_version()}, DVC {dvc_version} (cache.type hardlink). Alternating rounds.\n",
             "| comparison | command | median s | all rounds (s) |", "|---|---|---|---|"]
    summary = []
    for label, times, ours_name, theirs_name, floor in results:
        for name, values in times.items():
            lines.append(f"| {label} | `{name}` | {statistics.median(values):.2f} | "
                         + ", ".join(f"{v:.2f}" for v in values) + " |")
        ratio = statistics.median(times[theirs_name]) / statistics.median(times[ours_name])
        summary.append(f"- {label}: Conveyor is **{ratio:.1f}×** faster than DVC (floor {floor:g}×)")
    text = "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"
    print(text)
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(text)


if __name__ == "__main__":
    main()
