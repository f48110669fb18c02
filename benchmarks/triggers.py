"""What the triggers cost: a commit with and without the post-commit hook, a signed push's
answer from the webhook receiver, and a flood of pushes drained one run at a time.

The repository has no conveyor.yaml, so each background run the hook or the
webhook starts stops at once with its config error: what is measured is the
trigger, not the line. Results are appended to `benchmarks/RESULTS.md`.

    python benchmarks/triggers.py [--commits N] [--flood N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conveyor.triggers.hooks import install
from conveyor.triggers.watch import Watcher
from conveyor.triggers.webhook import serve

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECRET = "benchmark-secret"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@conveyor.invalid",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@conveyor.invalid"}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, env=ENV, check=True, capture_output=True, text=True).stdout.strip()


def _repo(root: Path) -> Path:
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "file.txt").write_text("0\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "start")
    return root


def _commit_ms(root: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        (root / "file.txt").write_text(f"{i + 1}\n")
        _git(root, "add", "file.txt")
        started = time.perf_counter()
        _git(root, "commit", "-q", "-m", f"change {i}")
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.3)  # let the background run the hook started finish, so commits do not compete with it
    return times


def _post(url: str, commit: str) -> float:
    body = json.dumps({"ref": "refs/heads/main", "after": commit}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=15)
    parser.add_argument("--flood", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        plain = _commit_ms(_repo(Path(tmp) / "plain"), args.commits)
        hooked_root = _repo(Path(tmp) / "hooked")
        install(hooked_root, "post-commit", [sys.executable, "-m", "conveyor"])
        hooked = _commit_ms(hooked_root, args.commits)

        watched = _repo(Path(tmp) / "watched")
        (watched / ".conveyor").mkdir()
        commit = _git(watched, "rev-parse", "HEAD")
        ran: list[float] = []
        watcher = Watcher(watched, env=ENV, on_outcome=lambda _o: ran.append(time.perf_counter()))
        stop = threading.Event()
        bound: dict[str, int] = {}
        listening = threading.Event()
        thread = threading.Thread(target=serve, args=(watcher, "127.0.0.1", 0, SECRET, stop),
                                  kwargs={"on_listen": lambda _h, p: (bound.update(port=p), listening.set())},
                                  daemon=True)
        thread.start()
        listening.wait(60)
        url = f"http://127.0.0.1:{bound['port']}/"
        single = [_post(url, commit) for _ in range(5)]
        while len(ran) < 5:
            time.sleep(0.05)
        ran.clear()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.flood) as pool:
            flood = list(pool.map(lambda _i: _post(url, commit), range(args.flood)))
        accepted_s = time.perf_counter() - started
        while len(ran) < args.flood:
            time.sleep(0.05)
        drained_s = time.perf_counter() - started
        stop.set()
        thread.join(timeout=30)

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fmt = ", ".join
    text = f"""
## Triggers: hook, webhook ({now})

Command: `python benchmarks/triggers.py --commits {args.commits} --flood {args.flood}` (or `make bench-triggers`)
Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.
Each background run stops at once (the repository has no conveyor.yaml): the trigger is measured, not the line.

| what | median | all (ms) |
|---|---|---|
| `git commit`, no hook | {statistics.median(plain):.1f} ms | {fmt(f"{t:.0f}" for t in plain)} |
| `git commit`, Conveyor's post-commit hook | {statistics.median(hooked):.1f} ms | {fmt(f"{t:.0f}" for t in hooked)} |
| signed GitHub push, answered (queued on disk) | {statistics.median(single):.1f} ms | {fmt(f"{t:.1f}" for t in single)} |
| same, {args.flood} at once | {statistics.median(flood):.1f} ms | max {max(flood):.1f} |

Flood of {args.flood} pushes: all answered 202 in {accepted_s:.2f} s; all {args.flood} runs done, one at a time,
{drained_s:.1f} s after the first was sent.
"""
    print(text)
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
