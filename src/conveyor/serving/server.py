"""Run the prediction API in the foreground: bind, load the model, hand over to uvicorn.

The socket is bound before the model loads, so a taken port fails at once;
no worker is ready before its model is loaded, so a model that cannot be served
stops the process with its reason instead of leaving a server that is never
ready. The workers are fresh interpreters sharing the socket (see `workers`).
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from dataclasses import dataclass

from conveyor import defaults
from conveyor.exceptions import ServingError
from conveyor.project import Project

log = logging.getLogger("conveyor.serving")


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServingError(f"cannot bind to host '{host}': {exc.strerror}; pass --host with an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServingError(
                f"port {port} on {host} is already in use by another process; "
                "stop it, or pass --port (or set deploy.port in conveyor.yaml) to use another port"
            ) from None
        raise ServingError(f"cannot bind to {host}:{port}: {exc.strerror}") from None
    return sock


def url_for(host: str, port: int) -> str:
    """The base URL of a server bound to `host`:`port`."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def setup_logging() -> None:
    """Log the server's own messages (not uvicorn's access lines) to stderr, once."""
    logger = logging.getLogger("conveyor")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@dataclass(frozen=True)
class ServingOptions:
    """How the server runs; defaults in `conveyor.defaults`."""

    workers: int = defaults.WORKERS
    batching: bool = True
    max_batch_rows: int = defaults.MAX_BATCH_ROWS
    max_wait_ms: float = defaults.MAX_BATCH_WAIT_MS
    access_log: bool = False
    follow_interval_s: float = defaults.FOLLOW_INTERVAL_S
    predict_token: str | None = None  # None: prediction endpoints need no token


def serve(
    project: Project,
    ref: str,
    *,
    host: str,
    port: int,
    registry_url: str,
    token: str | None,
    options: ServingOptions = ServingOptions(),
) -> None:
    """Serve what `ref` points to on `host`:`port` until SIGINT/SIGTERM.

    `token` enables the management endpoints (Bearer auth); None disables them.
    The workers are fresh processes (see `workers`); the first start fails with
    the reason when the model cannot be loaded.
    """
    import os
    import shutil
    import tempfile

    from conveyor.serving import workers
    from conveyor.serving.worker import WorkerConfig

    setup_logging()
    sock = _bind(host, port)
    # Every worker counts into shared files, so any of them answers a scrape for all, and a
    # replaced worker's counts stay; prometheus_client reads this variable when first imported.
    shared_dir = tempfile.mkdtemp(prefix="conveyor-server-")
    metrics_dir, served_dir = os.path.join(shared_dir, "metrics"), os.path.join(shared_dir, "served")
    os.mkdir(metrics_dir)
    os.mkdir(served_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        management = "management endpoints enabled" if token else "no token: management endpoints disabled"
        log.info("starting %s at %s with %d worker(s), batching %s; %s", ref, url_for(host, port),
                 options.workers, "on" if options.batching else "off", management)
        config = WorkerConfig(
            project_root=str(project.root), ref=ref, registry_url=registry_url, token=token, listen_fd=-1,
            ready_fd=-1, supervisor_pid=os.getpid(), batching=options.batching,
            max_batch_rows=options.max_batch_rows, max_wait_ms=options.max_wait_ms, access_log=options.access_log,
            metrics_dir=metrics_dir, follow_interval_s=options.follow_interval_s, served_dir=served_dir,
            predict_token=options.predict_token,
        )
        workers.run(config, sock, options.workers)
    finally:
        sock.close()
        shutil.rmtree(shared_dir, ignore_errors=True)
