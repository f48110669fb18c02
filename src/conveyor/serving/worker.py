"""One server worker: a fresh interpreter that serves on a socket its supervisor listens on.

The supervisor (`workers.py`) starts `python -m conveyor.serving.worker` with
the listening socket and the write end of a pipe inherited as file
descriptors, and everything else in `CONFIG_ENV` (JSON; never argv, which `ps`
shows, since it holds the management token). The worker loads and warms its
model first and only then writes `ready` to the pipe, so a rolling restart
never retires an old worker for one that cannot answer yet; a worker that
cannot serve writes `error <reason>` instead and exits with `EXIT_CANNOT_SERVE`.

On SIGTERM a worker drains (see `DrainingServer`) instead of letting uvicorn
close connections whose request it has not read yet.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conveyor.serving.rollout import Traffic

CONFIG_ENV = "CONVEYOR_WORKER_CONFIG"
"""Environment variable holding a worker's `WorkerConfig` as JSON."""

EXIT_CANNOT_SERVE = 78
"""Exit status of a worker whose model cannot be loaded (EX_CONFIG): a start-up with it fails at once."""

DRAIN_MIN_S = 0.3
"""After closing its listening socket, a stopping worker keeps serving at least this long: a client that
connected just before has its request read and answered instead of having its connection closed."""

DRAIN_MAX_S = 6.0
"""The longest a stopping worker waits for requests in flight before uvicorn's own shutdown."""

log = logging.getLogger("conveyor.serving")


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to serve; written by the supervisor, read by the worker."""

    project_root: str
    ref: str
    registry_url: str
    token: str | None
    listen_fd: int
    ready_fd: int
    supervisor_pid: int
    batching: bool = True
    max_batch_rows: int = 64
    max_wait_ms: float = 2.0
    access_log: bool = False
    metrics_dir: str | None = None
    follow_interval_s: float = 1.0
    slot: int = 0
    served_dir: str | None = None  # each worker's served digest, and the supervisor's list of ready workers
    predict_token: str | None = None  # None: prediction endpoints need no token

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))


def _die_with_supervisor(supervisor_pid: int) -> None:
    """Get SIGTERM (and drain) if the supervisor dies, even by SIGKILL: no worker outlives its server."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog in `_watch_supervisor` still notices
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _answering(connection: Any) -> bool:
    """Whether a uvicorn connection has read a request it has not finished answering."""
    cycle = getattr(connection, "cycle", None)
    return cycle is not None and not getattr(cycle, "response_complete", True)


def _make_server_class() -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, but a stop first closes only the listening socket and finishes accepted requests.

        The socket stays open in the supervisor and the other workers, so the
        connections waiting in its backlog are taken by them; the ones this
        worker accepted already are answered before uvicorn closes idle ones.
        """

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            started = time.monotonic()
            while time.monotonic() - started < DRAIN_MAX_S:
                busy = any(_answering(c) for c in self.server_state.connections)
                if time.monotonic() - started >= DRAIN_MIN_S and not busy and not self.server_state.tasks:
                    break
                await asyncio.sleep(0.05)
            await super().shutdown(sockets=None)

    return DrainingServer


def serve(config: WorkerConfig) -> int:
    """Load, warm, report ready, serve until SIGTERM; the exit status."""
    from conveyor.serving.server import setup_logging

    setup_logging()
    _die_with_supervisor(config.supervisor_pid)
    with os.fdopen(config.ready_fd, "w") as ready:
        try:
            app, server, listening = _prepare(config)
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which decides
            from conveyor.exceptions import ConveyorError

            reason = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
            log.error("worker %d cannot serve %s: %s", config.slot, config.ref, reason)
            ready.write(f"error {reason}\n")
            return EXIT_CANNOT_SERVE
        ready.write("ready\n")
    served = app.current
    log.info("serving %s (%s), worker %d (pid %d)", served.version.ref, app.source.ref, config.slot, os.getpid())
    import gc

    gc.freeze()  # what was loaded before serving lives on: keep the collector off it

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(app.reload_from_signal()))
        watchdog = loop.create_task(_watch_supervisor(config.supervisor_pid, server))
        try:
            await server.serve(sockets=[listening])
        finally:
            watchdog.cancel()

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:  # uvloop when installed
        runner.run(main())
    return 0


async def _watch_supervisor(supervisor_pid: int, server: Any) -> None:
    while os.getppid() == supervisor_pid:
        await asyncio.sleep(1.0)
    server.should_exit = True


WORKERS_FILE = "workers"
"""In `WorkerConfig.served_dir`: the pids of the ready workers, one a line, written by the supervisor."""


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def record_served(served_dir: str, pid: int, digest: str) -> None:
    """Note that worker `pid` now serves `digest`."""
    _write_atomically(Path(served_dir) / str(pid), digest)


def record_workers(served_dir: str, pids: list[int]) -> None:
    """Note which workers are ready (the supervisor's side)."""
    _write_atomically(Path(served_dir) / WORKERS_FILE, "".join(f"{pid}\n" for pid in pids))


REF_FILE = "ref"
"""In `WorkerConfig.served_dir`: the reference every worker follows, once a deploy changed it."""


def read_ref(served_dir: str) -> str | None:
    """The reference a deploy told the workers to follow, or None (then: the one they started with)."""
    try:
        return (Path(served_dir) / REF_FILE).read_text() or None
    except OSError:
        return None


TRAFFIC_FILE = "traffic"
"""In `WorkerConfig.served_dir`: the traffic split in force (`rollout.Traffic` as JSON), absent when none."""


def read_traffic(served_dir: str) -> Traffic | None:
    """The split every worker applies, or None."""
    try:
        return Traffic.from_json((Path(served_dir) / TRAFFIC_FILE).read_text())
    except OSError:
        return None


def write_traffic(served_dir: str, traffic: Traffic | None) -> None:
    """Put `traffic` in force for every worker (each applies it on SIGHUP or its next look); None ends it."""
    if traffic is None:
        (Path(served_dir) / TRAFFIC_FILE).unlink(missing_ok=True)
    else:
        _write_atomically(Path(served_dir) / TRAFFIC_FILE, traffic.to_json())


RESTART_FILE = "restart"
"""In `WorkerConfig.served_dir`: the last rolling restart, `{"generation": N, "state": running|done|failed,
"reason": ...}`, written by the supervisor and shown by GET /-/state."""


def record_restart(served_dir: str, status: dict[str, Any]) -> None:
    """Note how the rolling restart stands (the supervisor's side)."""
    _write_atomically(Path(served_dir) / RESTART_FILE, json.dumps(status))


def read_restart(served_dir: str) -> dict[str, Any] | None:
    """The last rolling restart's status, or None before the first."""
    try:
        status = json.loads((Path(served_dir) / RESTART_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def all_serve(served_dir: str, digest: str) -> bool:
    """Whether every ready worker serves `digest`."""
    try:
        pids = (Path(served_dir) / WORKERS_FILE).read_text().split()
        return all((Path(served_dir) / pid).read_text() == digest for pid in pids)
    except OSError:
        return False


def _prepare(config: WorkerConfig) -> tuple[Any, Any, socket.socket]:
    import uvicorn

    from conveyor.project import Project
    from conveyor.registry import Registry
    from conveyor.serving.app import ModelSource, ServingApp
    from conveyor.serving.metrics import MetricsMiddleware, ServingMetrics
    from conveyor.store import ArtifactStore

    project = Project(Path(config.project_root))
    registry = Registry(config.registry_url, create=False)
    source = ModelSource(registry, ArtifactStore(project.cache_dir), project.models_dir, config.ref)
    followed = (read_ref(config.served_dir) if config.served_dir else None) or config.ref
    traffic = read_traffic(config.served_dir) if config.served_dir else None
    # During a rollout stable is pinned; the split itself is applied at the first look (follow_interval_s).
    served = source.load(source.resolve(traffic.stable if traffic else followed))
    source.ref = followed
    metrics = ServingMetrics(multiprocess_dir=config.metrics_dir)
    supervisor = config.supervisor_pid
    served_dir = config.served_dir

    def tell_supervisor(signum: int) -> None:
        try:
            os.kill(supervisor, signum)
        except ProcessLookupError:
            pass

    app = ServingApp(source, token=config.token, served=served, batching=config.batching,
                     max_batch_rows=config.max_batch_rows, max_wait_ms=config.max_wait_ms, metrics=metrics,
                     on_reload=lambda: tell_supervisor(signal.SIGHUP),
                     on_restart=lambda: tell_supervisor(signal.SIGUSR2),
                     follow_interval_s=config.follow_interval_s,
                     on_swap=None if served_dir is None else
                     (lambda now: record_served(served_dir, os.getpid(), now.version.digest)),
                     in_step=None if served_dir is None else (lambda digest: all_serve(served_dir, digest)),
                     shared_ref=None if served_dir is None else
                     (lambda: read_ref(served_dir), lambda ref: _write_atomically(Path(served_dir) / REF_FILE, ref)),
                     predict_token=config.predict_token,
                     extra_state=None if served_dir is None else (lambda: {"restart": read_restart(served_dir)}),
                     shared_traffic=None if served_dir is None else
                     (lambda: read_traffic(served_dir), lambda traffic: write_traffic(served_dir, traffic)))
    uv_config = uvicorn.Config(
        MetricsMiddleware(app, metrics, access_log=config.access_log), log_level="warning",
        access_log=False, lifespan="on", timeout_graceful_shutdown=5,
    )
    listening = socket.socket(fileno=config.listen_fd)
    return app, _make_server_class()(uv_config), listening


def main() -> None:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        sys.exit(f"Error: {CONFIG_ENV} is not set; this module is started by `conveyor serve`, not by hand")
    sys.exit(serve(WorkerConfig.from_env(text)))


if __name__ == "__main__":
    main()
