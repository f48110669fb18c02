"""Serving metrics: private registries, route-template labels, the /metrics endpoint, the access log."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.serving.metrics import UNMATCHED, MetricsMiddleware, ServingMetrics


def samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def test_recorded_observations_render_with_their_labels_and_counts() -> None:
    metrics = ServingMetrics()
    metrics.set_model("iris", 3)
    for _ in range(3):
        metrics.observe_request("/v2/models/{name}/infer", 200, 0.002)
    metrics.observe_request("/v2/models/{name}/infer", 422, 0.0004)
    metrics.observe_request("/predict", 200, 0.01, version=2)
    metrics.observe_batch(1)
    metrics.observe_batch(40)
    metrics.observe_load(1.5)

    got = samples(metrics)
    ok = labels(route="/v2/models/{name}/infer", method="POST", status="200", model="iris", version="3")
    assert got[("conveyor_requests_total", ok)] == 3
    bad = labels(route="/v2/models/{name}/infer", method="POST", status="422", model="iris", version="3")
    assert got[("conveyor_requests_total", bad)] == 1
    old = labels(route="/predict", method="POST", status="200", model="iris", version="2")
    assert got[("conveyor_requests_total", old)] == 1
    assert got[("conveyor_request_duration_seconds_count", ok)] == 3
    assert got[("conveyor_request_duration_seconds_sum", ok)] == pytest.approx(0.006)
    assert got[("conveyor_request_duration_seconds_bucket", ok | {("le", "0.0025")})] == 3
    assert got[("conveyor_request_duration_seconds_bucket", bad | {("le", "0.0005")})] == 1
    model = labels(model="iris", version="3")
    assert got[("conveyor_batch_size_rows_count", model)] == 2
    assert got[("conveyor_batch_size_rows_sum", model)] == 41
    assert got[("conveyor_batch_size_rows_bucket", model | {("le", "1.0")})] == 1
    assert got[("conveyor_model_load_seconds_sum", model)] == 1.5
    assert got[("conveyor_model_loaded_timestamp_seconds", model)] > 1e9


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.observe_request("/predict", 200, 0.001)
    assert any(name == "conveyor_requests_total" for name, _ in samples(first))
    assert not any(name == "conveyor_requests_total" for name, _ in samples(second))
    assert REGISTRY.get_sample_value("conveyor_requests_total") is None


async def _predict(request: Request) -> Response:
    if request.path_params["name"] == "boom":
        raise RuntimeError("boom")
    return JSONResponse({"ok": True}, headers={"x-model-version": "7"})


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _client(metrics: ServingMetrics, *, access_log: bool = False) -> httpx.AsyncClient:
    app = Starlette(routes=[
        Route("/v2/models/{name}/infer", _predict, methods=["POST"]),
        Route("/healthz", _healthz),
    ])
    wrapped = MetricsMiddleware(app, metrics, access_log=access_log)
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def test_the_middleware_labels_requests_by_route_template_and_serves_metrics() -> None:
    import asyncio

    metrics = ServingMetrics()
    metrics.set_model("iris", 6)

    async def main() -> httpx.Response:
        async with _client(metrics) as client:
            for name in ("a", "b", "c"):
                assert (await client.post(f"/v2/models/{name}/infer")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/no/such/path/1")).status_code == 404
            assert (await client.get("/no/such/path/2")).status_code == 404
            assert (await client.get("/v2/models/a/infer")).status_code == 405
            assert (await client.post("/v2/models/boom/infer")).status_code == 500
            assert (await client.post("/metrics")).status_code == 405
            return await client.get("/metrics")

    response = asyncio.run(main())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    infer = "/v2/models/{name}/infer"
    assert got[("conveyor_requests_total", labels(route=infer, method="POST", status="200",
                                                  model="iris", version="7"))] == 3
    assert got[("conveyor_requests_total", labels(route="/healthz", method="GET", status="200",
                                                  model="iris", version="6"))] == 1
    assert got[("conveyor_requests_total", labels(route=UNMATCHED, method="GET", status="404",
                                                  model="iris", version="6"))] == 2
    assert got[("conveyor_requests_total", labels(route=infer, method="GET", status="405",
                                                  model="iris", version="6"))] == 1
    assert got[("conveyor_requests_total", labels(route=infer, method="POST", status="500",
                                                  model="iris", version="6"))] == 1
    routes = {dict(key)["route"] for name, key in got if name == "conveyor_requests_total"}
    assert routes == {infer, "/healthz", UNMATCHED, "/metrics"}, "a raw path leaked into a label"


def test_the_access_log_is_one_json_line_per_request_and_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    metrics = ServingMetrics()
    metrics.set_model("iris", 6)

    async def main(access_log: bool) -> None:
        async with _client(metrics, access_log=access_log) as client:
            await client.post("/v2/models/a/infer")
            await client.get("/nope")

    with caplog.at_level(logging.INFO, logger="conveyor.access"):
        asyncio.run(main(False))
        assert not [r for r in caplog.records if r.name == "conveyor.access"]
        asyncio.run(main(True))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "conveyor.access"]
    assert len(lines) == 2
    first, second = lines
    assert first["method"] == "POST" and first["path"] == "/v2/models/a/infer"
    assert first["route"] == "/v2/models/{name}/infer"
    assert first["status"] == 200 and first["model"] == "iris" and first["version"] == "7"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert second["status"] == 404 and second["version"] == "6" and second["route"] == UNMATCHED


def test_a_batcher_feeds_the_batch_histogram() -> None:
    import asyncio

    import numpy as np

    from conveyor.serving.batching import MicroBatcher

    metrics = ServingMetrics()
    metrics.set_model("iris", 1)

    async def main() -> None:
        batcher = MicroBatcher(lambda X: X.sum(axis=1), on_batch=metrics.observe_batch)
        await asyncio.gather(*(batcher.predict(np.ones((1, 3))) for _ in range(50)))
        await batcher.close()

    asyncio.run(main())
    got = samples(metrics)
    assert got[("conveyor_batch_size_rows_sum", labels(model="iris", version="1"))] == 50
    assert got[("conveyor_batch_size_rows_count", labels(model="iris", version="1"))] < 50
