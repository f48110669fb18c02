"""Which version answers a request while a rollout splits traffic.

A `Split` (the traffic in force and the candidate, loaded and warmed) is one
attribute of the app, swapped as a whole and read once per request. Canary:
`share` percent of requests are predicted by the candidate; a request the
candidate fails on is counted against it and answered by stable, so a bad
candidate costs its own record, never a client's answer. Shadow: stable
answers every request, and a copy of `share` percent goes to the candidate
afterwards (at most `MAX_SHADOW_IN_FLIGHT` at once), counted and never
answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.serving.rollout import Traffic

if TYPE_CHECKING:
    import numpy as np

    from conveyor.serving.app import Served
    from conveyor.serving.metrics import ServingMetrics

log = logging.getLogger("conveyor.serving")

MAX_SHADOW_IN_FLIGHT = 256
"""Shadow predictions waiting or running at once; beyond that, copies are dropped, never queued."""


@dataclass(frozen=True, eq=False)
class Split:
    """The traffic in force and the candidate it sends requests to."""

    traffic: Traffic
    candidate: Served


class Router:
    """Predicts with stable or the candidate, per the split; records every prediction by version."""

    def __init__(self, metrics: ServingMetrics | None) -> None:
        self.metrics = metrics
        self.split: Split | None = None
        self._shadows: set[asyncio.Task[None]] = set()

    def _record(self, served: Served, outcome: str, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_prediction(served.version.name, served.version.version, outcome, seconds)

    async def _call(self, served: Served, X: np.ndarray) -> np.ndarray:
        assert served.predictor is not None, "installed with a predictor"
        return await served.predictor.predict(X)

    async def predict(self, stable: Served, X: np.ndarray,
                      answer: Callable[[Served, np.ndarray], Awaitable[np.ndarray]]) -> tuple[Served, np.ndarray]:
        """The version that answered and its predictions; `answer` predicts with stable (and reports failures)."""
        split = self.split
        if split is not None and split.traffic.mode == "canary" and random.random() * 100 < split.traffic.share:
            started = time.perf_counter()
            try:
                output = await self._call(split.candidate, X)
            except Exception as exc:  # counted against the candidate; stable answers
                self._record(split.candidate, "error", None)
                log.warning("canary %s failed (stable answers): %s: %s", split.candidate.version.ref,
                            type(exc).__name__, exc)
            else:
                self._record(split.candidate, "ok", time.perf_counter() - started)
                return split.candidate, output
        started = time.perf_counter()
        try:
            output = await answer(stable, X)
        except Exception:
            self._record(stable, "error", None)
            raise
        self._record(stable, "ok", time.perf_counter() - started)
        if split is not None and split.traffic.mode == "shadow" and random.random() * 100 < split.traffic.share:
            self._shadow(split.candidate, X)
        return stable, output

    def _shadow(self, candidate: Served, X: np.ndarray) -> None:
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            return

        async def run() -> None:
            started = time.perf_counter()
            try:
                await self._call(candidate, X)
            except Exception:  # recorded; a shadow never answers anyone
                self._record(candidate, "shadow_error", None)
            else:
                self._record(candidate, "shadow_ok", time.perf_counter() - started)

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
