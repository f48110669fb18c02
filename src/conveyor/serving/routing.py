"""Which version answers a request while a rollout splits traffic.

A `Split` (the traffic in force and the candidate, loaded and warmed) is one
attribute of the app, swapped as a whole and read once per request. Canary:
`share` percent of requests are predicted by the candidate; a request the
candidate fails on is counted against it and answered by stable, so a bad
candidate costs its own record, never a client's answer. With `compare` set
(a canary judged on disagreement), stable predicts those requests too and the
two answers are compared and counted. Shadow: stable answers every request,
and a copy of `share` percent goes to the candidate afterwards (at most
`MAX_SHADOW_IN_FLIGHT` at once), counted, compared with stable's answer and
never answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.serving.rollout import Traffic, same_predictions

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

    def _compare(self, candidate: Served, mode: str, output: np.ndarray, stable_output: np.ndarray) -> None:
        if self.metrics is not None:
            self.metrics.observe_comparison(candidate.version.name, candidate.version.version, mode,
                                            same_predictions(output, stable_output))

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
                if split.traffic.compare:
                    await self._compare_with_stable(split.candidate, output, stable, X)
                return split.candidate, output
        started = time.perf_counter()
        try:
            output = await answer(stable, X)
        except Exception:
            self._record(stable, "error", None)
            raise
        self._record(stable, "ok", time.perf_counter() - started)
        if split is not None and split.traffic.mode == "shadow" and random.random() * 100 < split.traffic.share:
            self._shadow(split.candidate, X, output)
        return stable, output

    async def _compare_with_stable(self, candidate: Served, output: np.ndarray, stable: Served,
                                   X: np.ndarray) -> None:
        """Stable's prediction of what the candidate answered, compared; a stable that fails here is counted
        against stable and leaves no comparison (the client still gets the candidate's answer)."""
        started = time.perf_counter()
        try:
            stable_output = await self._call(stable, X)
        except Exception as exc:
            self._record(stable, "error", None)
            log.warning("stable %s failed on a compared canary request: %s: %s", stable.version.ref,
                        type(exc).__name__, exc)
            return
        self._record(stable, "ok", time.perf_counter() - started)
        self._compare(candidate, "canary", output, stable_output)

    def _shadow(self, candidate: Served, X: np.ndarray, stable_output: np.ndarray) -> None:
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            return

        async def run() -> None:
            started = time.perf_counter()
            try:
                output = await self._call(candidate, X)
            except Exception:  # recorded; a shadow never answers anyone
                self._record(candidate, "shadow_error", None)
            else:
                self._record(candidate, "shadow_ok", time.perf_counter() - started)
                self._compare(candidate, "shadow", output, stable_output)

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
