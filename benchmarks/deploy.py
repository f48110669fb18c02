"""Deploy without downtime, measured: swaps and rollbacks under continuous load.

A two-worker local server (started the way `conveyor deploy` starts it)
answers four client threads that open a new connection per request, while
the script cycles: deploy a new version (`ensure_serving`, as `conveyor
deploy` and the line do), roll back (`conveyor rollback`'s library path: the
alias moves back and the live server is told), and every third cycle a move
of the alias alone that the server follows on its own. It ends with a rolling
restart. Reported: requests served, failures (must be 0), and the time until
100 % of the answers came from the new version (deploy) and the old one
(rollback), measured from the clients' side. Appended to
`benchmarks/RESULTS.md`.

    python benchmarks/deploy.py [--cycles 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BODY = json.dumps({"rows": [[5.1, 3.5, 1.4, 0.2]]}).encode()
CLIENTS = 4


class Load:
    """Client threads; every answer is (version, sent, received)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[int, float, float]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
                self.answers.append((int(response.getheader("x-model-version") or 0), sent, time.monotonic()))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def time_to_all(self, target: int, since: float) -> float | None:
        """Seconds from `since` until every answer (to a request sent after it) came from `target`."""
        after = [(v, received) for v, sent, received in list(self.answers) if sent >= since]
        stale = [received for v, received in after if v != target]
        fresh = [received for v, received in after if v == target]
        if not fresh:
            return None
        return (max(stale) if stale else min(fresh)) - since


def _publish(registry, store, root: Path, C: float) -> int:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from conveyor.model import read_metadata, save_model

    X, y = load_iris(return_X_y=True)
    path = save_model(LogisticRegression(C=C, max_iter=1000).fit(X, y), root / "build" / str(C), X[:5])
    version, _ = registry.register(name="iris", digest=store.put(path), flavor="sklearn",
                                   signature=read_metadata(path).signature, metrics={}, params={}, lineage={},
                                   gates=[], run_id=None)
    return int(version.version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30)
    args = parser.parse_args()

    from conveyor.deploy import local
    from conveyor.project import Project
    from conveyor.promotion import rollback
    from conveyor.registry import Registry
    from conveyor.store import ArtifactStore

    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-deploy-"))
    (root / "conveyor.yaml").write_text(
        "project: iris\nstages:\n  train: {cmd: 'true', outs: [model/]}\nmodel: {name: iris, path: model/}\n")
    project = Project(root)
    registry = Registry(project.default_registry_url)
    store = ArtifactStore(project.cache_dir)
    versions = [_publish(registry, store, root, C) for C in (1.0, 0.5, 0.2, 0.1, 0.05)]
    registry.set_alias("iris", "production", versions[0], actor="bench", reason="start", kind="promote")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def ensure() -> None:
        local.ensure_serving(project, "iris@production", host="127.0.0.1", port=port,
                             registry_url=project.default_registry_url, workers=2)

    ensure()
    load = Load(port)
    deploys: list[float] = []
    rollbacks: list[float] = []
    follows: list[float] = []
    started = time.monotonic()
    for thread in load.threads:
        thread.start()
    try:
        time.sleep(2.0)
        for cycle in range(args.cycles):
            target = versions[1 + cycle % (len(versions) - 1)]
            since = time.monotonic()
            registry.set_alias("iris", "production", target, actor="bench", reason="deploy", kind="promote")
            if cycle % 3 == 2:  # the alias alone: the server follows it (deploy.follow_interval_s)
                time.sleep(2.5)
                measured = load.time_to_all(target, since)
                if measured is not None:
                    follows.append(measured)
            else:
                ensure()
                time.sleep(1.0)
                measured = load.time_to_all(target, since)
                if measured is not None:
                    deploys.append(measured)
            since = time.monotonic()
            rollback(registry, "iris", "production", actor="bench", reason="benchmark rollback")
            ensure()  # what `conveyor rollback iris` does when the server follows the alias
            time.sleep(1.0)
            measured = load.time_to_all(versions[0], since)
            if measured is not None:
                rollbacks.append(measured)
        local.restart_workers(project)
        time.sleep(2.0)
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        local.stop(project)
        registry.close()
        shutil.rmtree(root, ignore_errors=True)

    def summary(values: list[float]) -> str:
        if not values:
            return "n/a"
        ordered = sorted(values)
        return f"median {statistics.median(ordered):.3f} s, max {ordered[-1]:.3f} s (n={len(ordered)})"

    served, failed = len(load.answers), len(load.failures)
    lines = [
        f"## Deploy without downtime (issue 5) ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/deploy.py --cycles {args.cycles}` (or `make bench-deploy`)",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"2 workers, {CLIENTS} client threads, a new connection per request.",
        f"Scenario: {args.cycles} cycles of deploy + rollback (one in three by moving the alias alone), "
        "then a rolling restart.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests served | {served} in {elapsed:.0f} s ({served / elapsed:.0f}/s) |",
        f"| failed requests | **{failed}** |",
        f"| deploy: time to 100 % on the new version | {summary(deploys)} |",
        f"| rollback: time to 100 % on the old version (floor 2 s) | {summary(rollbacks)} |",
        f"| alias moved alone, followed (1 s interval) | {summary(follows)} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if load.failures:
        print("failures:", load.failures[:10], file=sys.stderr)
    with open(RESULTS, "a", encoding="utf-8") as results:
        results.write("\n" + text)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
