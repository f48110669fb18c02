"""Run the prediction API in the foreground: bind, load the model, hand over to uvicorn.

The socket is bound before the model loads, so a taken port fails at once;
the model loads before the socket listens, so a model that cannot be served
stops the process with its reason instead of leaving a server that is never
ready. Several workers are forked after the model is loaded (see `workers`).
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


def _setup_logging() -> None:
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

    `token` enables POST /-/reload (re-resolve `ref` and hot-swap); None disables it.
    With several workers, a reload asked of one reaches the others through
    the parent process (SIGHUP), a moment later.
    """
    import asyncio
    import os
    import shutil
    import signal
    import tempfile

    import uvicorn

    # Several workers count into shared files, so any of them can answer a scrape for all;
    # prometheus_client reads this variable when it is first imported, just below.
    metrics_dir = tempfile.mkdtemp(prefix="conveyor-metrics-") if options.workers > 1 else None
    if metrics_dir is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from conveyor.registry import Registry
    from conveyor.serving import workers
    from conveyor.serving.app import ModelSource, ServingApp
    from conveyor.serving.metrics import MetricsMiddleware, ServingMetrics
    from conveyor.store import ArtifactStore

    _setup_logging()
    sock = _bind(host, port)
    registry = Registry(registry_url)
    try:
        source = ModelSource(registry, ArtifactStore(project.cache_dir), project.models_dir, ref)
        served = source.load(source.resolve())
        management = "POST /-/reload enabled" if token else "no token: POST /-/reload disabled"
        log.info("serving %s (%s) at %s with %d worker(s), batching %s; %s", served.version.ref, ref,
                 url_for(host, port), options.workers, "on" if options.batching else "off", management)

        def serve_one(listening: socket.socket) -> None:
            import gc

            gc.freeze()  # what was loaded before serving lives on: keep the collector off it
            metrics = ServingMetrics(multiprocess_dir=metrics_dir)
            app = ServingApp(source, token=token, served=served, batching=options.batching,
                             max_batch_rows=options.max_batch_rows, max_wait_ms=options.max_wait_ms,
                             metrics=metrics, on_reload=workers.notify_all if options.workers > 1 else None)
            config = uvicorn.Config(
                MetricsMiddleware(app, metrics, access_log=options.access_log), log_level="info",
                access_log=False, lifespan="on", timeout_graceful_shutdown=5,
            )
            server = uvicorn.Server(config)

            async def main() -> None:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(app.reload_from_signal()))
                await server.serve(sockets=[listening])

            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop when installed
                runner.run(main())

        workers.run(serve_one, sock, options.workers)
    finally:
        registry.close()
        sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
