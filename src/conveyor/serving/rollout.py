"""Rollouts: how traffic is split between a stable version and a candidate, and how a canary is judged.

Pure data and functions, no I/O: `Traffic` is what every worker of a server
applies (the supervisor's workers share it as a small JSON document),
`counts_from_metrics` reads a candidate's outcomes from the server's
Prometheus text (which sums every worker), and `judge` turns counts and
criteria into a verdict that says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

Mode = Literal["canary", "shadow"]


@dataclass(frozen=True)
class Traffic:
    """A split in progress: `share` percent of requests go to `candidate` (canary), or a copy of them (shadow).

    `stable` and `candidate` are references pinned to versions (`iris@1`), so
    moving an alias during the rollout does not change what either means.
    """

    stable: str
    candidate: str
    share: float
    mode: Mode = "canary"

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 100 or math.isnan(self.share):
            raise ValueError(f"share must be a percentage between 0 and 100, not {self.share}")
        if self.mode not in ("canary", "shadow"):
            raise ValueError(f"mode must be canary or shadow, not {self.mode!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Traffic | None:
        """The traffic in `text`, or None when it holds none (or is damaged: then stable serves everything)."""
        try:
            raw = json.loads(text)
            return cls(str(raw["stable"]), str(raw["candidate"]), float(raw["share"]), raw.get("mode", "canary"))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Criteria:
    """What a canary must stay within at every step; None: not checked."""

    max_error_rate: float = 0.01  # defaults.CANARY_MAX_ERROR_RATE
    max_p99_ms: float | None = None
    min_requests: int = 20  # defaults.CANARY_MIN_REQUESTS


@dataclass(frozen=True)
class Counts:
    """A version's predictions: outcomes, and the cumulative latency histogram as (upper bound s, count)."""

    ok: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, int], ...] = ()

    @property
    def total(self) -> int:
        return self.ok + self.errors

    def minus(self, earlier: Counts) -> Counts:
        """What happened since `earlier` was read (counters only grow)."""
        before = dict(earlier.buckets)
        return Counts(self.ok - earlier.ok, self.errors - earlier.errors,
                      tuple((le, n - before.get(le, 0)) for le, n in self.buckets))

    def p99_s(self) -> float | None:
        """The upper bound of the bucket holding the 99th percentile, or None without observations."""
        observed = max((n for _, n in self.buckets), default=0)
        if observed == 0:
            return None
        for le, n in sorted(self.buckets):
            if n >= 0.99 * observed:
                return le
        return math.inf


@dataclass(frozen=True)
class Verdict:
    """`pass`, `fail` or `wait` (too few requests yet), and why."""

    state: Literal["pass", "fail", "wait"]
    reason: str


def judge(counts: Counts, criteria: Criteria, share: float) -> Verdict:
    """Whether a candidate that got `counts` at `share` percent of traffic meets `criteria`."""
    if counts.total < criteria.min_requests:
        return Verdict("wait", f"{counts.total} of {criteria.min_requests} requests needed at {share:g}% of traffic")
    rate = counts.errors / counts.total
    if rate > criteria.max_error_rate:
        return Verdict("fail", f"error rate {rate:.1%} ({counts.errors} of {counts.total}) at {share:g}% of traffic "
                               f"is over the limit {criteria.max_error_rate:.1%}")
    p99 = counts.p99_s()
    if criteria.max_p99_ms is not None and p99 is not None and p99 * 1000 > criteria.max_p99_ms:
        return Verdict("fail", f"p99 latency {p99 * 1000:g} ms at {share:g}% of traffic is over the limit "
                               f"{criteria.max_p99_ms:g} ms")
    return Verdict("pass", f"error rate {rate:.1%} ({counts.errors} of {counts.total})"
                           + (f", p99 ≤ {p99 * 1000:g} ms" if p99 is not None else "") + f" at {share:g}% of traffic")


def counts_from_metrics(text: str, name: str, version: int, *, shadow: bool = False) -> Counts:
    """A version's counts from the server's /metrics text (`conveyor_predictions_total` and
    `conveyor_prediction_seconds`); `shadow` reads the copies a shadow rollout sent it."""
    from prometheus_client.parser import text_string_to_metric_families

    ok_outcome, error_outcome = ("shadow_ok", "shadow_error") if shadow else ("ok", "error")
    ok = errors = 0
    buckets: dict[float, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != name or labels.get("version") != str(version):
                continue
            if sample.name == "conveyor_predictions_total":
                if labels.get("outcome") == ok_outcome:
                    ok += int(sample.value)
                elif labels.get("outcome") == error_outcome:
                    errors += int(sample.value)
            elif sample.name == "conveyor_prediction_seconds_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0) + int(sample.value)
    return Counts(ok, errors, tuple(sorted(buckets.items())))
