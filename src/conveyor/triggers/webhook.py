"""`conveyor watch --webhook HOST:PORT`: GitHub and GitLab push events queue the line for the pushed commit.

Authentication first: GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the raw
body) or GitLab's `X-Gitlab-Token`, both compared in constant time; anything
else is 401 and nothing is queued. A verified event is written to the on-disk
queue before it is answered, so an accepted event survives a crash; one worker
runs the queue in arrival order, one line at a time. Only a hex-checked commit
id taken from the payload ever reaches git, as an argument, never a shell.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.store import atomic_write_text
from conveyor.triggers.watch import SHA, Watcher

MAX_BODY_BYTES = 5 * 1024 * 1024
"""Largest event body accepted (GitHub caps payloads at 25 MB; a push rarely needs more than a few KB)."""

_ZERO = "0" * 40
_counter = itertools.count()
_counter_lock = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    status: int  # HTTP status to answer
    message: str
    commit: str | None = None  # set when the event queues a run
    source: str = ""  # github | gitlab


def _json(body: bytes) -> dict[str, Any] | Verdict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Verdict(400, "body is not JSON")
    if not isinstance(data, dict):
        return Verdict(400, "body is not a JSON object")
    return data


def _push(data: dict[str, Any], sha_field: str, branch: str, source: str) -> Verdict:
    ref = data.get("ref")
    if not isinstance(ref, str):
        return Verdict(400, "field 'ref' is missing or not a string")
    if ref != f"refs/heads/{branch}":
        return Verdict(202, f"ignored: {ref} is not refs/heads/{branch}")
    commit = data.get(sha_field)
    if commit is None or commit == _ZERO:
        return Verdict(202, "ignored: the push deleted the branch")
    if not isinstance(commit, str) or not SHA.fullmatch(commit):
        return Verdict(400, f"field '{sha_field}' is not a full commit id")
    return Verdict(202, f"queued {commit[:10]}", commit=commit, source=source)


def judge(headers: Mapping[str, str], body: bytes, secret: str, branch: str) -> Verdict:
    """What to answer an event, and the commit to queue when it is a verified push to `branch`.

    `headers` has lower-case names.
    """
    def header(name: str) -> str | None:
        return headers.get(name.lower())

    github_event = header("X-GitHub-Event")
    gitlab_event = header("X-Gitlab-Event")
    if github_event is not None:
        signature = header("X-Hub-Signature-256") or ""
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return Verdict(401, "missing or bad X-Hub-Signature-256")
        if github_event == "ping":
            return Verdict(200, "pong")
        if github_event != "push":
            return Verdict(202, f"ignored: event '{github_event}' is not a push")
        data = _json(body)
        return data if isinstance(data, Verdict) else _push(data, "after", branch, "github")
    if gitlab_event is not None:
        token = header("X-Gitlab-Token") or ""
        if not hmac.compare_digest(token.encode(), secret.encode()):
            return Verdict(401, "missing or bad X-Gitlab-Token")
        if gitlab_event != "Push Hook":
            return Verdict(202, f"ignored: event '{gitlab_event}' is not a push")
        data = _json(body)
        return data if isinstance(data, Verdict) else _push(data, "checkout_sha", branch, "gitlab")
    return Verdict(400, "not a GitHub or GitLab event (no X-GitHub-Event or X-Gitlab-Event header)")


class Queue:
    """Events waiting to run, one JSON file each, named so they sort in arrival order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, commit: str, source: str) -> Path:
        with _counter_lock:
            name = f"{time.time_ns():020d}-{next(_counter):06d}.json"
        path = self.directory / name
        atomic_write_text(path, json.dumps({"commit": commit, "source": source, "received": time.time()}))
        return path

    def pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a flood of pushes waits in the backlog instead of being refused and retried


def _handler(secret: str, branch: str, queue: Queue, wake: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "conveyor-webhook"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            print(f"webhook: {self.address_string()} {format % args}", file=sys.stderr, flush=True)

        def _answer(self, status: int, message: str) -> None:
            data = (json.dumps({"status": status, "message": message}) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._answer(411, "Content-Length is required")
            if length < 0 or length > MAX_BODY_BYTES:
                return self._answer(413, f"body over {MAX_BODY_BYTES} bytes")
            body = self.rfile.read(length)
            verdict = judge({k.lower(): v for k, v in self.headers.items()}, body, secret, branch)
            if verdict.commit is not None:
                queue.put(verdict.commit, verdict.source)  # on disk before the sender hears "queued"
                wake.set()
            self._answer(verdict.status, verdict.message)

        def do_GET(self) -> None:
            self._answer(405, "POST push events here")

    return Handler


def serve(watcher: Watcher, host: str, port: int, secret: str, stop: threading.Event,
          on_listen: Any = None) -> None:
    """Receive events on HOST:PORT and run the queue, one commit at a time, until `stop` is set."""
    if not secret:
        raise ConveyorError("CONVEYOR_WEBHOOK_SECRET is not set; set it to the secret (GitHub) or token (GitLab) "
                            "the webhook is configured with")
    queue = Queue(watcher.state_dir / "queue")
    wake = threading.Event()
    try:
        server = _Server((host, port), _handler(secret, watcher.branch, queue, wake))
    except OSError as exc:
        raise ConveyorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    receiver = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    receiver.start()
    if on_listen is not None:
        on_listen(server.server_address[0], server.server_address[1])
    try:
        while not stop.is_set():
            _drain(watcher, queue)
            if watcher.schedule_due(time.time()):
                watcher.on_outcome(watcher.run_commit(watcher.tip(), trigger="schedule", force=True))
            wake.wait(1.0)
            wake.clear()
    finally:
        server.shutdown()
        server.server_close()


def _drain(watcher: Watcher, queue: Queue) -> None:
    for path in queue.pending():
        try:
            commit = str(json.loads(path.read_text(encoding="utf-8"))["commit"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a corrupt entry is dropped, not retried forever
            continue
        try:
            if watcher.remote:
                watcher.tip()  # fetch, so the pushed commit is here
            watcher.on_outcome(watcher.run_commit(commit, trigger="webhook"))
        except ConveyorError as exc:
            print(f"webhook: {commit[:10]}: {exc}", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
