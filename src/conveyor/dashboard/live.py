"""What is live where, and how it is doing: the servers' state and their `/metrics`.

`live_servers` is the one place that knows where deployments are recorded:
the local target's `.conveyor/server.json`, and, while a canary or shadow
runs, the split the server reports (`GET /-/state`) as more `Share`s; with
`deploy.target: container`, the deployment's running containers (listed by
the engine, by label). It reads the records and asks the servers over HTTP;
unlike `deploy.local.current` it never rewrites or removes a record, since
the dashboard changes nothing.

Request rate, error rate and p99 latency come from the server's Prometheus
text, parsed with prometheus_client's parser: the rate and the window's
error rate and p99 are the difference between this scrape and one about a
minute old (a `Scrapes` keeps the recent ones per server), or the whole life
of the server on the first scrape.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.processes import alive
from conveyor.project import Project

SCRAPE_TIMEOUT_S = 2.0
"""How long the dashboard waits for a server's /version or /metrics."""

PREDICTION_METHOD = "POST"
"""Requests counted as traffic: the prediction routes (predict, invocations, infer) are POSTs;
the GETs of health checks, scrapes and this dashboard are not traffic."""


@dataclass(frozen=True)
class Share:
    """One version's part of a deployment's traffic."""

    version: int
    percent: float
    role: str  # stable | canary | shadow


@dataclass(frozen=True)
class LiveServer:
    """A deployment as the dashboard shows it."""

    target: str
    ref: str
    name: str | None
    version: int | None
    digest: str | None
    url: str
    pid: int
    started_at: str
    status: str  # ready | starting | unreachable
    traffic: list[Share] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(host: str, port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=SCRAPE_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _split(host: str, port: int, token: str, stable: int) -> list[Share]:
    """Stable's and the candidate's shares while a canary or shadow runs (GET /-/state, which needs the
    server's management token from its 0600 record), or [] when no split is on or the server cannot say."""
    try:
        code, body = _get(host, port, "/-/state", token)
        answer: dict[str, Any] = json.loads(body) if code == 200 else {}
        traffic: dict[str, Any] = answer["traffic"]
        candidate: dict[str, Any] = answer["candidate"]
        share, mode, version = float(traffic["share"]), str(traffic["mode"]), int(candidate["version"])
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError, AttributeError):
        return []
    if share <= 0 or mode not in ("canary", "shadow"):
        return []
    if mode == "shadow":  # a shadow gets copies: stable still answers every request
        return [Share(stable, 100.0, "stable"), Share(version, share, "shadow")]
    return [Share(stable, 100.0 - share, "stable"), Share(version, share, "canary")]


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _served(host: str, port: int) -> tuple[str | None, int | None, str | None] | None:
    """What a server answers on /version (name, version, digest), or None when it does not answer."""
    try:
        code, body = _get(host, port, "/version")
        served = json.loads(body) if code == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if not isinstance(served, dict) or not isinstance(served.get("version"), int):
        return None
    name, digest = served.get("name"), served.get("digest")
    return (name if isinstance(name, str) else None, served["version"], digest if isinstance(digest, str) else None)


def container_servers(project: Project) -> list[LiveServer]:
    """The container target's running containers (`deploy.target: container`), with what each serves now."""
    from conveyor import config as config_module
    from conveyor.deploy import container
    from conveyor.exceptions import ConveyorError

    try:
        settings = config_module.load(project.root)  # no state_dir: its parse cache is a write
        if settings.deploy.target != "container":
            return []
        deployment = settings.deploy.container.deployment(settings.model.name)
        running = [c for c in container.containers(deployment, engine=settings.deploy.container.engine) if c.running]
    except ConveyorError:
        return []
    servers = []
    for found in running:
        served = _served("127.0.0.1", found.port)
        name, version, digest = served if served is not None else (None, None, None)
        servers.append(LiveServer(
            target="container", ref=container.serving_ref(project.state_dir, deployment, found), name=name,
            version=version, digest=digest, url=found.url, pid=0, started_at=found.created,
            status="ready" if served is not None else "unreachable",
            traffic=[Share(version, 100.0, "stable")] if version is not None else []))
    return servers


def live_servers(project: Project) -> list[LiveServer]:
    """The deployments of `project` that run, with what each serves now."""
    return _local_server(project) + container_servers(project)


def _local_server(project: Project) -> list[LiveServer]:
    try:
        state = json.loads(project.server_state_path.read_text(encoding="utf-8"))
        host, port, pid = str(state["host"]), int(state["port"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not alive(pid):
        return []
    name, version, digest = state.get("name"), state.get("version"), state.get("digest")
    served = _served(host, port)
    if served is not None:
        (name, version, digest), status = served, "ready"
    else:
        status = "starting" if state.get("status") == "starting" else "unreachable"
    traffic = [Share(int(version), 100.0, "stable")] if isinstance(version, int) else []
    if status == "ready" and isinstance(version, int) and isinstance(state.get("token"), str):
        traffic = _split(host, port, state["token"], version) or traffic
    return [LiveServer(target="local", ref=str(state.get("ref", "")), name=name if isinstance(name, str) else None,
                       version=version if isinstance(version, int) else None,
                       digest=digest if isinstance(digest, str) else None, url=_url(host, port), pid=pid,
                       started_at=str(state.get("started_at", "")), status=status, traffic=traffic)]


# -- metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Cumulative traffic numbers of one scrape."""

    at: float
    requests: float
    errors: float
    buckets: dict[float, float]  # latency upper bound (s) -> requests at most that slow


@dataclass(frozen=True)
class Numbers:
    """What the deployments page shows for one server."""

    url: str
    requests_per_s: float | None
    error_rate: float | None
    p99_ms: float | None
    requests: float
    window_s: float | None  # None: over the server's whole life (first scrape)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_counts(text: str, at: float) -> Counts:
    """Prediction requests, 5xx answers and latency buckets from Prometheus text (`conveyor_` metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("method") != PREDICTION_METHOD or sample.labels.get("route") == "/-/reload":
                continue
            if sample.name == "conveyor_requests_total":
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "conveyor_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Counts(at, requests, errors, buckets)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The `q` quantile of a cumulative histogram, interpolated within its bucket (as PromQL does)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def numbers(url: str, now: Counts, before: Counts | None) -> Numbers:
    """Rate, error rate and p99 between two scrapes (or over the server's life when there is no earlier one)."""
    if before is not None and now.requests >= before.requests and now.at > before.at:
        requests = now.requests - before.requests
        errors = now.errors - before.errors
        buckets = {b: now.buckets[b] - before.buckets.get(b, 0.0) for b in now.buckets}
        window: float | None = now.at - before.at
        rate: float | None = requests / (now.at - before.at)
    else:
        requests, errors, buckets, window, rate = now.requests, now.errors, now.buckets, None, None
    p99 = quantile(buckets, 0.99)
    return Numbers(url=url, requests_per_s=rate, error_rate=errors / requests if requests else None,
                   p99_ms=None if p99 is None else p99 * 1000.0, requests=now.requests, window_s=window)


WINDOW_S = 60.0
"""The live numbers cover about the last minute: long enough that a burst stays visible between refreshes."""


class Scrapes:
    """Recent scrapes of each server, so that the next one can tell a rate (shared by the app's requests)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, list[Counts]] = {}
        self._lock = threading.Lock()

    def scrape(self, url: str) -> Numbers:
        """Read `url`'s /metrics now and compare it with the previous scrape."""
        host, _, port = url.removeprefix("http://").rpartition(":")
        try:
            code, body = _get(host.strip("[]"), int(port), "/metrics")
            if code != 200:
                raise OSError(f"/metrics answered {code}")
            now = parse_counts(body.decode("utf-8", "replace"), time.monotonic())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Numbers(url, None, None, None, 0.0, None, error=f"cannot read {url}/metrics: {exc}")
        return self.record(url, now)

    def record(self, url: str, now: Counts) -> Numbers:
        """Add a scrape of `url` and compare it with the one about a window earlier."""
        with self._lock:
            samples = self._samples.setdefault(url, [])
            if samples and now.requests < samples[-1].requests:
                samples.clear()  # counters went down: the server restarted
            samples.append(now)
            # Keep the newest sample at least a window old as the baseline, and what came after it.
            while len(samples) > 2 and now.at - samples[1].at >= self.window_s:
                samples.pop(0)
            before = samples[0] if len(samples) > 1 else None
        return numbers(url, now, before)

