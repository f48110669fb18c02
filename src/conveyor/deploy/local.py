"""The local target: the model server as a managed background process.

`conveyor run` calls `ensure_serving` after a promotion: a server this project
started is told to reload (it swaps versions without dropping a request);
otherwise a new one is started, detached, and waited on until /readyz answers.
What is running is recorded in `.conveyor/server.json` (mode 0600: it holds
the management token) from the moment it is started, as "starting" and then
"ready" with the digest it serves: a start that fails or is interrupted stops
its server and removes the record, and a record left by a killed run is
cleaned up by the next one. Only the standard library is used here, so that
`conveyor run` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor import defaults
from conveyor.auth import load_or_create_token
from conveyor.exceptions import ServingError
from conveyor.processes import alive
from conveyor.project import Project
from conveyor.serving.server import url_for
from conveyor.store import atomic_write_text

TOKEN_ENV = "CONVEYOR_SERVER_TOKEN"
"""Environment variable that hands the management token to `conveyor serve` (never argv: `ps` shows argv)."""

PREDICT_TOKEN_ENV = "CONVEYOR_PREDICT_TOKEN"
"""Environment variable that hands `conveyor serve` the token prediction requests must carry (if any)."""

REGISTRY_ENV = "CONVEYOR_REGISTRY_URL"
"""Environment variable that tells `conveyor serve` which registry to read (it may hold a password)."""

STOP_TIMEOUT_S = 20.0
"""How long `stop` waits after SIGTERM (the workers drain, the supervisor gives them 10 s) before it
sends SIGKILL to the server's whole process group."""


ABORT_TIMEOUT_S = 2.0
"""How long an interrupted or failed start waits after SIGTERM before it sends SIGKILL to its half-started server."""

_STARTING, _READY = "starting", "ready"


@dataclass(frozen=True)
class Deployment:
    """A model version live on the local server.

    `digest` is the artifact the server holds in memory: a version number alone
    does not name an artifact (a recreated registry numbers from 1 again).
    """

    ref: str
    name: str
    version: int
    digest: str
    url: str
    pid: int
    started_at: str


class _Unreachable(Exception):
    pass


def _exchange(host: str, port: int, method: str, path: str, *, headers: dict[str, str], payload: bytes,
              timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with our own server over a plain socket: status and body.

    Not http.client: its import (the email package) alone costs a cached
    `conveyor run`, which asks the live server what it serves, about 12 ms of
    its ~100. The peer is always Conveyor's server (uvicorn), which answers with
    Content-Length or chunks and closes the connection when asked to.
    """
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url_for(host, port).split('//', 1)[1]}", "Connection: close",
             f"Content-Length: {len(payload)}", *(f"{name}: {value}" for name, value in headers.items())]
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
            received = []
            while chunk := conn.recv(65536):
                received.append(chunk)
    except OSError as exc:
        raise _Unreachable(str(exc) or type(exc).__name__) from None
    head, separator, body = b"".join(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if not separator or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _Unreachable(f"not an HTTP answer: {status_line[:80]!r}")
    fields = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif fields.get("content-length", "").isdigit():
        body = body[:int(fields["content-length"])]
    return int(parts[1]), body


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked transfer (RFC 9112 section 7.1); trailers are ignored."""
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def _request(host: str, port: int, method: str, path: str, *, token: str | None = None,
             timeout: float = 2.0, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one request; `_Unreachable` if nothing answers over HTTP."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = b""
    if body is not None:
        headers["Content-Type"] = "application/json"
        payload = json.dumps(body).encode()
    status, raw = _exchange(host, port, method, path, headers=headers, payload=payload, timeout=timeout)
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:200].decode("utf-8", "replace")}
    return status, answer if isinstance(answer, dict) else {"error": str(answer)}


def _is_our_server(pid: int) -> bool:
    """False when the pid now belongs to some other program (pids are reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"conveyor" in b" ".join(argv) and b"serve" in argv


_FIELDS = (("pid", int), ("port", int), ("host", str), ("token", str), ("ref", str), ("started_at", str),
           ("registry", str))
_SERVED_FIELDS = (("name", str), ("version", int), ("digest", str))


def _valid_state(raw: object) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    # Records written before these fields existed: a ready server whose digest /version will tell.
    state = {"status": _READY, "digest": "", "registry": "", **raw}
    fields = _FIELDS + (_SERVED_FIELDS if state["status"] == _READY else ())
    if state["status"] not in (_STARTING, _READY) or not all(isinstance(state.get(k), kind) for k, kind in fields):
        return None
    return state


def _read_state(project: Project) -> dict[str, Any] | None:
    try:
        raw = json.loads(project.server_state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raw = None
    state = _valid_state(raw)
    if state is None:
        project.server_state_path.unlink(missing_ok=True)  # a corrupt record is no record
    return state


def _write_state(project: Project, state: dict[str, Any]) -> None:
    atomic_write_text(project.server_state_path, json.dumps(state, indent=2) + "\n")
    os.chmod(project.server_state_path, 0o600)


def _served(model: object) -> dict[str, Any] | None:
    """name, version and digest from a model description (/version, /readyz, reload), or None if malformed."""
    if not isinstance(model, dict) or not all(isinstance(model.get(k), kind) for k, kind in _SERVED_FIELDS):
        return None
    return {k: model[k] for k, _ in _SERVED_FIELDS}


def _fingerprint(registry_url: str) -> str:
    """Which registry a server reads, without writing its URL (it may hold a password) to disk."""
    return hashlib.sha256(registry_url.encode()).hexdigest()[:16]


def _deployment(state: dict[str, Any]) -> Deployment:
    return Deployment(
        ref=state["ref"], name=state["name"], version=int(state["version"]), digest=state["digest"],
        url=url_for(state["host"], int(state["port"])), pid=int(state["pid"]), started_at=state["started_at"],
    )


def _live_state(project: Project) -> dict[str, Any] | None:
    """The recorded server (ready or starting) if its process still runs; a stale record is removed."""
    state = _read_state(project)
    if state is None:
        return None
    if alive(state["pid"]) and _is_our_server(state["pid"]):
        return state
    project.server_state_path.unlink(missing_ok=True)
    return None


def current(project: Project) -> Deployment | None:
    """What the local server of `project` serves now, or None if none runs (or it is still starting)."""
    state = _live_state(project)
    if state is None:
        return None
    try:
        status, body = _request(state["host"], state["port"], "GET", "/version", timeout=1.0)
    except _Unreachable:
        status, body = 0, {}
    served = _served(body) if status == 200 else None
    if served is not None and (state["status"] != _READY or any(state.get(k) != v for k, v in served.items())):
        # reloaded by someone else, or ready although the run that started it did not see it
        state = {**state, **served, "status": _READY}
        _write_state(project, state)
    return _deployment(state) if state["status"] == _READY else None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kill_group(pid: int) -> None:
    """SIGKILL the server and its workers (it was started in a session, and so a process group, of its own)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout_s):
            _kill_group(pid)
            _wait_gone(pid, 5.0)
    except ProcessLookupError:
        pass


def stop(project: Project, *, timeout_s: float = STOP_TIMEOUT_S) -> Deployment | None:
    """Stop the local server (SIGTERM, then SIGKILL after `timeout_s`); return what it served.

    A server that was still starting is stopped too, and None returned: it served nothing.
    """
    state = _live_state(project)
    if state is None:
        return None
    _terminate(state["pid"], timeout_s)
    project.server_state_path.unlink(missing_ok=True)
    return _deployment(state) if state["status"] == _READY else None


def _log_tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    lines = text.rstrip().splitlines()[-defaults.LOG_TAIL_LINES:]
    return "\n".join(f"  {line}" for line in lines) or "  (the log is empty)"


def _check_port_free(host: str, port: int) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServingError(f"cannot serve on host '{host}': {exc.strerror}; set deploy.host to an address of this machine") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServingError(
                    f"port {port} on {host} is already in use by another process (not a model server "
                    "this project started); stop that process, or pick another port with --port "
                    "or deploy.port in conveyor.yaml"
                ) from None
            raise ServingError(f"cannot serve on {host}:{port}: {exc.strerror}") from None


def _wait_ready(process: subprocess.Popen[bytes], ref: str, host: str, port: int, log_path: Path, offset: int,
                timeout_s: float) -> dict[str, Any]:
    """What the new server serves once /readyz answers; `ServingError` if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise ServingError(
                f"the model server for {ref} exited with code {code} before it was ready; "
                f"the end of {log_path}:\n{_log_tail(log_path, offset)}"
            )
        try:
            status, body = _request(host, port, "GET", "/readyz", timeout=1.0)
        except _Unreachable:
            status, body = 0, {}
        served = _served(body.get("model")) if status == 200 else None
        if served is not None:
            return served
        if time.monotonic() > deadline:
            raise ServingError(
                f"the model server for {ref} was not ready after {timeout_s:.0f}s and was stopped; "
                f"the end of {log_path}:\n{_log_tail(log_path, offset)}"
            )
        time.sleep(0.05)


def _abandon(project: Project, process: subprocess.Popen[bytes]) -> None:
    """Stop a server that never became ready, and forget it: nothing may outlive a failed or interrupted start."""
    process.terminate()
    try:
        process.wait(ABORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(ABORT_TIMEOUT_S)
    state = _read_state(project)
    if state is not None and state["pid"] == process.pid:
        project.server_state_path.unlink(missing_ok=True)


def predict_token(project: Project) -> str:
    """The token prediction requests carry when `deploy.predictions_need_token` is on: created on first use in
    `.conveyor/predict.token`, readable by its owner only (re-tightened if someone loosened it)."""
    return load_or_create_token(project.state_dir / "predict.token", tighten=True)


def _start(project: Project, ref: str, host: str, port: int, registry_url: str, timeout_s: float, workers: int,
           follow_interval_s: float, predictions_need_token: bool) -> Deployment:
    _check_port_free(host, port)
    token = secrets.token_urlsafe(32)
    guard = {PREDICT_TOKEN_ENV: predict_token(project)} if predictions_need_token else {}
    project.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = project.server_log_path
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "ab") as log:
            offset = log.tell()
            process = subprocess.Popen(
                # A reload answers once every worker serves the new version, so its answer is what
                # every request sees from then on, however many workers there are.
                [sys.executable, "-m", "conveyor", "serve", ref, "--host", host, "--port", str(port),
                 "--workers", str(workers), "--follow-interval", str(follow_interval_s)],
                cwd=project.root, env={**{k: v for k, v in os.environ.items() if k != PREDICT_TOKEN_ENV},
                                       TOKEN_ENV: token, REGISTRY_ENV: registry_url, **guard},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        # Reap the child whenever it exits, for as long as this process lives; it outlives us otherwise.
        threading.Thread(target=process.wait, name=f"conveyor-server-{process.pid}", daemon=True).start()
        # Recorded before it is ready, so that a run killed meanwhile leaves a record the next run cleans up.
        state: dict[str, Any] = {
            "status": _STARTING, "pid": process.pid, "host": host, "port": port, "token": token, "ref": ref,
            "registry": _fingerprint(registry_url), "predictions_need_token": predictions_need_token,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _write_state(project, state)
        state = {**state, **_wait_ready(process, ref, host, port, log_path, offset, timeout_s), "status": _READY}
        _write_state(project, state)
    except BaseException:  # KeyboardInterrupt included: a half-started server would hold the port, untracked
        if process is not None:
            _abandon(project, process)
        raise
    return _deployment(state)


def _reload(project: Project, state: dict[str, Any], timeout_s: float, ref: str) -> Deployment | None:
    """Tell the running server to serve `ref` (resolved again); None if it cannot be told (restart it instead)."""
    host, port = state["host"], int(state["port"])
    try:
        if ref == state["ref"]:
            status, body = _request(host, port, "POST", "/-/reload", token=state["token"], timeout=timeout_s)
        else:
            status, body = _request(host, port, "POST", "/-/deploy", token=state["token"], timeout=timeout_s,
                                    body={"ref": ref})
    except _Unreachable:
        status, body = 0, {}
    served = _served(body.get("model")) if status == 200 else None
    if served is not None:
        state = {**state, **served, "ref": ref}
        _write_state(project, state)
        return _deployment(state)
    if status not in (0, 200, 401, 403):  # it answered, and refused the new version
        raise ServingError(
            f"the local server at {url_for(host, port)} (pid {state['pid']}) could not switch "
            f"to {ref}: {body.get('error', status)}"
        )
    return None


def _check_digest(deployment: Deployment, expected: str | None, how: str) -> Deployment:
    if expected is not None and deployment.digest != expected:
        raise ServingError(
            f"the local server at {deployment.url} (pid {deployment.pid}) {how} {deployment.ref} and serves "
            f"{deployment.name}@{deployment.version} with digest {deployment.digest}, not the expected "
            f"{expected}: the registry it reads resolves {deployment.ref} to another artifact; check that "
            "nothing moved the alias meanwhile, then run again (or `conveyor deployments stop` first)"
        )
    return deployment


def ensure_serving(
    project: Project,
    ref: str,
    *,
    host: str,
    port: int,
    registry_url: str,
    expected_digest: str | None = None,
    timeout_s: float = defaults.SERVER_START_TIMEOUT_S,
    workers: int = defaults.DEPLOY_WORKERS,
    follow_interval_s: float = defaults.FOLLOW_INTERVAL_S,
    predictions_need_token: bool = False,
) -> Deployment:
    """Make the local server serve what `ref` points to now; return what it serves.

    A running server of this project on `host`:`port` that reads the same
    registry is told to serve `ref` (every worker swaps, no request is lost);
    if the new version cannot load, it keeps the old one and this raises
    `ServingError` with the reason.
    Otherwise (none running, or on another port or registry, or with another
    `predictions_need_token`: then predictions need `predict_token`) a new
    server is started in its place, with `workers` worker processes that look
    up where `ref` points every `follow_interval_s`; if that is interrupted or
    fails, the new server is stopped. With `expected_digest`, a server that ends up serving
    another artifact is a `ServingError` too (it keeps serving it).
    """
    state = _live_state(project)
    if state is not None:
        where = (state["host"], int(state["port"]), state["registry"], bool(state.get("predictions_need_token")))
        if state["status"] == _READY and where == (host, port, _fingerprint(registry_url), predictions_need_token):
            reloaded = _reload(project, state, timeout_s, ref)
            if reloaded is not None:
                return _check_digest(reloaded, expected_digest, "reloaded")
        stop(project)
    started = _start(project, ref, host, port, registry_url, timeout_s, workers, follow_interval_s,
                     predictions_need_token)
    return _check_digest(started, expected_digest, "started")


def restart_workers(project: Project, *, timeout_s: float = defaults.SERVER_START_TIMEOUT_S) -> Deployment:
    """Replace the local server's workers one at a time (new code, new dependencies), without refusing a connection.

    Returns once every worker has been replaced; `ServingError` with the reason if the new workers could
    not start (the old ones then keep serving).
    """
    state = _ready_state(project)
    url = url_for(state["host"], int(state["port"]))
    last = deployment_state(project).get("restart") or {}
    generation = int(last.get("generation", 0))
    answer = _manage(project, "POST", "/-/restart", timeout_s=10.0)
    if not answer.get("restarting"):
        raise ServingError(f"the local server at {url} did not start a restart: {answer}")
    deadline = time.monotonic() + timeout_s
    while True:
        status = deployment_state(project).get("restart") or {}
        if int(status.get("generation", 0)) > generation and status.get("state") in ("done", "failed"):
            break
        if time.monotonic() > deadline:
            raise ServingError(f"the workers of the local server at {url} were not all replaced within "
                               f"{timeout_s:.0f}s; see {project.server_log_path}")
        time.sleep(0.1)
    if status["state"] == "failed":
        raise ServingError(f"the rolling restart of the local server at {url} stopped: {status.get('reason')}; "
                           f"see {project.server_log_path}")
    deployment = current(project)
    if deployment is None:
        raise ServingError(f"the local server at {url} stopped during the restart; see {project.server_log_path}")
    return deployment


def _ready_state(project: Project) -> dict[str, Any]:
    state = _live_state(project)
    if state is None or state["status"] != _READY:
        raise ServingError("no local server is running; start one with `conveyor deploy NAME@ALIAS`")
    return state


def _manage(project: Project, method: str, path: str, body: dict[str, Any] | None = None,
            timeout_s: float = defaults.SERVER_START_TIMEOUT_S) -> dict[str, Any]:
    """One management request to the local server; its JSON answer, or `ServingError` saying why not."""
    state = _ready_state(project)
    host, port = state["host"], int(state["port"])
    try:
        status, answer = _request(host, port, method, path, token=state["token"], timeout=timeout_s, body=body)
    except _Unreachable as exc:
        raise ServingError(f"the local server at {url_for(host, port)} did not answer {method} {path}: {exc}") from None
    if status >= 300:
        raise ServingError(f"the local server at {url_for(host, port)} refused {method} {path}: "
                           f"{answer.get('error', status)}")
    return answer


def set_traffic(project: Project, candidate: str | None, share: float, *, mode: str = "canary",
                stable: str | None = None, compare: bool = False) -> dict[str, Any]:
    """Send `share` percent of the local server's requests (canary) or a copy of them (shadow) to `candidate`;
    share 0 ends the split. Stable stays the version served now (or `stable`) while the split lasts.
    `compare`: stable predicts a canary's requests too, so its disagreement with stable is counted."""
    body: dict[str, Any] = {"share": share}
    if share > 0:
        body.update({"candidate": candidate, "mode": mode, **({"stable": stable} if stable else {}),
                     **({"compare": True} if compare else {})})
    return _manage(project, "POST", "/-/traffic", body)


def deployment_state(project: Project) -> dict[str, Any]:
    """What one worker of the local server serves, holds in memory and splits (GET /-/state)."""
    return _manage(project, "GET", "/-/state", timeout_s=10.0)


def metrics_text(project: Project) -> str:
    """The local server's Prometheus metrics (every worker's counts)."""
    state = _ready_state(project)
    try:
        _, text = _exchange(state["host"], int(state["port"]), "GET", "/metrics", headers={}, payload=b"", timeout=10.0)
    except _Unreachable as exc:
        raise ServingError(f"the local server did not answer GET /metrics: {exc}") from None
    return text.decode("utf-8", "replace")
