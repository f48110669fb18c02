"""The prediction API: one ASGI app serving the model version a reference points to.

`ServingApp` holds the version being served. A reload resolves the followed
reference again, loads and warms the new version beside the old one, and only
then swaps one attribute; a request reads that attribute once, so the version
in its `X-Model-Version` header is the one that predicted. A server that
follows an alias looks it up every `follow_interval_s` and swaps the same way;
the last few versions stay in memory, so a rollback is a swap. While a rollout
splits traffic, `routing.Router` picks stable or the candidate per request.
The management endpoints live in `management`. A client's mistake gets a 4xx
that says what is wrong; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from conveyor import __version__, defaults
from conveyor.exceptions import ConveyorError, PayloadError, ServingError
from conveyor.model import LoadedModel, load_verified
from conveyor.serving import mlflow_protocol, oip, openapi
from conveyor.serving.auth import UNAUTHORIZED, authorized
from conveyor.serving.batching import DirectPredictor, MicroBatcher, Predictor
from conveyor.serving.management import ManagementEndpoints
from conveyor.serving.metrics import ServingMetrics
from conveyor.serving.rollout import Traffic
from conveyor.serving.routing import Router, Split
from conveyor.signature import parse_payload
from conveyor.store import ArtifactStore

if TYPE_CHECKING:
    import numpy as np

    from conveyor.registry import ModelVersion, Registry

log = logging.getLogger("conveyor.serving")


@dataclass(eq=False)
class Served:
    """A model version in memory, ready to answer."""

    version: ModelVersion
    model: LoadedModel
    loaded_at: float
    load_seconds: float = 0.0
    predictor: Predictor | None = None  # set by the app: micro-batched or direct calls to `model`

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

    def resolve(self, ref: str | None = None) -> ModelVersion:
        """The version `ref` (by default the followed reference) points to now."""
        return self.registry.resolve(ref or self.ref)

    def load(self, version: ModelVersion) -> Served:
        """Materialise, verify, load and warm `version`; raise `ConveyorError` saying why it cannot serve."""
        started = time.perf_counter()
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
        return Served(version, model, time.time(), load_seconds=time.perf_counter() - started)


class _Problem(Exception):
    """A request we answer with a 4xx (or 5xx) JSON error instead of a prediction."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        self.status, self.error, self.field = status, error, field


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _answer(body: Any, served: Served) -> Response:
    """A prediction response, stamped with the version that made it (not whatever is current by now)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={"x-model-version": str(served.version.version)},
    )


def _is_prediction(scope: Scope) -> bool:
    """Whether a request asks for a prediction (the routes `deploy.predictions_need_token` guards)."""
    path: str = scope.get("path", "")
    return path in ("/predict", "/invocations") or (path.startswith("/v2/models/") and path.endswith("/infer"))


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Problem(400, f"the body is not valid JSON: {exc}", "body") from None


def _predictions(output: np.ndarray) -> Any:
    """What orjson can write fastest: the array itself when numeric, else plain lists."""
    if output.dtype.kind in "biuf" and output.flags.c_contiguous:
        return output
    return output.tolist()


class ServingApp(ManagementEndpoints):
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
        batching: bool = True,
        max_batch_rows: int = defaults.MAX_BATCH_ROWS,
        max_wait_ms: float = defaults.MAX_BATCH_WAIT_MS,
        metrics: ServingMetrics | None = None,
        on_reload: Callable[[], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        follow_interval_s: float | None = None,
        on_swap: Callable[[Served], None] | None = None,
        in_step: Callable[[str], bool] | None = None,
        shared_ref: tuple[Callable[[], str | None], Callable[[str], None]] | None = None,
        shared_traffic: tuple[Callable[[], Traffic | None], Callable[[Traffic | None], None]] | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        predict_token: str | None = None,
    ) -> None:
        self.source = source
        self._on_restart = on_restart  # asks the supervisor for a rolling restart of every worker
        self._follow_interval_s = follow_interval_s  # None: only a reload changes the version
        self._on_swap = on_swap  # tells the sibling workers what this one serves now
        self._in_step = in_step  # whether every sibling worker serves the artifact with this digest
        self._shared_ref = shared_ref  # read/write the reference all workers follow (a deploy changes it)
        self._traffic: Traffic | None = None  # the split in force when no worker shares it
        self._shared_traffic = shared_traffic or (lambda: self._traffic, self._set_local_traffic)
        self.router = Router(metrics)
        self._extra_state = extra_state  # the supervisor's side of GET /-/state (the last rolling restart)
        self._predict_token = predict_token.encode() if predict_token else None  # None: predictions are open
        self._cache: OrderedDict[str, Served] = OrderedDict()  # recent versions by digest: a rollback is a swap
        self.metrics = metrics
        self._batching = (batching, max_batch_rows, max_wait_ms)
        self._on_reload = on_reload  # tells sibling worker processes to reload too
        self.current: Served | None = None
        if served is not None:
            self._install(served)
        self.load_error: str | None = None
        self._token = token.encode() if token else None
        self._max_bytes = max_request_bytes
        self._reload_lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._app = Starlette(
            routes=[
                Route("/predict", self.predict, methods=["POST"]),
                Route("/invocations", self.invocations, methods=["POST"]),
                Route("/v2", self.v2_server),
                Route("/v2/health/live", self.v2_live),
                Route("/v2/health/ready", self.v2_ready),
                Route("/v2/models/{name}", self.v2_model),
                Route("/v2/models/{name}/versions/{version}", self.v2_model),
                Route("/v2/models/{name}/ready", self.v2_model_ready),
                Route("/v2/models/{name}/versions/{version}/ready", self.v2_model_ready),
                Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
                Route("/v2/models/{name}/versions/{version}/infer", self.v2_infer, methods=["POST"]),
                Route("/openapi.json", self.openapi_json),
                Route("/docs", self.docs),
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/version", self.version),
                Route("/-/reload", self.reload, methods=["POST"]),
                Route("/-/restart", self.restart, methods=["POST"]),
                Route("/-/deploy", self.deploy, methods=["POST"]),
                Route("/-/traffic", self.traffic, methods=["POST"]),
                Route("/-/state", self.state),
            ],
            exception_handlers={_Problem: self._problem, HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._predict_token is not None and _is_prediction(scope) and not authorized(Request(scope),
                                                                                       self._predict_token):
            await _json({"error": UNAUTHORIZED.replace("server's token", "prediction token")}, 401,
                        {"www-authenticate": "Bearer"})(scope, receive, send)
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

    def _set_local_traffic(self, traffic: Traffic | None) -> None:
        self._traffic = traffic

    def _install(self, served: Served) -> None:
        """Give `served` its predictor and make it the one that answers."""
        batching, max_rows, max_wait_ms = self._batching
        metrics, version = self.metrics, served.version
        on_batch = None if metrics is None else (lambda rows: metrics.observe_batch(rows, version=str(version.version)))
        served.predictor = (MicroBatcher(served.model.predict_array, max_batch_rows=max_rows, max_wait_ms=max_wait_ms,
                                         on_batch=on_batch)
                            if batching else DirectPredictor(served.model.predict_array, on_batch=on_batch))
        if metrics is not None:
            metrics.set_model(version.name, str(version.version))
            metrics.observe_load(served.load_seconds)
        self._cache[version.digest] = served
        self._cache.move_to_end(version.digest)
        while len(self._cache) > defaults.KEPT_VERSIONS:
            self._cache.popitem(last=False)
        self.current = served
        if self._on_swap is not None:
            self._on_swap(served)

    async def reload_from_signal(self) -> None:
        """Reload because a sibling worker was asked to (SIGHUP from the parent process)."""
        try:
            await self._swap_to_latest()
        except Exception:  # recorded in load_error, reported by /readyz; the old version keeps serving
            log.exception("reload of %s asked by a sibling worker failed", self.source.ref)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.current is None:
            self._background = asyncio.create_task(self._first_load())
        if self._follow_interval_s is not None:
            self._follower = asyncio.create_task(self._follow(self._follow_interval_s))
        yield
        for task in (self._background, self._follower):
            if task is not None and not task.done():
                task.cancel()
        if self.current is not None and self.current.predictor is not None:
            await self.current.predictor.close()

    async def _follow(self, interval_s: float) -> None:
        """Swap whenever the followed reference points elsewhere (an alias moved: a promotion, a rollback)."""
        reported = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._swap_to_latest()
                reported = None
            except Exception as exc:  # the old version keeps serving; say why once, not every interval
                reason = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
                if reason != reported:
                    log.error("following %s: %s; still serving %s", self.source.ref, reason,
                              self.current.version.ref if self.current else "nothing")
                    reported = reason

    async def _first_load(self) -> None:
        try:
            await self._swap_to_latest()
        except Exception:  # recorded in load_error, reported by /readyz
            pass

    async def _swap_to_latest(self, ref: str | None = None) -> tuple[Served | None, Served]:
        """Load what the followed ref (or `ref`, which is then followed) points to and swap it in.

        The old version serves until then; a version that fails to load or warm is never swapped in.
        """
        async with self._reload_lock:
            previous = self.current
            target = ref or (self._shared_ref[0]() if self._shared_ref else None) or self.source.ref
            traffic = self._shared_traffic[0]()
            try:
                # A rollout pins stable to a version: an alias that moves meanwhile waits for its end.
                version = await run_in_threadpool(self.source.resolve, traffic.stable if traffic else target)
                await self._split(traffic)
                if previous is not None and (version.version, version.digest) == (
                    previous.version.version, previous.version.digest
                ):
                    self._follow_ref(target, ref is not None)
                    return previous, previous
                served = await self._loaded(version)
            except Exception as exc:
                self.load_error = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
                if previous is None:
                    log.error("cannot serve %s: %s", target, self.load_error)
                raise
            self._follow_ref(target, ref is not None)
            self._install(served)
            self.load_error = None
            if previous is not None and previous.predictor is not None and previous is not served:
                await previous.predictor.close()  # answers what it already took, then stops
            old = f"v{previous.version.version}" if previous else "nothing"
            log.info("%s: now serving %s (was %s)", target, served.version.ref, old)
            return previous, served

    async def _loaded(self, version: ModelVersion) -> Served:
        cached = self._cache.get(version.digest)
        return cached if cached is not None else await run_in_threadpool(self.source.load, version)

    async def _split(self, traffic: Traffic | None) -> None:
        """Put `traffic` in force: its candidate loaded and warmed (kept in memory, like a served version)."""
        split = self.router.split
        if traffic is None or traffic.share <= 0:
            self.router.split = None
            return
        if split is not None and split.traffic == traffic:
            return
        version = await run_in_threadpool(self.source.resolve, traffic.candidate)
        candidate = await self._loaded(version)
        if candidate.predictor is None:  # called directly: no batcher task left behind when the split ends
            candidate.predictor = DirectPredictor(candidate.model.predict_array)
        self._cache[version.digest] = candidate
        self.router.split = Split(traffic, candidate)
        log.info("%s of %s: %g%% of traffic, stable %s", traffic.mode, traffic.candidate, traffic.share,
                 traffic.stable)

    def _follow_ref(self, ref: str, share: bool) -> None:
        if ref != self.source.ref:
            self.source.ref = ref
        if share and self._shared_ref is not None:
            self._shared_ref[1](ref)

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
            error = f"no route {request.url.path}; try POST /predict, GET /healthz, /readyz or /version (all: GET /docs)"
        elif exc.status_code == 405:
            error = f"{request.method} is not allowed on {request.url.path}"
        else:
            error = str(exc.detail)
        return _json({"error": error}, exc.status_code, dict(exc.headers or {}))

    # -- endpoints -------------------------------------------------------------

    async def _read_json(self, request: Request) -> Any:
        media = _media_type(request)
        if not _is_json(media):
            shown = f"'{media}'" if media else "none"
            raise _Problem(415, f"expected Content-Type: application/json, got {shown}", "content-type")
        return _parse_json(await self._read_body(request))

    async def _read_body(self, request: Request) -> bytes:
        """The request body, refused with a 413 as soon as it is over the limit."""
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
        return b"".join(chunks)

    def _served(self) -> Served:
        served = self.current
        if served is None:
            raise _Problem(503, f"no model is loaded yet for {self.source.ref}; see GET /readyz")
        return served

    async def _predict(self, served: Served, X: np.ndarray) -> np.ndarray:
        try:
            assert served.predictor is not None, "installed with a predictor"
            return await served.predictor.predict(X)
        except Exception as exc:
            log.exception("%s failed to predict", served.version.ref)
            raise _Problem(500, f"the model failed on this input: {type(exc).__name__}: {exc}") from None

    async def predict(self, request: Request) -> Response:
        served = self._served()
        payload = await self._read_json(request)
        try:
            X = parse_payload(served.model.signature, payload)
        except PayloadError as exc:
            raise _Problem(422, str(exc), exc.field) from None
        served, output = await self.router.predict(served, X, self._predict)
        body = {
            "predictions": _predictions(output),
            "model": {"name": served.version.name, "version": served.version.version},
        }
        return _answer(body, served)

    async def invocations(self, request: Request) -> Response:
        """MLflow's scoring endpoint: JSON (four forms) or CSV; errors in MLflow's shape."""
        try:
            served = self._served()
            signature = served.model.signature
            media = _media_type(request)
            if media == "text/csv":
                X = mlflow_protocol.parse_csv(signature, await self._read_body(request))
            elif _is_json(media):
                X = mlflow_protocol.parse_json(signature, _parse_json(await self._read_body(request)))
            else:
                shown = f"'{media}'" if media else "none"
                raise _Problem(415, f"Content-Type must be application/json or text/csv, got {shown}")
            served, output = await self.router.predict(served, X, self._predict)
        except PayloadError as exc:
            return _json(mlflow_protocol.error_body(400, str(exc)), 400)
        except _Problem as exc:
            message = exc.error if exc.field is None else f"{exc.field}: {exc.error}"
            return _json(mlflow_protocol.error_body(exc.status, message), exc.status)
        return _answer(mlflow_protocol.response_body(_predictions(output)), served)

    # -- Open Inference Protocol v2 ---------------------------------------------

    def _oip_served(self, request: Request) -> Served:
        """The served version if the path names it (`{name}`, optional `{version}`); else a 404."""
        served = self._served()
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != served.version.name:
            raise _Problem(404, f"model '{name}' is not served here; this server serves '{served.version.name}'")
        if version is not None and version != str(served.version.version):
            raise _Problem(404, f"version '{version}' of '{name}' is not served here; "
                                f"this server serves version {served.version.version}")
        return served

    async def v2_server(self, request: Request) -> Response:
        return _json(oip.server_metadata(__version__))

    async def v2_live(self, request: Request) -> Response:
        return _json({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self.current is not None
        return _json({"ready": ready}, 200 if ready else 503)

    async def v2_model(self, request: Request) -> Response:
        served = self._oip_served(request)
        version, model = served.version, served.model
        return _json(oip.model_metadata(version.name, version.version, model.metadata.flavor, model.signature))

    async def v2_model_ready(self, request: Request) -> Response:
        served = self._oip_served(request)
        return _json({"name": served.version.name, "ready": True})

    async def v2_infer(self, request: Request) -> Response:
        served = self._oip_served(request)
        try:
            payload = await self._read_json(request)
        except _Problem as exc:  # the protocol's errors are {"error": ...} alone
            raise _Problem(exc.status, exc.error if exc.field in (None, "body") else f"{exc.field}: {exc.error}") from None
        try:
            X = oip.parse_infer(served.model.signature, payload)
        except PayloadError as exc:
            raise _Problem(400, str(exc)) from None
        served, output = await self.router.predict(served, X, self._predict)
        request_id = payload.get("id")  # parse_infer has checked payload is an object
        dtype = served.model.signature["outputs"]["dtype"]
        return _answer(oip.infer_response(served.version.name, served.version.version, request_id, output, dtype),
                       served)

    # -- documentation ---------------------------------------------------------------

    async def openapi_json(self, request: Request) -> Response:
        served = self._served()
        version, metadata = served.version, served.model.metadata
        return _json(openapi.document(version.name, version.version, metadata.signature, metadata.sample))

    async def docs(self, request: Request) -> Response:
        served = self._served()
        version, metadata = served.version, served.model.metadata
        return HTMLResponse(openapi.docs_page(version.name, version.version, metadata.signature, metadata.sample))

    # -- probes and management ----------------------------------------------------

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
