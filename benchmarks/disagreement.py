"""What comparing a canary with stable costs a request: latency of POST /predict with no split, a canary
answering every request, the same canary compared with stable (`max_disagreement`), and a shadow.

One in-process server (uvicorn on a free loopback port, one worker, micro-batching as configured by
default), one client sending requests one after the other, so each mode's latency is what one request
pays. Appends a table to `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from conveyor.model import read_metadata, save_model
from conveyor.registry import Registry
from conveyor.serving.app import ModelSource, ServingApp
from conveyor.serving.metrics import ServingMetrics
from conveyor.serving.rollout import counts_from_metrics
from conveyor.store import ArtifactStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
TOKEN = "bench-token"
MODES: dict[str, dict[str, Any] | None] = {
    "no split (stable answers)": None,
    "canary 100%": {"candidate": "iris@2", "share": 100},
    "canary 100%, compared with stable": {"candidate": "iris@2", "share": 100, "compare": True},
    "shadow 100% (compared after answering)": {"candidate": "iris@2", "share": 100, "mode": "shadow"},
}


def _register(registry: Registry, store: ArtifactStore, root: Path, model: Any, n: int) -> None:
    X, _ = load_iris(return_X_y=True)
    path = save_model(model, root / f"m{n}", X[:5])
    registry.register(name="iris", digest=store.put(path), flavor="sklearn", signature=read_metadata(path).signature,
                      metrics={}, params={}, lineage={}, gates=[], run_id=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode")
    args = parser.parse_args()
    X, y = load_iris(return_X_y=True)
    rows = X[::5].tolist()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry, store = Registry(f"sqlite:///{root}/registry.db"), ArtifactStore(root / "cache")
        _register(registry, store, root, LogisticRegression(max_iter=1000).fit(X, y), 1)
        _register(registry, store, root, DummyClassifier(strategy="constant", constant=0).fit(X, y), 2)
        registry.set_alias("iris", "production", 1, actor="bench", reason="bench")
        source = ModelSource(registry, store, root / "models", "iris@production")
        metrics = ServingMetrics()
        app = ServingApp(source, token=TOKEN, served=source.load(source.resolve("iris@1")), metrics=metrics)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                for name, split in MODES.items():
                    body = split or {"share": 0}
                    client.post("/-/traffic", json=body, headers={"authorization": f"Bearer {TOKEN}"}).raise_for_status()
                    for row in rows * 3:  # warm up
                        client.post("/predict", json={"rows": [row]}).raise_for_status()
                    took = []
                    started = time.perf_counter()
                    for i in range(args.requests):
                        sent = time.perf_counter()
                        client.post("/predict", json={"rows": [rows[i % len(rows)]]}).raise_for_status()
                        took.append((time.perf_counter() - sent) * 1000)
                    elapsed = time.perf_counter() - started
                    took.sort()
                    lines.append(f"| {name} | {statistics.median(took):.2f} ms | {took[int(0.99 * len(took))]:.2f} ms "
                                 f"| {args.requests / elapsed:.0f} |")
                    print(lines[-1], flush=True)
                time.sleep(1.0)  # the last shadow copies
                text = metrics.render()[0].decode()
                canary, shadow = (counts_from_metrics(text, "iris", 2, shadow=s) for s in (False, True))
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
            registry.close()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(RESULTS, "a", encoding="utf-8") as results:
        results.write(
            f"\n## Disagreement with stable: what comparing costs a request ({stamp})\n\n"
            f"Command: `python benchmarks/disagreement.py --requests {args.requests}`\n"
            f"Machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, Python "
            f"{platform.python_version()}; in-process server, one client, one request at a time, one row each.\n"
            "Candidate: a constant classifier (always class 0) beside a logistic regression.\n\n"
            "| mode | median | p99 | requests/s |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
            f"Recorded: canary compared {canary.compared} (disagreement {canary.disagreement() or 0:.1%}), "
            f"shadow compared {shadow.compared} (disagreement {shadow.disagreement() or 0:.1%}).\n"
        )


if __name__ == "__main__":
    main()
