"""The micro-batcher: every caller gets exactly its own rows back, batches form, failures stay contained."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from conveyor.serving.batching import DirectPredictor, MicroBatcher, Predictor


def row_sums(X: np.ndarray) -> np.ndarray:
    return X.sum(axis=1)


def distinct_inputs(n: int) -> list[np.ndarray]:
    """Request i has (i % 3) + 1 rows, all with values unique to it."""
    return [np.arange((i % 3 + 1) * 4, dtype=np.float64).reshape(-1, 4) + 1000 * i for i in range(n)]


async def gather_predictions(predictor: Predictor, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return list(await asyncio.gather(*(predictor.predict(X) for X in inputs)))


def test_concurrent_callers_each_get_their_own_rows() -> None:
    sizes: list[int] = []
    inputs = distinct_inputs(200)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(row_sums, max_batch_rows=64, on_batch=sizes.append)
        try:
            return await gather_predictions(batcher, inputs)
        finally:
            await batcher.close()

    outputs = asyncio.run(main())
    for X, out in zip(inputs, outputs):
        np.testing.assert_array_equal(out, row_sums(X))
    assert sum(sizes) == sum(len(X) for X in inputs)
    assert max(sizes) > 1, "no batch formed under concurrency"
    assert max(sizes) <= 64
    assert len(sizes) < len(inputs)


def test_a_real_sklearn_model_batched_matches_one_by_one() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    model = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))

    def proba(rows: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(rows))

    inputs = [X[i : i + 1 + i % 2] for i in range(200)]
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(proba, on_batch=sizes.append)
        try:
            return await gather_predictions(batcher, inputs)
        finally:
            await batcher.close()

    for rows, out in zip(inputs, asyncio.run(main())):
        np.testing.assert_allclose(out, proba(rows))
        assert out.shape == (len(rows), 2)
    assert max(sizes) > 1


def test_a_failed_batch_reaches_its_callers_and_the_next_batch_works() -> None:
    def fails_on_negative(X: np.ndarray) -> np.ndarray:
        if (X < 0).any():
            raise ValueError("negative input")
        return row_sums(X)

    async def main() -> None:
        batcher = MicroBatcher(fails_on_negative)
        try:
            bad = [np.full((1, 2), -1.0)] + [np.ones((1, 2)) for _ in range(9)]
            results = await asyncio.gather(*(batcher.predict(X) for X in bad), return_exceptions=True)
            assert all(isinstance(r, ValueError) for r in results), results
            np.testing.assert_array_equal(await batcher.predict(np.ones((2, 3))), [3.0, 3.0])
            outputs = await gather_predictions(batcher, distinct_inputs(20))
            for X, out in zip(distinct_inputs(20), outputs):
                np.testing.assert_array_equal(out, row_sums(X))
        finally:
            await batcher.close()

    asyncio.run(main())


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    sizes: list[int] = []
    inputs = [np.ones((1, 3)) for _ in range(10)] + [np.ones((100, 3))] + [np.ones((1, 3)) for _ in range(10)]

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(row_sums, max_batch_rows=16, on_batch=sizes.append)
        try:
            return await gather_predictions(batcher, inputs)
        finally:
            await batcher.close()

    outputs = asyncio.run(main())
    assert [len(out) for out in outputs] == [len(X) for X in inputs]
    assert 100 in sizes
    assert all(size <= 16 for size in sizes if size != 100)


def test_inputs_of_different_width_or_dtype_are_not_stacked() -> None:
    inputs = [np.ones((1, 2)), np.ones((1, 3)), np.ones((1, 2), dtype=np.int64), np.ones((2, 2))]

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(row_sums)
        try:
            return await gather_predictions(batcher, inputs)
        finally:
            await batcher.close()

    outputs = asyncio.run(main())
    assert [out.tolist() for out in outputs] == [[2.0], [3.0], [2], [2.0, 2.0]]
    assert outputs[2].dtype == np.int64


def test_a_model_returning_the_wrong_number_of_outputs_fails_its_callers() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda X: np.zeros(1))
        try:
            results = await asyncio.gather(*(batcher.predict(np.ones((1, 2))) for _ in range(5)),
                                           return_exceptions=True)
            assert any(isinstance(r, Exception) and "one output per row" in str(r) for r in results)
        finally:
            await batcher.close()

    asyncio.run(main())


def test_close_answers_pending_calls_and_later_calls_still_predict() -> None:
    release = threading.Event()

    def slow(X: np.ndarray) -> np.ndarray:
        release.wait(5)
        return row_sums(X)

    async def main() -> None:
        # inline_max_rows=0: predict in a thread, so calls pile up while it runs.
        batcher = MicroBatcher(slow, inline_max_rows=0)
        calls = [asyncio.ensure_future(batcher.predict(np.full((1, 2), i, dtype=float))) for i in range(20)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(closing, 5)
        assert [(await c).tolist() for c in calls] == [[2.0 * i] for i in range(20)]
        assert batcher.closed
        np.testing.assert_array_equal(await batcher.predict(np.ones((1, 2))), [2.0])
        await batcher.close()

    asyncio.run(main())


def test_close_before_any_call_and_a_cancelled_caller_do_not_hang() -> None:
    async def main() -> None:
        await MicroBatcher(row_sums).close()
        batcher = MicroBatcher(row_sums)
        call = asyncio.ensure_future(batcher.predict(np.ones((1, 2))))
        call.cancel()
        other = await batcher.predict(np.ones((1, 2)))
        assert other.tolist() == [2.0]
        await asyncio.wait_for(batcher.close(), 5)

    asyncio.run(main())


def test_a_cancelled_close_fails_pending_calls_instead_of_hanging() -> None:
    release = threading.Event()

    def blocked(X: np.ndarray) -> np.ndarray:
        release.wait(5)
        return row_sums(X)

    async def main() -> None:
        batcher = MicroBatcher(blocked, inline_max_rows=0)
        calls = [asyncio.ensure_future(batcher.predict(np.ones((1, 2)))) for _ in range(5)]
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.close(), 0.05)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert all(isinstance(r, BaseException) for r in results)
        release.set()

    asyncio.run(main())


@pytest.mark.parametrize("make", [
    lambda on_batch: DirectPredictor(row_sums, on_batch=on_batch),
    lambda on_batch: MicroBatcher(row_sums, on_batch=on_batch),
])
def test_direct_and_batched_predictors_share_one_api(make: Callable[[Callable[[int], None]], Predictor]) -> None:
    sizes: list[int] = []
    inputs = distinct_inputs(30) + [np.ones((200, 4))]

    async def main() -> list[np.ndarray]:
        predictor = make(sizes.append)
        try:
            return await gather_predictions(predictor, inputs)
        finally:
            await predictor.close()

    for X, out in zip(inputs, asyncio.run(main())):
        np.testing.assert_array_equal(out, row_sums(X))
    assert sum(sizes) == sum(len(X) for X in inputs)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_rows"):
        MicroBatcher(row_sums, max_batch_rows=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(row_sums, max_wait_ms=-1)
