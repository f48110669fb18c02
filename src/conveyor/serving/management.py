"""The server's management endpoints: reload, deploy, traffic, restart and state, behind the bearer token.

A mixin of `ServingApp`, kept apart from the prediction routes: every
endpoint here first checks `Authorization: Bearer <token>` (`auth`) and
answers 401 without changing anything when it is missing or wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from conveyor import defaults
from conveyor.exceptions import ConveyorError
from conveyor.serving.auth import UNAUTHORIZED, authorized
from conveyor.serving.rollout import Traffic
from conveyor.serving.routing import Router

if TYPE_CHECKING:
    from conveyor.serving.app import ModelSource, Served

log = logging.getLogger("conveyor.serving")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


class ManagementEndpoints:
    """POST /-/reload, /-/deploy, /-/traffic, /-/restart and GET /-/state (mixed into `ServingApp`)."""

    source: ModelSource
    current: Served | None
    load_error: str | None
    router: Router
    _token: bytes | None
    _on_reload: Callable[[], None] | None
    _on_restart: Callable[[], None] | None
    _in_step: Callable[[str], bool] | None
    _shared_traffic: tuple[Callable[[], Traffic | None], Callable[[Traffic | None], None]]
    _cache: OrderedDict[str, Served]
    _follow_interval_s: float | None
    _extra_state: Callable[[], dict[str, Any]] | None

    async def _swap_to_latest(self, ref: str | None = None) -> tuple[Served | None, Served]:
        raise NotImplementedError

    async def _read_json(self, request: Request) -> Any:
        raise NotImplementedError

    async def deploy(self, request: Request) -> Response:
        """Serve and follow another reference (`{"ref": "iris@3"}`, `{"ref": "iris@production"}`), every worker."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await self._read_json(request)
        ref = body.get("ref") if isinstance(body, dict) else None
        if not isinstance(ref, str) or not ref:
            return _json({"error": 'send {"ref": "NAME@VERSION|NAME@ALIAS"}', "field": "ref"}, 422)
        return await self.reload(request, ref)

    async def traffic(self, request: Request) -> Response:
        """Split traffic: `{"candidate": "iris@3", "share": 10, "mode": "canary"|"shadow"}`; `{"share": 0}` ends it.
        `"compare": true`: stable predicts a canary's requests too, and the two are compared and counted.

        Stable is pinned to the version served now (or `"stable"`) while the split lasts.
        """
        refused = self._refuse(request)
        if refused is not None:
            return refused
        body = await self._read_json(request)
        if not isinstance(body, dict):
            return _json({"error": 'send {"candidate": "NAME@VERSION", "share": PERCENT, "mode": "canary"}',
                          "field": "body"}, 422)
        try:
            share = float(body.get("share") or 0)
            candidate = body.get("candidate")
            new = None
            if share > 0:
                if not isinstance(candidate, str) or not candidate:
                    raise ValueError("candidate: name the version that gets the share, e.g. iris@3")
                stable = body.get("stable") or (self.current.version.ref if self.current else None)
                if not isinstance(stable, str):
                    raise ValueError("stable: nothing is served yet; name the stable version")
                compare = body.get("compare", False)
                if not isinstance(compare, bool):
                    raise ValueError(f"compare: must be true or false, not {compare!r}")
                new = Traffic(stable, candidate, share, body.get("mode", "canary"), compare)
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc), "field": "body"}, 422)
        read, write = self._shared_traffic
        old = read()
        write(new)
        try:
            _, served = await self._swap_to_latest()
        except Exception as exc:
            write(old)
            with contextlib.suppress(Exception):
                await self._swap_to_latest()
            return self._reload_failed(409, str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}")
        if self._on_reload is not None:
            self._on_reload()
        split = self.router.split
        return _json({"model": served.describe(), "candidate": split.candidate.describe() if split else None,
                      "traffic": dataclasses.asdict(split.traffic) if split else None})

    async def reload(self, request: Request, ref: str | None = None) -> Response:
        """Resolve the followed reference (or `ref`, which is followed from then on) again and swap, every worker."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            previous, served = await self._swap_to_latest(ref)
        except ConveyorError as exc:
            return self._reload_failed(409, str(exc))
        except Exception as exc:
            log.exception("reload of %s failed", self.source.ref)
            return self._reload_failed(500, f"{type(exc).__name__}: {exc}")
        if self._on_reload is not None:
            self._on_reload()
        return _json({
            "model": served.describe(),
            "previous": previous.describe() if previous else None,
            "changed": previous is not served,
            "all_workers": await self._wait_in_step(served.version.digest),
        })

    async def _wait_in_step(self, digest: str) -> bool:
        """Wait until every worker serves `digest`, so that a reload's answer holds for every request after it."""
        if self._in_step is None:
            return True
        deadline = time.monotonic() + defaults.RELOAD_IN_STEP_TIMEOUT_S
        while not self._in_step(digest):
            if time.monotonic() > deadline:
                log.warning("not every worker serves %s after %.0fs", digest, defaults.RELOAD_IN_STEP_TIMEOUT_S)
                return False
            await asyncio.sleep(0.02)
        return True

    def _refuse(self, request: Request) -> Response | None:
        """The answer to a management request without the right token, or None when it may go ahead."""
        if self._token is None:
            return _json({"error": "management endpoints are disabled; start the server with a token "
                                   "(environment variable CONVEYOR_SERVER_TOKEN)"}, 403)
        if not authorized(request, self._token):
            return _json({"error": UNAUTHORIZED}, 401, {"www-authenticate": "Bearer"})
        return None

    async def restart(self, request: Request) -> Response:
        """Ask the supervisor to replace every worker, one at a time (new code, new dependencies)."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        if self._on_restart is None:
            return _json({"error": "this server runs without a worker supervisor; restart its process"}, 409)
        self._on_restart()
        return _json({"restarting": True}, 202)

    async def state(self, request: Request) -> Response:
        """What this worker serves and holds in memory (management: it names artifact digests)."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        served = self.current
        return _json({
            "ref": self.source.ref,
            "pid": os.getpid(),
            "model": served.describe() if served else None,
            "in_memory": [kept.describe() for kept in self._cache.values()],
            "traffic": dataclasses.asdict(self.router.split.traffic) if self.router.split else None,
            "candidate": self.router.split.candidate.describe() if self.router.split else None,
            "following": self._follow_interval_s,
            "error": self.load_error,
            **(self._extra_state() if self._extra_state else {}),
        })

    def _reload_failed(self, status: int, reason: str) -> Response:
        kept = self.current
        return _json({
            "error": f"reload of {self.source.ref} failed, "
                     + (f"still serving {kept.version.ref}" if kept else "nothing is served") + f": {reason}",
            "model": kept.describe() if kept else None,
        }, status)
