"""The container target under load: model-only deploys hot-swapped into one running container.

The iris example with `deploy.target: container` is deployed once (a container
started from its image); then the script alternates `conveyor deploy iris@2`
and `conveyor deploy iris@1` (`deploy.target: container`) while client threads send
predictions without pause, each on a new connection. Each deploy packages the
version (a model-only rebuild) and hot-swaps it into the running container.
Reported: requests served, failures (must be 0), containers started after the
first (must be 0), and per deploy the command's wall time and the time until
every answer came from the new version, measured from the clients' side.
Appended to `benchmarks/RESULTS.md`. Needs podman (see scripts/containers.sh).

    python benchmarks/container_swap.py [--cycles 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
BODY = json.dumps({"rows": [[5.1, 3.5, 1.4, 0.2]]}).encode()
CLIENTS = 3


class Load:
    """Client threads; every answer is (version, received at)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[int, float]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
                else:
                    self.answers.append((int(response.getheader("x-model-version") or 0), time.monotonic()))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _sh(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return done.stdout


def _free_pair() -> int:
    for port in range(18100, 18900, 2):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    sys.exit("no two free ports in 18100-18900")


def _all_new_after(load: Load, version: int, since: float) -> float:
    """Seconds from `since` until the last answer from another version (0 when none came after)."""
    others = [at for v, at in list(load.answers) if at >= since and v != version]
    return (max(others) - since) if others else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    for line in _sh(["bash", str(REPO / "scripts" / "containers.sh")], REPO).splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value.strip("'")
    conveyor = [sys.executable, "-m", "conveyor"]
    deployment = f"bench-swap-{os.getpid()}"
    port = _free_pair()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-swap-") as tmp:
        root = Path(tmp) / "iris"
        _sh([*conveyor, "init", str(root), "--example", "iris"], Path(tmp))
        config = root / "conveyor.yaml"
        text = config.read_text()
        start = text.index("deploy:\n")
        end = text.index("\n\n", start)
        config.write_text(text[:start] + f"deploy:\n  target: container\n  port: {port}\n"
                          f"  container: {{name: {deployment}}}" + text[end:])
        _sh(["git", "commit", "-qam", "deploy to a container"], root)
        _sh([*conveyor, "run"], root)  # iris@1 in a new container
        params = root / "params.yaml"
        params.write_text(params.read_text().replace("C: 1.0", "C: 0.5"))
        _sh(["git", "commit", "-qam", "C 0.5"], root)
        _sh([*conveyor, "run", "--no-deploy"], root)  # iris@2 registered, production
        walls: list[float] = []
        to_all: list[float] = []
        try:
            with Load(port) as load:
                time.sleep(1.0)
                for n in range(args.cycles):
                    version = 2 if n % 2 == 0 else 1
                    started = time.monotonic()
                    _sh([*conveyor, "deploy", f"iris@{version}"], root)  # deploy.target: container
                    done = time.monotonic()
                    walls.append(done - started)
                    time.sleep(1.0)  # answers after the deploy returned: all must come from the new version
                    late = [v for v, at in list(load.answers) if at > done + 0.05 and v != version]
                    if late:
                        load.failures.append(f"{len(late)} answers from another version after deploying v{version}")
                    to_all.append(_all_new_after(load, version, started))
            containers = _sh(["podman", "ps", "-a", "-q", "--filter", f"label=io.conveyor.deployment={deployment}"],
                             root).split()
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "5", *_sh(
                ["podman", "ps", "-a", "-q", "--filter", f"label=io.conveyor.deployment={deployment}"], root).split()],
                capture_output=True, check=False)
    served, failures = len(load.answers), load.failures
    load_avg = os.getloadavg()[0]
    report = f"""
## Container target: model-only deploys hot-swapped under load ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)

Command: `python benchmarks/container_swap.py --cycles {args.cycles}`
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; podman; load average \
{load_avg:.1f} at the end. {CLIENTS} client threads, a new connection per request.

| measure | value |
|---|---|
| requests served | {served} |
| failed requests (must be 0) | {len(failures)} |
| containers at the end (must be 1: every deploy was a hot swap) | {len(containers)} |
| `conveyor deploy` (`deploy.target: container`), wall time: median (max) | {statistics.median(walls):.2f} s ({max(walls):.2f} s) |
| from the deploy's start until every answer came from the new version: median (max) | \
{statistics.median(to_all):.2f} s ({max(to_all):.2f} s) |

The wall time includes packaging the version (a model-only image rebuild, recorded in its lineage)
before the swap.
"""
    print(report)
    if failures:
        print("failures:", *failures[:10], sep="\n  ")
    with RESULTS.open("a", encoding="utf-8") as results:
        results.write(report)
    sys.exit(1 if failures or len(containers) != 1 else 0)


if __name__ == "__main__":
    main()
