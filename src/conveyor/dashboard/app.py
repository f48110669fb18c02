"""The dashboard's ASGI app: routes, templates, token check and security headers.

Every page is a function in `pages.py`; a route renders it as HTML, and the
same path under `/api` answers it as JSON. With a token, a request needs
`Authorization: Bearer <token>` or the cookie a browser gets from the login
form (HTTP-only, SameSite=Strict, derived from the token, not the token).
Every answer carries a Content-Security-Policy that allows only this origin's
script and stylesheet, so nothing shown (a log, a reason, a plot) can run code.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor import auth
from conveyor.dashboard import charts, pages
from conveyor.dashboard import runs as run_pages
from conveyor.exceptions import ConveyorError, ModelNotFound, RunNotFound

HERE = Path(__file__).parent

COOKIE = "conveyor_ui"
"""Name of the login cookie."""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""Only this origin's files, no inline script or style, never framed."""

PLOT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
"""A plot (SVG may hold script) opened on its own: styled, never scripted."""

_MAX_LOGIN_BYTES = 4096


def _when(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _seconds(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{value % 60:04.1f}s"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.6g}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, seconds=_seconds, number=_number, short=lambda v, n=10: (v or "-")[:n],
                       pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=pages.jsonable))
    return env


def _int_arg(request: Request, key: str, default: int | None) -> int | None:
    raw = request.query_params.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(f"query parameter '{key}' must be a whole number, not '{raw}'") from None


class _BadRequest(Exception):
    pass


class Dashboard:
    """The app over one project's `Sources`; `token` None means no login is asked."""

    def __init__(self, sources: pages.Sources, token: str | None) -> None:
        self.src = sources
        self.token = token
        self.session = auth.session_value(token, "conveyor-ui-session") if token else None
        self.env = _environment()
        api: list[Route] = []
        html: list[Route] = []
        for path, build, template in self._pages():
            html.append(Route(path, self._html(build, template)))
            api.append(Route("/api" + path, self._json(build)))
        self.app = Starlette(routes=[
            Route("/", lambda request: RedirectResponse("/runs", status_code=303)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/runs/{run_id}/plots/{name}", self.plot),
            Route("/api/deployments/live", self._json(lambda r: pages.live_numbers(self.src))),
            *api, *html,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ])

    def _pages(self) -> list[tuple[str, Callable[[Request], dict[str, Any]], str]]:
        p = pages
        return [
            ("/runs", lambda r: p.runs_page(self.src, _int_arg(r, "page", 1) or 1), "runs.html"),
            ("/runs/{run_id}", lambda r: p.run_page(self.src, r.path_params["run_id"]), "run.html"),
            ("/models", lambda r: p.models_page(self.src), "models.html"),
            ("/models/{name}", lambda r: p.model_page(self.src, r.path_params["name"], _int_arg(r, "page", 1) or 1),
             "model.html"),
            ("/models/{name}/{version:int}",
             lambda r: p.version_page(self.src, r.path_params["name"], r.path_params["version"],
                                      _int_arg(r, "against", None)), "version.html"),
            ("/deployments", lambda r: p.deployments_page(self.src), "deployments.html"),
        ]

    # -- rendering --------------------------------------------------------------

    def _render(self, template: str, code: int = 200, **context: Any) -> HTMLResponse:
        body = self.env.get_template(template).render(charts=charts, auth=self.token is not None, **context)
        return HTMLResponse(body, status_code=code)

    def _failure(self, exc: Exception) -> tuple[int, str]:
        if isinstance(exc, (ModelNotFound, RunNotFound)):
            return 404, str(exc)
        if isinstance(exc, _BadRequest):
            return 400, str(exc)
        return 503, str(exc)

    def _html(self, build: Callable[[Request], dict[str, Any]], template: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                data = await run_in_threadpool(build, request)
            except (ConveyorError, _BadRequest) as exc:
                status, message = self._failure(exc)
                return self._render("error.html", status, status=status, message=message, path=request.url.path)
            return self._render(template, data=data, path=request.url.path, query=request.url.query)

        return endpoint

    def _json(self, build: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                data, status = await run_in_threadpool(build, request), 200
            except (ConveyorError, _BadRequest) as exc:
                status, message = self._failure(exc)
                data = {"error": message}
            body = json.dumps(data, default=pages.jsonable, allow_nan=False)
            return Response(body, status_code=status, media_type="application/json")

        return endpoint

    async def plot(self, request: Request) -> Response:
        try:
            run = run_pages.load_run(self.src.runs, request.path_params["run_id"])
            path = run_pages.plot_path(self.src.runs, run, request.path_params["name"])
        except ConveyorError as exc:
            return Response(json.dumps({"error": str(exc)}), status_code=404, media_type="application/json")
        media = run_pages.PLOT_TYPES[path.suffix.lower()]
        return FileResponse(path, media_type=media, headers={"Content-Security-Policy": PLOT_CSP})

    # -- login ------------------------------------------------------------------

    def authorised(self, scope: Scope) -> bool:
        """Whether a request carries the token (Bearer) or the login cookie."""
        if self.token is None:
            return True
        request = Request(scope)
        if auth.matches(auth.bearer(request.headers.get("authorization")), self.token):
            return True
        assert self.session is not None
        return auth.matches(request.cookies.get(COOKIE), self.session)

    async def login(self, request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))
        if self.token is None:
            return RedirectResponse(target, status_code=303)
        if request.method == "GET":
            return self._render("login.html", next=target, error=None)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_LOGIN_BYTES:
                return self._render("login.html", 413, next=target, error="the form is too large")
        form = parse_qs(body.decode("utf-8", "replace"))
        target = _safe_next((form.get("next") or [target])[0])
        if not auth.matches((form.get("token") or [""])[0].strip(), self.token):
            return self._render("login.html", 401, next=target, error="That is not the dashboard's token.")
        response = RedirectResponse(target, status_code=303)
        assert self.session is not None
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only (never `//host` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/runs"
    return target


class _Guard:
    """Asks for the token where one is set, and adds the security headers to every answer."""

    OPEN = ("/login", "/static/")

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {key.lower() for key, _ in headers}
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                         (b"cache-control", b"no-store")]
                headers += [(key, value) for key, value in extra if key not in names]
                message = {**message, "headers": headers}
            await send(message)

        path = str(scope.get("path", ""))
        if not path.startswith(self.OPEN) and not self.dashboard.authorised(scope):
            request = Request(scope)
            response: Response
            if path.startswith("/api/") or "authorization" in request.headers:
                response = Response(json.dumps({"error": "this dashboard needs its token: send "
                                                "'Authorization: Bearer <token>' (see .conveyor/ui.token)"}),
                                    status_code=401, media_type="application/json",
                                    headers={"WWW-Authenticate": 'Bearer realm="conveyor"'})
            else:
                wanted = path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/login?next={quote(wanted, safe='/')}", status_code=303)
            await response(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
"""Host headers a dashboard bound to loopback answers to."""


def create_app(sources: pages.Sources, token: str | None, *, hosts: list[str] | None = None) -> ASGIApp:
    """The dashboard for `sources`; with `token`, every page but the login form needs it.

    `hosts`: the Host headers to answer (others get a 400), so that a web page
    whose name is re-pointed at 127.0.0.1 (DNS rebinding) cannot read a
    dashboard on loopback; None answers any (a dashboard bound to a public address).
    """
    dashboard = Dashboard(sources, token)
    guarded: ASGIApp = _Guard(dashboard.app, dashboard)
    if hosts is not None:
        guarded = TrustedHostMiddleware(guarded, allowed_hosts=hosts)
    return guarded


def hosts_for(bound: str) -> list[str] | None:
    """The Host headers to accept for a dashboard bound to `bound`: loopback names on loopback, else any."""
    if bound in ("127.0.0.1", "localhost", "::1") or bound.startswith("127."):
        return sorted({*LOOPBACK_NAMES, bound})
    return None

