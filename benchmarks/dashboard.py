"""Dashboard page loads on a seeded project: 10,000 runs and 1,000 versions of one model.

Seeds a SQLite registry (through `Registry`, as the line writes it) and a run
store, starts `conveyor ui --port 0`, and times N loads of each page over HTTP
(median and range). Beside them, in-process, what the same lists cost
unpaginated (every run record, every version), which is what pagination
saves. Results are appended to `benchmarks/RESULTS.md`.

    python benchmarks/dashboard.py [--runs 10000] [--versions 1000] [--loads 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from conveyor.dashboard.reader import RegistryReader
from conveyor.dashboard.runs import page_of_runs
from conveyor.registry import Registry
from conveyor.runs import Run, RunStore, Step

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CONFIG = "project: bench\nstages:\n  train:\n    cmd: 'true'\n    outs: [model/]\nmodel:\n  name: iris\n  path: model/\n"


def seed(root: Path, runs: int, versions: int) -> str:
    """A project with `runs` run records and `versions` versions of `iris`; returns the registry URL."""
    (root / "conveyor.yaml").write_text(CONFIG)
    url = f"sqlite:///{root / '.conveyor' / 'registry.db'}"
    with Registry(url) as registry:
        for n in range(1, versions + 1):
            registry.register(
                name="iris", digest=f"{n:064x}", flavor="sklearn",
                signature={"inputs": [{"name": f"f{i}", "type": "double"} for i in range(4)]},
                metrics={"accuracy": 0.9 + (n % 50) / 1000, "f1_macro": 0.88 + (n % 40) / 1000, "loss": 0.3 - n / 1e5},
                params={"train.C": 1.0 / n, "train.max_iter": 200},
                lineage={"git": {"commit": f"{n:040x}", "branch": "main", "dirty": False},
                         "stages": {"train": {"deps": {"data/iris.csv": f"{n:064x}"}}}},
                gates=[{"gate": "accuracy >= 0.9", "metric": "accuracy", "actual": 0.93, "required": ">= 0.9",
                        "passed": True, "detail": "ok"}],
                run_id=f"run-{n}",
            )
            if n % 10 == 0:
                registry.set_alias("iris", "production", n, actor="bench", reason=f"promoted v{n}", kind="line")
    store = RunStore(root / ".conveyor" / "runs")
    start = 1_764_590_400.0
    for i in range(runs):
        t = start + i * 60
        run_id = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y%m%d-%H%M%S000") + f"-{i % 65536:04x}"
        steps = [Step(f"stage:{name}", "stage", "ran", t, 1.0, 0, "ran", f"stage-{name}.log")
                 for name in ("prepare", "train")]
        steps += [Step("tests", "tests", "ran", t, 3.0, 0, "6 passed"),
                  Step("gates", "gates", "passed", t, 0.2, None, "2 of 2 passed", data={"results": []})]
        store.save(Run(id=run_id, commit=f"{i:040x}", branch="main", dirty=False, trigger="hook", started_at=t,
                       pid=1, status="passed", finished_at=t + 5.2, steps=steps))
    return url


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms"


def _range_ms(samples: list[float]) -> str:
    return f"{min(samples) * 1000:.0f}–{max(samples) * 1000:.0f}"


def _time(action: object, loads: int) -> list[float]:
    samples = []
    for _ in range(loads):
        begin = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - begin)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=1_000)
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="conveyor-bench-ui-") as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        began = time.perf_counter()
        url = seed(root, args.runs, args.versions)
        print(f"seeded {args.runs} runs and {args.versions} versions in {time.perf_counter() - began:.1f}s")

        out = root.parent / "ui.out"
        with open(out, "wb") as sink:
            process = subprocess.Popen([sys.executable, "-m", "conveyor", "ui", "--port", "0"], cwd=root,
                                       env={**os.environ, "CONVEYOR_REGISTRY_URL": url}, stdout=sink,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            base = ""
            while not base:
                lines = [ln for ln in out.read_text().splitlines() if ln.startswith("Dashboard at ")]
                if lines:
                    base = lines[0].split()[2]
                elif process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"conveyor ui did not start:\n{out.read_text()}")
                else:
                    time.sleep(0.05)
            newest = page_of_runs(RunStore(root / ".conveyor" / "runs"), 1, 1)[0][0].id
            pages = ["/runs", f"/runs?page={args.runs // 50}", "/api/runs", f"/runs/{newest}", "/models",
                     "/models/iris", f"/models/iris?page={args.versions // 50}", "/api/models/iris",
                     f"/models/iris/{args.versions // 2}", f"/models/iris/{args.versions}?against=1", "/deployments"]
            rows = []
            with httpx.Client(base_url=base, timeout=60) as client:
                for path in pages:
                    client.get(path).raise_for_status()  # warm-up
                    samples = _time(lambda: client.get(path).raise_for_status(), args.loads)
                    rows.append((path, samples))
                    print(f"{path:40} {_median_ms(samples)}")
        finally:
            process.terminate()
            process.wait(15)

        store = RunStore(root / ".conveyor" / "runs")
        side = [
            ("runs: one page (50 records)", _time(lambda: page_of_runs(store, 1, 50), args.loads)),
            (f"runs: all {args.runs} records", _time(lambda: store.recent(limit=args.runs), max(3, args.loads // 2))),
        ]
        with RegistryReader(url) as reader:
            side.append(("versions: one page (50)", _time(lambda: reader.versions("iris", 1, 50), args.loads)))
        with Registry(url) as registry:
            side.append((f"versions: all {args.versions}", _time(lambda: registry.versions("iris"), args.loads)))
        for name, samples in side:
            print(f"{name:40} {_median_ms(samples)}")

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## Dashboard page loads ({now})\n",
        f"Command: `python benchmarks/dashboard.py --runs {args.runs} --versions {args.versions} --loads {args.loads}` "
        "(or `make bench-dashboard`)",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; SQLite registry, "
        f"{args.runs} runs, {args.versions} versions of one model (3 metrics each); median of {args.loads} loads "
        "over HTTP on loopback after one warm-up, `conveyor ui` in its own process.\n",
        "| page | median | range (ms) |", "|---|---|---|",
        *[f"| `{path}` | {_median_ms(s)} | {_range_ms(s)} |" for path, s in rows],
        "\nPaginated vs unpaginated, the same lists read in-process (what a page without pagination would "
        "have to read before rendering anything):\n",
        "| list | median | range (ms) |", "|---|---|---|",
        *[f"| {name} | {_median_ms(s)} | {_range_ms(s)} |" for name, s in side],
    ]
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
