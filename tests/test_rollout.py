"""Rollout arithmetic: a canary's counts read from real Prometheus text, and the verdicts judged from them."""

from __future__ import annotations

import math

import pytest

from conveyor.serving.metrics import ServingMetrics
from conveyor.serving.rollout import Counts, Criteria, Traffic, counts_from_metrics, judge


def _metrics(*observations: tuple[str, int, str, float | None]) -> str:
    metrics = ServingMetrics()
    for model, version, outcome, seconds in observations:
        metrics.observe_prediction(model, version, outcome, seconds)
    return metrics.render()[0].decode()


def test_counts_are_read_per_model_version_and_outcome() -> None:
    text = _metrics(*[("iris", 3, "ok", 0.002)] * 7, *[("iris", 3, "error", None)] * 2, ("iris", 1, "ok", 0.001),
                    ("other", 3, "error", None), ("iris", 3, "shadow_ok", 0.3))
    counts = counts_from_metrics(text, "iris", 3)
    assert (counts.ok, counts.errors, counts.total) == (7, 2, 9)
    assert counts.p99_s() == 0.5  # the bucket holding 0.3 s: the latency histogram counts every prediction of the version, shadow ones too
    shadow = counts_from_metrics(text, "iris", 3, shadow=True)
    assert (shadow.ok, shadow.errors) == (1, 0)
    assert counts_from_metrics(text, "iris", 9) == Counts(0, 0, ())


def test_a_step_is_judged_on_what_happened_since_it_began() -> None:
    before = counts_from_metrics(_metrics(*[("iris", 2, "error", None)] * 50), "iris", 2)
    after = counts_from_metrics(_metrics(*[("iris", 2, "error", None)] * 50, *[("iris", 2, "ok", 0.004)] * 30),
                                "iris", 2)
    step = after.minus(before)
    assert (step.ok, step.errors) == (30, 0)
    assert step.p99_s() == 0.005
    assert judge(step, Criteria(max_error_rate=0.01, min_requests=20), 50).state == "pass"


def test_an_error_rate_over_the_limit_fails_with_the_numbers() -> None:
    verdict = judge(Counts(ok=12, errors=10), Criteria(max_error_rate=0.05, min_requests=20), 30)
    assert verdict.state == "fail"
    assert verdict.reason == "error rate 45.5% (10 of 22) at 30% of traffic is over the limit 5.0%"


def test_too_few_requests_wait_and_a_slow_candidate_fails_on_p99() -> None:
    assert judge(Counts(ok=5), Criteria(min_requests=20), 10).state == "wait"
    slow = Counts(ok=100, buckets=((0.01, 50), (0.25, 98), (0.5, 100), (math.inf, 100)))
    assert slow.p99_s() == 0.5
    verdict = judge(slow, Criteria(max_p99_ms=100, min_requests=20), 50)
    assert verdict.state == "fail" and verdict.reason == "p99 latency 500 ms at 50% of traffic is over the limit 100 ms"
    assert judge(slow, Criteria(max_p99_ms=600, min_requests=20), 50).state == "pass"


def test_traffic_round_trips_and_damaged_text_means_no_split() -> None:
    traffic = Traffic("iris@1", "iris@2", 25.0, "shadow")
    assert Traffic.from_json(traffic.to_json()) == traffic
    assert Traffic.from_json("{not json") is None and Traffic.from_json('{"stable": "iris@1"}') is None
    with pytest.raises(ValueError, match="percentage"):
        Traffic("iris@1", "iris@2", 120.0)
    with pytest.raises(ValueError, match="canary or shadow"):
        Traffic("iris@1", "iris@2", 10.0, "blue")  # type: ignore[arg-type]
