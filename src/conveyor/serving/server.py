"""Run the prediction API in the foreground: bind, load the model, hand over to uvicorn.

The socket is bound before the model loads, so a taken port fails at once;
the model loads before the socket listens, so a model that cannot be served
stops the process with its reason instead of leaving a server that is never
ready. One worker: the model lives in this process's memory and a reload
swaps it there.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

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


def serve(
    project: Project,
    ref: str,
    *,
    host: str,
    port: int,
    registry_url: str,
    token: str | None,
) -> None:
    """Serve what `ref` points to on `host`:`port` until SIGINT/SIGTERM.

    `token` enables POST /-/reload (re-resolve `ref` and hot-swap); None disables it.
    """
    import uvicorn

    from conveyor.registry import Registry
    from conveyor.serving.app import ModelSource, ServingApp
    from conveyor.store import ArtifactStore

    _setup_logging()
    sock = _bind(host, port)
    registry = Registry(registry_url)
    try:
        source = ModelSource(registry, ArtifactStore(project.cache_dir), project.models_dir, ref)
        served = source.load(source.resolve())
        app = ServingApp(source, token=token, served=served)
        config = uvicorn.Config(
            app, log_level="info", access_log=False, lifespan="on", timeout_graceful_shutdown=5,
        )
        management = "POST /-/reload enabled" if token else "no token: POST /-/reload disabled"
        log.info("serving %s (%s) at %s; %s", served.version.ref, ref, url_for(host, port), management)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        registry.close()
        sock.close()
