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
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

Mode = Literal["canary", "shadow"]


FLOAT_RTOL = 1e-6
"""Relative tolerance within which two float predictions count as the same."""

FLOAT_ATOL = 1e-9
"""Absolute tolerance within which two float predictions (near zero) count as the same."""


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
    compare: bool = False
    """Canary: predict with stable too and count whether the two agree (for `Criteria.max_disagreement`)."""

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
            return cls(str(raw["stable"]), str(raw["candidate"]), float(raw["share"]), raw.get("mode", "canary"),
                       bool(raw.get("compare", False)))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Criteria:
    """What a canary must stay within at every step; None: not checked."""

    max_error_rate: float = 0.01  # defaults.CANARY_MAX_ERROR_RATE
    max_p99_ms: float | None = None
    min_requests: int = 20  # defaults.CANARY_MIN_REQUESTS
    max_disagreement: float | None = None
    """Largest share of compared requests on which the candidate's predictions differ from stable's."""


@dataclass(frozen=True)
class Counts:
    """A version's predictions: outcomes, the cumulative latency histogram as (upper bound s, count), and
    how many of its predictions compared with stable's agreed or disagreed."""

    ok: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, int], ...] = ()
    agreed: int = 0
    disagreed: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.errors

    @property
    def compared(self) -> int:
        return self.agreed + self.disagreed

    def minus(self, earlier: Counts) -> Counts:
        """What happened since `earlier` was read (counters only grow)."""
        before = dict(earlier.buckets)
        return Counts(self.ok - earlier.ok, self.errors - earlier.errors,
                      tuple((le, n - before.get(le, 0)) for le, n in self.buckets),
                      self.agreed - earlier.agreed, self.disagreed - earlier.disagreed)

    def disagreement(self) -> float | None:
        """The share of compared predictions that differed from stable's, or None before any comparison."""
        return self.disagreed / self.compared if self.compared else None

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
    disagreement = None
    if criteria.max_disagreement is not None:
        if counts.compared < criteria.min_requests:
            return Verdict("wait", f"{counts.compared} of {criteria.min_requests} comparisons with stable needed "
                                   f"at {share:g}% of traffic")
        disagreement = counts.disagreed / counts.compared
        if disagreement > criteria.max_disagreement:
            return Verdict("fail", f"disagreement {disagreement:.1%} ({counts.disagreed} of {counts.compared}) with "
                                   f"stable at {share:g}% of traffic is over the limit {criteria.max_disagreement:.1%}")
    return Verdict("pass", f"error rate {rate:.1%} ({counts.errors} of {counts.total})"
                           + (f", p99 ≤ {p99 * 1000:g} ms" if p99 is not None else "")
                           + (f", disagreement {disagreement:.1%} ({counts.disagreed} of {counts.compared})"
                              if disagreement is not None else "")
                           + f" at {share:g}% of traffic")


def same_predictions(candidate: np.ndarray, stable: np.ndarray) -> bool:
    """Whether two versions predicted the same for one request: equal rows, floats within a small tolerance
    (so a retrained model that differs in the last digits still agrees)."""
    import numpy as np

    a, b = np.asarray(candidate), np.asarray(stable)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        try:
            return bool(np.allclose(a, b, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True))
        except TypeError:  # a float array beside strings or objects
            return False
    return bool(np.array_equal(a, b))


def counts_from_metrics(text: str, name: str, version: int, *, shadow: bool = False) -> Counts:
    """A version's counts from the server's /metrics text (`conveyor_predictions_total`,
    `conveyor_prediction_seconds` and `conveyor_comparisons_total`); `shadow` reads the copies a shadow
    rollout sent it."""
    from prometheus_client.parser import text_string_to_metric_families

    ok_outcome, error_outcome = ("shadow_ok", "shadow_error") if shadow else ("ok", "error")
    mode = "shadow" if shadow else "canary"
    ok = errors = agreed = disagreed = 0
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
            elif sample.name == "conveyor_comparisons_total" and labels.get("mode") == mode:
                if labels.get("agree") == "yes":
                    agreed += int(sample.value)
                elif labels.get("agree") == "no":
                    disagreed += int(sample.value)
    return Counts(ok, errors, tuple(sorted(buckets.items())), agreed, disagreed)
