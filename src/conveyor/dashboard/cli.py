"""`conveyor ui`: serve the dashboard in the foreground. Thin: resolve settings, open the sources, run uvicorn."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from conveyor import defaults
from conveyor.exceptions import ConveyorError
from conveyor.project import Project

TOKEN_ENV = "CONVEYOR_UI_TOKEN"
"""Environment variable holding the dashboard's token (turns login on)."""

PORT_ENV = "CONVEYOR_UI_PORT"
"""Environment variable for the dashboard's port (below --port)."""


def token_path(project: Project) -> Path:
    """Where `--auth` keeps the dashboard's token (mode 0600, created on first use)."""
    return project.state_dir / "ui.token"


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 takes a free one (the URL printed says which)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (socket.gaierror, OSError) as exc:
        raise ConveyorError(f"cannot serve the dashboard on host '{host}': {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConveyorError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror}; "
                            "pick another port with --port or CONVEYOR_UI_PORT") from None
    return sock


@click.command("ui")
@click.option("--host", default=defaults.UI_HOST, show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"Port to bind (0: any free one)  [default: CONVEYOR_UI_PORT, else {defaults.UI_PORT}]")
@click.option("--auth", "use_auth", is_flag=True,
              help="Ask for a token (CONVEYOR_UI_TOKEN, else .conveyor/ui.token, created on first use).")
def ui(host: str, port: int | None, use_auth: bool) -> None:
    """Serve a read-only web dashboard of runs, models and deployments (Ctrl-C stops it).

    Every page has a JSON twin under /api (e.g. /api/runs). With --auth, or
    when CONVEYOR_UI_TOKEN is set, a browser logs in once with the token and
    scripts send 'Authorization: Bearer <token>'.

    \b
    Examples:
      conveyor ui
      conveyor ui --port 8100 --auth
      curl -s localhost:8100/api/models
    """
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConveyorError(f"the dashboard needs {exc.name}: pip install 'conveyor-ml[ui]'") from None

    from conveyor import auth
    from conveyor.cli import _registry_url
    from conveyor.dashboard.app import create_app, hosts_for
    from conveyor.dashboard.live import Scrapes
    from conveyor.dashboard.pages import Sources
    from conveyor.dashboard.reader import RegistryReader
    from conveyor.runs import RunStore

    project = Project.find()
    if port is None:
        raw = os.environ.get(PORT_ENV)
        try:
            port = int(raw) if raw else defaults.UI_PORT
        except ValueError:
            raise ConveyorError(f"{PORT_ENV}={raw!r} is not a port number") from None
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and use_auth:
        token = auth.load_or_create_token(token_path(project))
    registry = RegistryReader(_registry_url(project))
    registry.check()
    sources = Sources(project=project, registry=registry, runs=RunStore(project.runs_dir), scrapes=Scrapes())
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Dashboard at http://{shown}:{bound_port}  (Ctrl-C stops it)", err=False)
    if token is not None:
        where = TOKEN_ENV if os.environ.get(TOKEN_ENV) else str(token_path(project))
        click.echo(f"Login needs the token in {where}")
    sys.stdout.flush()
    config = uvicorn.Config(create_app(sources, token, hosts=hosts_for(host)), log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        registry.close()
