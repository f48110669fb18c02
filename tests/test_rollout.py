"""Rollout arithmetic: a canary's counts read from real Prometheus text, and the verdicts judged from them."""

from __future__ import annotations

import math

import pytest

from conveyor.serving.metrics import ServingMetrics
from conveyor.serving.rollout import Counts, Criteria, Traffic, counts_from_metrics, judge, same_predictions


def _metrics(*observations: tuple[str, int, str, float | None],
             comparisons: tuple[tuple[str, int, str, bool], ...] = ()) -> str:
    metrics = ServingMetrics()
    for model, version, outcome, seconds in observations:
        metrics.observe_prediction(model, version, outcome, seconds)
    for model, version, mode, agree in comparisons:
        metrics.observe_comparison(model, version, mode, agree)
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
    compared = Traffic("iris@1", "iris@2", 10.0, "canary", compare=True)
    assert Traffic.from_json(compared.to_json()) == compared
    assert Traffic.from_json('{"stable": "iris@1", "candidate": "iris@2", "share": 5}') == Traffic("iris@1", "iris@2", 5.0)
    assert Traffic.from_json("{not json") is None and Traffic.from_json('{"stable": "iris@1"}') is None
    with pytest.raises(ValueError, match="percentage"):
        Traffic("iris@1", "iris@2", 120.0)
    with pytest.raises(ValueError, match="canary or shadow"):
        Traffic("iris@1", "iris@2", 10.0, "blue")  # type: ignore[arg-type]


def test_comparisons_are_read_per_version_and_mode() -> None:
    text = _metrics(*[("iris", 2, "ok", 0.001)] * 10, comparisons=(
        *[("iris", 2, "canary", True)] * 7, *[("iris", 2, "canary", False)] * 3, ("iris", 2, "shadow", False),
        ("iris", 1, "canary", False), ("other", 2, "canary", False)))
    canary = counts_from_metrics(text, "iris", 2)
    assert (canary.agreed, canary.disagreed, canary.compared, canary.disagreement()) == (7, 3, 10, 0.3)
    shadow = counts_from_metrics(text, "iris", 2, shadow=True)
    assert (shadow.agreed, shadow.disagreed) == (0, 1)
    assert counts_from_metrics(_metrics(("iris", 2, "ok", 0.001)), "iris", 2).disagreement() is None
    later = counts_from_metrics(_metrics(comparisons=(*[("iris", 2, "canary", True)] * 9,
                                                      *[("iris", 2, "canary", False)] * 5)), "iris", 2)
    assert (later.minus(canary).agreed, later.minus(canary).disagreed) == (2, 2)


def test_disagreement_over_the_limit_fails_with_the_numbers() -> None:
    criteria = Criteria(max_disagreement=0.05, min_requests=20)
    verdict = judge(Counts(ok=20, agreed=12, disagreed=8), criteria, 10)
    assert verdict.state == "fail"
    assert verdict.reason == "disagreement 40.0% (8 of 20) with stable at 10% of traffic is over the limit 5.0%"
    passed = judge(Counts(ok=40, agreed=39, disagreed=1), criteria, 10)
    assert passed.state == "pass" and "disagreement 2.5% (1 of 40)" in passed.reason
    assert judge(Counts(ok=20, agreed=20), Criteria(max_disagreement=0.0, min_requests=20), 10).state == "pass"
    # without the criterion, disagreement is not judged; errors are judged before it
    assert judge(Counts(ok=20, agreed=0, disagreed=20), Criteria(min_requests=20), 10).state == "pass"
    assert "error rate" in judge(Counts(ok=10, errors=10, disagreed=10), criteria, 10).reason


def test_disagreement_is_judged_only_once_enough_comparisons_exist() -> None:
    criteria = Criteria(max_disagreement=0.05, min_requests=20)
    waiting = judge(Counts(ok=30, agreed=0, disagreed=19), criteria, 50)
    assert waiting.state == "wait" and waiting.reason == "19 of 20 comparisons with stable needed at 50% of traffic"
    assert judge(Counts(ok=30, agreed=0, disagreed=20), criteria, 50).state == "fail"


def test_predictions_agree_on_equal_rows_and_floats_within_a_small_tolerance() -> None:
    import numpy as np

    assert same_predictions(np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert not same_predictions(np.array([0, 1, 2]), np.array([0, 1, 1]))
    assert not same_predictions(np.array([0, 1]), np.array([0, 1, 2]))
    assert same_predictions(np.array([["setosa"], ["virginica"]]), np.array([["setosa"], ["virginica"]]))
    assert not same_predictions(np.array(["setosa"]), np.array(["virginica"]))
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert same_predictions(probabilities, probabilities + 1e-12)
    assert not same_predictions(probabilities, probabilities + np.array([[0.0, 0.0], [0.01, -0.01]]))
    assert not same_predictions(np.array([1.5]), np.array(["1.5"]))
