"""Serving throughput and latency: Conveyor vs `mlflow models serve` vs a bare Starlette handler.

All three serve the same scikit-learn model (LogisticRegression on iris) on
loopback and are loaded by `wrk` (Debian package) with single-row JSON
requests, at concurrency 32 and 128, several alternating rounds. Conveyor
also runs with micro-batching off, for the batching ratio. Medians of the
rounds and the ratios are printed and appended to `benchmarks/RESULTS.md`.

    python benchmarks/serving.py [--rounds 3] [--duration 10] [--workers N]

MLflow is installed into `benchmarks/.work/mlflow-venv` on first use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
MLFLOW_VENV = WORK / "mlflow-venv"
RESULTS = HERE / "RESULTS.md"
ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

BARE_APP = """
import json, joblib, numpy as np, socket
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

model = joblib.load({model!r})

async def predict(request):
    body = json.loads(await request.body())
    rows = np.asarray([[r[c] for c in {columns!r}] for r in body["rows"]], dtype=float)
    return Response(json.dumps({{"predictions": model.predict(rows).tolist()}}), media_type="application/json")

app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
"""

MLFLOW_SAVE = """
import sys, mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
mlflow.sklearn.save_model(LogisticRegression(max_iter=500).fit(X, y), sys.argv[1])
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _need(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
        found = shutil.which(binary)
    if found is None:
        raise SystemExit(f"{binary} is not available; install the Debian package {package}")
    return found


def _mlflow() -> Path:
    binary = MLFLOW_VENV / "bin" / "mlflow"
    if not binary.exists():
        print("installing MLflow into", MLFLOW_VENV, "(once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", "mlflow", "scikit-learn"], check=True)
    return binary


def _wait_ready(url: str, body: bytes, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f}s")


@contextmanager
def _server(command: list[str], url: str, body: bytes, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_ready(url, body)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wrk(wrk: str, url: str, body: bytes, connections: int, duration_s: int, script_dir: Path) -> dict[str, float]:
    script = script_dir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n")
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def percentile(name: str) -> float:
        match = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE)
        return float(match.group(1)) * unit[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": percentile("50"), "p99": percentile("99"),
            "errors": float(errors.group(1)) if errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    wrk = _need("wrk", "wrk")
    mlflow = _mlflow()
    conveyor = Path(sys.executable).with_name("conveyor")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    native = json.dumps({"rows": [dict(zip(COLUMNS, ROW))]}).encode()
    mlflow_body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [ROW]}}).encode()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-serving-") as tmp:
        work = Path(tmp)
        project = work / "iris"
        subprocess.run([str(conveyor), "init", str(project), "--example", "iris"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run([str(conveyor), "run", "--no-deploy"], cwd=project, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        (work / "bare_app.py").write_text(BARE_APP.format(model=str(project / "model" / "model.joblib"),
                                                          columns=COLUMNS))
        subprocess.run([str(MLFLOW_VENV / "bin" / "python"), "-c", MLFLOW_SAVE, str(work / "mlflow-model")],
                       check=True)
        port = _free_port()
        targets: dict[str, tuple[list[str], Path, bytes, str]] = {
            "conveyor": ([str(conveyor), "serve", "iris@production", "--port", str(port), "--workers",
                          str(args.workers)], project, native, "/predict"),
            "conveyor, batching off": ([str(conveyor), "serve", "iris@production", "--port", str(port), "--workers",
                                        str(args.workers), "--no-batching"], project, native, "/predict"),
            "bare starlette": ([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--workers",
                                str(args.workers), "--no-access-log", "--log-level", "warning"], work, native,
                               "/predict"),
            "mlflow": ([str(mlflow), "models", "serve", "-m", str(work / "mlflow-model"), "--env-manager", "local",
                        "-p", str(port), "-w", str(args.workers)], work, mlflow_body, "/invocations"),
        }
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_number in range(args.rounds):
            for name, (command, cwd, body, path) in targets.items():
                url = f"http://127.0.0.1:{port}{path}"
                # `mlflow models serve` starts `uvicorn` from PATH: its own venv's
                server_env = {**env, "PATH": f"{MLFLOW_VENV / 'bin'}{os.pathsep}{env['PATH']}"} if name == "mlflow" else env
                with _server(command, url, body, cwd, server_env):
                    for connections in (32, 128):
                        _wrk(wrk, url, body, connections, 2, work)  # warm-up
                        measured = _wrk(wrk, url, body, connections, args.duration, work)
                        results.setdefault((name, connections), []).append(measured)
                        print(f"round {round_number + 1} {name:24} c={connections:<4} {measured['rps']:8.0f} req/s "
                              f"p50 {measured['p50']:6.2f} ms p99 {measured['p99']:6.2f} ms", flush=True)
    medians = {key: {m: statistics.median(r[m] for r in runs) for m in ("rps", "p50", "p99", "errors")}
               for key, runs in results.items()}
    ratios = {
        "conveyor / mlflow, c=32 (floor 10)": medians[("conveyor", 32)]["rps"] / medians[("mlflow", 32)]["rps"],
        "conveyor / bare starlette, c=32 (floor 0.8)":
            medians[("conveyor", 32)]["rps"] / medians[("bare starlette", 32)]["rps"],
        "batching on / off, c=128 (floor 1.5)":
            medians[("conveyor", 128)]["rps"] / medians[("conveyor, batching off", 128)]["rps"],
    }
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "".join(f"| {name} | {c} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['errors']:.0f} |\n"
                   for (name, c), m in sorted(medians.items(), key=lambda item: (item[0][1], item[0][0])))
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write(
            f"\n## Serving: Conveyor vs MLflow vs bare Starlette ({stamp})\n\n"
            f"Command: `python benchmarks/serving.py --rounds {args.rounds} --duration {args.duration} "
            f"--workers {args.workers}` (or `make bench-serving`)\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"wrk -t2, single-row JSON requests, {args.workers} worker(s) each, medians of {args.rounds} rounds.\n\n"
            "| server | connections | requests/s | p50 ms | p99 ms | non-2xx |\n|---|---|---|---|---|---|\n" + rows
            + "\n" + "".join(f"- {label}: **{ratio:.2f}**\n" for label, ratio in ratios.items())
        )


if __name__ == "__main__":
    main()
