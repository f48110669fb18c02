"""Prometheus metrics and the access log of the model server.

`ServingMetrics` owns a private `CollectorRegistry`, never the process-wide
one, so several apps (and tests) in one process keep their own counts.
`MetricsMiddleware` wraps the ASGI app: it times every HTTP request, labels
it with the route template (`/predict`, `/v2/models/{name}/infer`), never the
raw path, so a client cannot mint new time series, answers GET on the
metrics path itself, and writes one JSON line per request to the
`conveyor.access` logger when the access log is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MetricsMiddleware", "ServingMetrics", "route_template"]

access_log = logging.getLogger("conveyor.access")

UNMATCHED = "<unmatched>"
"""The route label of a request no route matched (a 404): one series, whatever the path."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; a small model answers in well under a millisecond, so the buckets start there."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
"""Rows per model call."""

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds to materialise, verify, load and warm a version."""


class ServingMetrics:
    """The server's metrics, in a registry of their own.

    Every series carries `model` and `version` labels. They default to the
    version set with `set_model` (call it when a version is swapped in); a
    request can name the version that actually answered it instead.
    """

    def __init__(self, *, namespace: str = "conveyor", multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: where prometheus_client's multiprocess mode keeps every worker's
        values (PROMETHEUS_MULTIPROC_DIR, set before prometheus_client was imported), so that a
        scrape answered by any worker counts the requests of all of them."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.model = ""
        self.version = ""
        labels = ["model", "version"]
        self._requests = Counter(
            "requests", "HTTP requests answered, by route template and status.",
            ["route", "method", "status", *labels], namespace=namespace, registry=self.registry,
        )
        self._latency = Histogram(
            "request_duration_seconds", "Time to answer an HTTP request, by route template and status.",
            ["route", "method", "status", *labels], namespace=namespace, registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self._batch = Histogram(
            "batch_size_rows", "Rows per call of the model's predict (one call per batch).",
            labels, namespace=namespace, registry=self.registry, buckets=BATCH_BUCKETS,
        )
        self._load = Histogram(
            "model_load_seconds", "Time to load and warm a model version.",
            labels, namespace=namespace, registry=self.registry, buckets=LOAD_BUCKETS,
        )
        self._loaded_at = Gauge(
            "model_loaded_timestamp_seconds", "When the version being served was swapped in (Unix time).",
            labels, namespace=namespace, registry=self.registry, multiprocess_mode="max",
        )

        self._predictions = Counter(
            "predictions", "Predictions by the version that made them and their outcome (ok, error, "
            "shadow_ok, shadow_error); what a canary is judged on.",
            [*labels, "outcome"], namespace=namespace, registry=self.registry,
        )
        self._prediction_seconds = Histogram(
            "prediction_seconds", "Time a version took to predict, per call; a canary's p99 comes from it.",
            labels, namespace=namespace, registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self._comparisons = Counter(
            "comparisons", "A candidate's predictions compared with stable's on the same request, by mode (canary, "
            "shadow) and whether they agreed (yes, no); a canary's max_disagreement is judged on it.",
            [*labels, "mode", "agree"], namespace=namespace, registry=self.registry,
        )

    def observe_comparison(self, model: str, version: str | int, mode: str, agree: bool) -> None:
        """Count one prediction of candidate `version` compared with stable's (`mode`: canary or shadow)."""
        self._comparisons.labels(model, str(version), mode, "yes" if agree else "no").inc()

    def observe_prediction(self, model: str, version: str | int, outcome: str, seconds: float | None) -> None:
        """Count one prediction of `version` (`outcome`: ok, error, shadow_ok, shadow_error)."""
        self._predictions.labels(model, str(version), outcome).inc()
        if seconds is not None:
            self._prediction_seconds.labels(model, str(version)).observe(seconds)

    def set_model(self, name: str, version: str | int) -> None:
        """Label what follows with this model version, and record when it was swapped in."""
        self.model, self.version = name, str(version)
        self._loaded_at.labels(self.model, self.version).set_to_current_time()

    def _labels(self, model: str | None, version: str | int | None) -> tuple[str, str]:
        return (self.model if model is None else model, self.version if version is None else str(version))

    def observe_request(
        self,
        route: str,
        status: int,
        seconds: float,
        *,
        method: str = "POST",
        model: str | None = None,
        version: str | int | None = None,
    ) -> None:
        """Count one answered request; `route` must be a template, not the raw path."""
        labels = (route, method, str(status), *self._labels(model, version))
        self._requests.labels(*labels).inc()
        self._latency.labels(*labels).observe(seconds)

    def observe_batch(self, size: int, *, model: str | None = None, version: str | int | None = None) -> None:
        """Record one model call on `size` rows (pass as a batcher's `on_batch`)."""
        self._batch.labels(*self._labels(model, version)).observe(size)

    def observe_load(self, seconds: float, *, model: str | None = None, version: str | int | None = None) -> None:
        """Record how long loading a version took."""
        self._load.labels(*self._labels(model, version)).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST


def route_template(scope: Scope) -> str:
    """The path template of the Starlette route that matched `scope`, else `UNMATCHED`.

    Starlette's router stores the matched route in `scope["route"]` while
    dispatching, on the same scope dict the middleware holds, so this is
    read after the app has answered.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class MetricsMiddleware:
    """ASGI middleware: request metrics, the `/metrics` endpoint and the access log.

    `route_of(scope)` names the route template after the app has answered.
    `metrics_path` is answered here (GET), None to leave it to the app.
    `access_log=True` writes one JSON line per request to `conveyor.access`.
    The model version label comes from the response's `x-model-version`
    header when there is one, else from `metrics.set_model`.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServingMetrics,
        *,
        route_of: Callable[[Scope], str] = route_template,
        metrics_path: str | None = "/metrics",
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of
        self.metrics_path = metrics_path
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        version: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, version
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-model-version":
                        version = value.decode("latin-1")
            await send(message)

        if self.metrics_path is not None and scope["path"] == self.metrics_path:
            route = self.metrics_path
            await self._serve_metrics(scope, send_wrapper)
            self._record(scope, route, status, start, version)
            return
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # An exception that escaped the app is answered 500 by the server.
            self._record(scope, self.route_of(scope), status, start, version)

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            body, status, content_type = b'{"error":"use GET /metrics"}', 405, "application/json"
        else:
            body, content_type = self.metrics.render()
            status = 200
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def _record(self, scope: Scope, route: str, status: int, start: float, version: str | None) -> None:
        seconds = time.perf_counter() - start
        method = str(scope.get("method", ""))
        self.metrics.observe_request(route, status, seconds, method=method, version=version)
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps({
                "method": method,
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "model": self.metrics.model or None,
                "version": version if version is not None else (self.metrics.version or None),
            }).decode())
