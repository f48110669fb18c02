"""The prediction API: one ASGI app serving the model version a reference points to.

`ServingApp` holds the version being served. A reload resolves the followed
reference again, loads and warms the new version beside the old one, and only
then swaps one attribute; a request reads that attribute once, so the version
in its `X-Model-Version` header is the one that predicted. A client's mistake
gets a 4xx that says what is wrong; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from conveyor import defaults
from conveyor.exceptions import ConveyorError, PayloadError, ServingError
from conveyor.model import LoadedModel, load_verified
from conveyor.signature import parse_payload
from conveyor.store import ArtifactStore

if TYPE_CHECKING:
    import numpy as np

    from conveyor.registry import ModelVersion, Registry

log = logging.getLogger("conveyor.serving")

INLINE_MAX_ROWS = 64
"""Requests up to this many rows predict on the event loop; larger ones go to a worker thread.

For small models the thread hand-off costs more than the prediction itself
(LogisticRegression on iris, one row, 2 CPUs: p50 0.62 ms inline, 1.10 ms via
the thread pool); a big batch must not stall the other requests.
"""


@dataclass(frozen=True)
class Served:
    """A model version in memory, ready to answer."""

    version: ModelVersion
    model: LoadedModel
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        git = self.version.lineage.get("git")
        commit = git.get("commit") if isinstance(git, dict) else None
        return {
            "name": self.version.name,
            "version": self.version.version,
            "digest": self.version.digest,
            "commit": commit,
            "flavor": self.model.metadata.flavor,
        }


class ModelSource:
    """Where served models come from: a reference followed in a registry, bytes from a store."""

    def __init__(self, registry: Registry, store: ArtifactStore, models_dir: Path, ref: str) -> None:
        self.registry = registry
        self.store = store
        self.models_dir = models_dir
        self.ref = ref

    def resolve(self) -> ModelVersion:
        return self.registry.resolve(self.ref)

    def load(self, version: ModelVersion) -> Served:
        """Materialise, verify, load and warm `version`; raise `ConveyorError` saying why it cannot serve."""
        try:
            model = load_verified(self.store, self.models_dir, version.digest)
        except ConveyorError:
            raise
        except Exception as exc:
            raise ServingError(f"{version.ref} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        try:
            model.warm()
        except Exception as exc:
            raise ServingError(
                f"{version.ref} loaded but failed its warm-up prediction: {type(exc).__name__}: {exc}"
            ) from exc
        return Served(version, model, time.time())


class _Problem(Exception):
    """A request we answer with a 4xx (or 5xx) JSON error instead of a prediction."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        self.status, self.error, self.field = status, error, field


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _predictions(output: np.ndarray) -> Any:
    """What orjson can write fastest: the array itself when numeric, else plain lists."""
    if output.dtype.kind in "biuf" and output.flags.c_contiguous:
        return output
    return output.tolist()


class ServingApp:
    """The ASGI application: routes, the served version, and hot reload.

    `served` is the version to start with; without it, the first one is loaded
    in the background at startup and /readyz answers 503 until it is ready.
    `token` enables POST /-/reload (Bearer auth); None disables it.
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        token: str | None,
        served: Served | None = None,
        max_request_bytes: int = defaults.MAX_REQUEST_BYTES,
    ) -> None:
        self.source = source
        self.current: Served | None = served
        self.load_error: str | None = None
        self._token = token.encode() if token else None
        self._max_bytes = max_request_bytes
        self._reload_lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._app = Starlette(
            routes=[
                Route("/predict", self.predict, methods=["POST"]),
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/version", self.version),
                Route("/-/reload", self.reload, methods=["POST"]),
            ],
            exception_handlers={_Problem: self._problem, HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                served = self.current
                if served is not None and not any(key == b"x-model-version" for key, _ in headers):
                    headers.append((b"x-model-version", str(served.version.version).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_with_version)

    # -- lifecycle ------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.current is None:
            self._background = asyncio.create_task(self._first_load())
        yield
        if self._background is not None and not self._background.done():
            self._background.cancel()

    async def _first_load(self) -> None:
        try:
            await self._swap_to_latest()
        except Exception:  # recorded in load_error, reported by /readyz
            pass

    async def _swap_to_latest(self) -> tuple[Served | None, Served]:
        """Load what the followed ref points to now and swap it in; the old one serves until then."""
        async with self._reload_lock:
            previous = self.current
            try:
                version = await run_in_threadpool(self.source.resolve)
                if previous is not None and (version.version, version.digest) == (
                    previous.version.version, previous.version.digest
                ):
                    return previous, previous
                served = await run_in_threadpool(self.source.load, version)
            except Exception as exc:
                self.load_error = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
                if previous is None:
                    log.error("cannot serve %s: %s", self.source.ref, self.load_error)
                raise
            self.current, self.load_error = served, None
            old = f"v{previous.version.version}" if previous else "nothing"
            log.info("%s: now serving %s (was %s)", self.source.ref, served.version.ref, old)
            return previous, served

    # -- error responses -----------------------------------------------------

    async def _problem(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Problem)
        body: dict[str, Any] = {"error": exc.error}
        if exc.field is not None:
            body["field"] = exc.field
        return _json(body, exc.status)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = f"no route {request.url.path}; try POST /predict, GET /healthz, /readyz or /version"
        elif exc.status_code == 405:
            error = f"{request.method} is not allowed on {request.url.path}"
        else:
            error = str(exc.detail)
        return _json({"error": error}, exc.status_code, dict(exc.headers or {}))

    # -- endpoints -------------------------------------------------------------

    async def _read_json(self, request: Request) -> Any:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            shown = f"'{media}'" if media else "none"
            raise _Problem(415, f"expected Content-Type: application/json, got {shown}", "content-type")
        declared = request.headers.get("content-length")
        limit = self._max_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Problem(413, f"the body is {int(declared)} bytes; the limit is {limit}: send fewer rows per request")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Problem(413, f"the body is over the {limit}-byte limit; send fewer rows per request")
                chunks.append(chunk)
        except ClientDisconnect:
            raise _Problem(400, "the client went away before sending the whole body") from None
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise _Problem(400, f"the body is not valid JSON: {exc}", "body") from None

    async def predict(self, request: Request) -> Response:
        served = self.current
        if served is None:
            raise _Problem(503, f"no model is loaded yet for {self.source.ref}; see GET /readyz")
        payload = await self._read_json(request)
        try:
            X = parse_payload(served.model.signature, payload)
        except PayloadError as exc:
            raise _Problem(422, str(exc), exc.field) from None
        try:
            if len(X) <= INLINE_MAX_ROWS:
                output = served.model.predict_array(X)
            else:
                output = await run_in_threadpool(served.model.predict_array, X)
        except Exception as exc:
            log.exception("%s failed to predict", served.version.ref)
            raise _Problem(500, f"the model failed on this input: {type(exc).__name__}: {exc}") from None
        body = {
            "predictions": _predictions(output),
            "model": {"name": served.version.name, "version": served.version.version},
        }
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
            headers={"x-model-version": str(served.version.version)},
        )

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        served = self.current
        if served is not None:
            return _json({"ready": True, "model": served.describe()})
        status = "failed" if self.load_error else "loading"
        return _json({"ready": False, "status": status, "error": self.load_error, "ref": self.source.ref}, 503)

    async def version(self, request: Request) -> Response:
        served = self.current
        if served is None:
            raise _Problem(503, f"no model is loaded yet for {self.source.ref}; see GET /readyz")
        return _json({**served.describe(), "ref": self.source.ref})

    async def reload(self, request: Request) -> Response:
        if self._token is None:
            raise _Problem(403, "management endpoints are disabled; start the server with a token "
                                "(environment variable CONVEYOR_SERVER_TOKEN)")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._token):
            return _json({"error": "send the server's token as 'Authorization: Bearer <token>'"}, 401,
                         {"www-authenticate": "Bearer"})
        try:
            previous, served = await self._swap_to_latest()
        except ConveyorError as exc:
            return self._reload_failed(409, str(exc))
        except Exception as exc:
            log.exception("reload of %s failed", self.source.ref)
            return self._reload_failed(500, f"{type(exc).__name__}: {exc}")
        return _json({
            "model": served.describe(),
            "previous": previous.describe() if previous else None,
            "changed": previous is not served,
        })

    def _reload_failed(self, status: int, reason: str) -> Response:
        kept = self.current
        return _json({
            "error": f"reload of {self.source.ref} failed, "
                     + (f"still serving {kept.version.ref}" if kept else "nothing is served") + f": {reason}",
            "model": kept.describe() if kept else None,
        }, status)
