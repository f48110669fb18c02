"""Micro-batching: concurrent predict requests coalesced into one model call.

A scikit-learn `predict` costs about the same for one row as for sixty-four:
the time goes into input validation, not arithmetic. Under concurrency the
server therefore answers more requests per second if it stacks the rows of
the requests waiting at one moment into one array, predicts once, and hands
each caller back its own slice. `MicroBatcher` does that with one background
task per served model; `DirectPredictor` has the same API and predicts each
request on its own, for when batching is switched off.

A batch never makes a lone caller wait: the worker takes whatever is queued
the moment it wakes up, and waits (at most `max_wait_ms`) for more rows only
when the queue shows concurrency, i.e. the batch it took or the one before it
held more than one request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from conveyor.exceptions import ServingError

__all__ = ["DirectPredictor", "MicroBatcher", "Predictor"]

log = logging.getLogger("conveyor.serving")

PredictFn = Callable[[np.ndarray], np.ndarray]


class Predictor(Protocol):
    """What the app calls to predict: a `MicroBatcher` or a `DirectPredictor`."""

    async def predict(self, rows: np.ndarray) -> np.ndarray: ...

    async def close(self) -> None: ...


async def _call(predict: PredictFn, rows: np.ndarray, inline_max_rows: int) -> np.ndarray:
    # A thread hand-off costs more than a small sklearn prediction (see
    # app.INLINE_MAX_ROWS); a big one must not stall the event loop.
    if len(rows) <= inline_max_rows:
        return predict(rows)
    return await asyncio.to_thread(predict, rows)


class DirectPredictor:
    """One model call per request: the `MicroBatcher` API with batching switched off.

    Requests of up to `inline_max_rows` rows predict on the event loop, larger
    ones in a worker thread. `on_batch(rows)` is called for every model call.
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        inline_max_rows: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._inline_max_rows = inline_max_rows
        self._on_batch = on_batch

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predictions for `rows`, computed now."""
        if self._on_batch is not None:
            self._on_batch(len(rows))
        return await _call(self._predict, rows, self._inline_max_rows)

    async def close(self) -> None:
        """Nothing to stop; here so the app can close either predictor."""


@dataclass(eq=False)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)

    @property
    def key(self) -> tuple[np.dtype[np.generic], tuple[int, ...]]:
        return self.rows.dtype, self.rows.shape[1:]


class MicroBatcher:
    """Coalesce concurrent `predict` calls into one call of the model's `predict`.

    `predict` takes a 2-D array and returns one output per row (a 1-D array,
    or 2-D with one row per input row). A batch holds at most `max_batch_rows`
    rows; a single request larger than that is predicted alone. When there is
    concurrency, the worker waits up to `max_wait_ms` for a batch to fill.
    Batches of up to `inline_max_rows` rows predict on the event loop, larger
    ones in a worker thread. `on_batch(rows)` is called with the size of every
    batch, e.g. to feed a histogram.

    One batcher serves one model version. After `close()`, queued calls are
    still answered and later calls predict directly, so requests that picked
    up the old batcher before a reload swapped it out still succeed.
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_rows: int = 64,
        max_wait_ms: float = 2.0,
        inline_max_rows: int = 64,
        idle_yields: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._predict = predict
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self._inline_max_rows = inline_max_rows
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._last_requests = 0
        self._idle_yields = idle_yields

    @property
    def closed(self) -> bool:
        return self._closed

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predictions for `rows` (a 2-D array), computed in a batch with other callers' rows."""
        if self._closed:
            return await _call(self._predict, rows, self._inline_max_rows)
        if rows.ndim != 2:
            raise ValueError(f"rows must be a 2-D array, got {rows.ndim} dimension(s)")
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="conveyor-micro-batcher")
        assert self._arrived is not None
        pending = _Pending(rows, loop.create_future())
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        """Answer what is queued, then stop the worker task. Safe to call twice."""
        self._closed = True
        if self._arrived is not None:
            self._arrived.set()
        worker = self._worker
        if worker is None or worker.done():
            return
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            # Our caller was cancelled: stop the worker instead of draining.
            worker.cancel()
            raise

    # -- the worker --------------------------------------------------------------

    async def _run(self) -> None:
        assert self._arrived is not None
        batch: list[_Pending] = []
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                batch = self._take()
                if batch:
                    await self._fill(batch)
                    await self._run_batch(batch)
                batch = []
        finally:
            # Cancelled (or crashed): nobody may be left waiting for an answer.
            for pending in [*batch, *self._queue]:
                if not pending.future.done():
                    pending.future.set_exception(ServingError("the micro-batcher stopped before this request ran"))
            self._queue.clear()

    def _take(self, batch: list[_Pending] | None = None) -> list[_Pending]:
        """Move requests that fit into `batch` from the queue, oldest first; skip cancelled ones."""
        batch = [] if batch is None else batch
        rows = sum(len(p.rows) for p in batch)
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller gave up (client went away)
                continue
            if not batch:
                batch.append(pending)
                rows = len(pending.rows)
            elif pending.key == batch[0].key and rows + len(pending.rows) <= self.max_batch_rows:
                batch.append(pending)
                rows += len(pending.rows)
            else:
                kept.append(pending)
            if rows >= self.max_batch_rows:
                break
        kept.extend(self._queue)
        self._queue = kept
        return batch

    async def _fill(self, batch: list[_Pending]) -> None:
        """Let requests already on their way join a batch that is not full, for at most `max_wait`.

        Only when there is concurrency (this batch or the last held more than
        one request): the worker yields to the event loop and takes what
        arrived, and stops at the first yield that brings nothing, so a closed
        group of callers that are all in the batch never waits for a timer.
        """
        concurrent = len(batch) > 1 or self._last_requests > 1
        if not concurrent or self.max_wait == 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        rows = sum(len(p.rows) for p in batch)
        idle = 0
        while rows < self.max_batch_rows and not self._closed and loop.time() < deadline:
            await asyncio.sleep(0)
            if not self._queue:
                idle += 1
                if idle >= self._idle_yields:
                    return
                continue
            before = len(batch)
            self._take(batch)
            if len(batch) == before:
                return  # what is queued does not fit this batch: run it now
            idle = 0
            rows = sum(len(p.rows) for p in batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        self._last_requests = len(batch)
        X = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        if self._on_batch is not None:
            try:
                self._on_batch(len(X))
            except Exception:
                log.exception("the on_batch callback failed")
        try:
            output = np.asarray(await _call(self._predict, X, self._inline_max_rows))
            if output.ndim == 0 or len(output) != len(X):
                raise ServingError(
                    f"the model returned {output.shape[0] if output.ndim else 'a scalar'} outputs "
                    f"for {len(X)} rows; a batched model must return one output per row"
                )
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.rows)
            if not pending.future.done():
                pending.future.set_result(output[start:end])
            start = end
