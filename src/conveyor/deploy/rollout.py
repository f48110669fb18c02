"""Rolling a new version out to the local server: replace, canary with automatic rollback, or shadow.

A canary moves the alias the server follows to the candidate (kind `canary`)
while the server's traffic split keeps stable pinned, then raises the
candidate's share step by step, judging it after each interval from the
server's metrics (`serving.rollout.judge`). Passing every step ends the split:
the server follows the alias, now the candidate. A breach (or an interrupted
rollout) moves the alias back to stable with kind `rollback` and the reason,
so the history says why and the line does not promote it again, and then
ends the split. With `max_disagreement`, stable also predicts the canary's
requests, and a candidate that answers differently too often is a breach. A shadow sends the candidate a copy of a share of requests
for one interval and reports how it did; it changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from conveyor import defaults
from conveyor.deploy import local
from conveyor.exceptions import ServingError
from conveyor.project import Project
from conveyor.serving.rollout import Counts, Criteria, Verdict, counts_from_metrics, judge

if TYPE_CHECKING:
    from conveyor.registry import Registry

Strategy = Literal["replace", "canary", "shadow"]


@dataclass(frozen=True)
class Policy:
    """How a new version goes live; defaults in `conveyor.defaults`, overridden by `deploy:` and flags."""

    strategy: Strategy = "replace"
    steps: tuple[float, ...] = defaults.CANARY_STEPS
    interval_s: float = defaults.CANARY_INTERVAL_S
    criteria: Criteria = field(default_factory=Criteria)
    shadow_share: float = defaults.SHADOW_SHARE


@dataclass
class Outcome:
    """What a rollout did: `promoted`, `rolled back` or `observed` (shadow), why, and each step's verdict."""

    strategy: Strategy
    name: str
    stable: int
    candidate: int
    result: str = ""
    reason: str = ""
    steps: list[dict[str, object]] = field(default_factory=list)


_POLL_S = 0.2


def _counts(project: Project, name: str, version: int, shadow: bool = False) -> Counts:
    return counts_from_metrics(local.metrics_text(project), name, version, shadow=shadow)


def _watch(project: Project, name: str, candidate: int, share: float, policy: Policy, shadow: bool,
           on_step: Callable[[str], None]) -> Verdict:
    """Judge one step: fail at once on a breach, pass after the interval with enough requests."""
    base = _counts(project, name, candidate, shadow)
    started = time.monotonic()
    patience = max(3 * policy.interval_s, policy.interval_s + defaults.CANARY_PATIENCE_S)
    while True:
        time.sleep(_POLL_S)
        verdict = judge(_counts(project, name, candidate, shadow).minus(base), policy.criteria, share)
        waited = time.monotonic() - started
        if verdict.state == "fail" or (verdict.state == "pass" and waited >= policy.interval_s):
            on_step(f"{share:g}%: {verdict.state}: {verdict.reason}")
            return verdict
        if waited > patience:
            return Verdict("fail", f"too few requests to judge: {verdict.reason} after {waited:.0f}s")


def roll_out(project: Project, registry: Registry, name: str, version: int, policy: Policy, *, alias: str,
             actor: str, on_step: Callable[[str], None] = lambda _line: None) -> Outcome:
    """Put `name`@`version` live on the local server, which follows `name`@`alias`, as `policy` says."""
    live = local.current(project)
    if live is None or live.ref != f"{name}@{alias}":
        raise ServingError(f"a {policy.strategy} rollout needs the local server to follow {name}@{alias}; "
                           f"start it with `conveyor deploy {name}@{alias}`")
    outcome = Outcome(policy.strategy, name, live.version, version)
    if live.version == version:
        outcome.result, outcome.reason = "unchanged", f"{name}@{version} is already live"
        return outcome
    stable, candidate = f"{name}@{live.version}", f"{name}@{version}"
    if policy.strategy == "shadow":
        local.set_traffic(project, candidate, policy.shadow_share, mode="shadow", stable=stable)
        try:
            verdict = _watch(project, name, version, policy.shadow_share, policy, True, on_step)
        finally:
            local.set_traffic(project, None, 0)
        outcome.result, outcome.reason = "observed", verdict.reason
        outcome.steps.append({"share": policy.shadow_share, "verdict": verdict.state, "reason": verdict.reason})
        return outcome

    compare = policy.criteria.max_disagreement is not None
    local.set_traffic(project, candidate, policy.steps[0], stable=stable, compare=compare)
    registry.set_alias(name, alias, version, actor=actor, kind="canary", expected=live.version,
                       reason=f"canary of v{version}: {', '.join(f'{s:g}%' for s in policy.steps)} "
                              f"every {policy.interval_s:g}s")
    reason = "interrupted"
    try:
        for share in policy.steps:
            local.set_traffic(project, candidate, share, stable=stable, compare=compare)
            verdict = _watch(project, name, version, share, policy, False, on_step)
            outcome.steps.append({"share": share, "verdict": verdict.state, "reason": verdict.reason})
            if verdict.state != "pass":
                reason = verdict.reason
                break
        else:
            local.set_traffic(project, None, 0)  # the server follows the alias: the candidate, for everyone
            outcome.result, outcome.reason = "promoted", f"passed every step: {outcome.steps[-1]['reason']}"
            return outcome
    except BaseException:
        _roll_back(project, registry, name, alias, live.version, version, actor, "the canary was interrupted")
        raise
    _roll_back(project, registry, name, alias, live.version, version, actor, reason)
    outcome.result, outcome.reason = "rolled back", reason
    return outcome


def _roll_back(project: Project, registry: Registry, name: str, alias: str, stable: int, candidate: int, actor: str,
               reason: str) -> None:
    """The alias back to stable first (so ending the split serves stable), then the split ended."""
    registry.set_alias(name, alias, stable, actor=actor, kind="rollback", reason=f"canary of v{candidate}: {reason}")
    local.set_traffic(project, None, 0)


def set_share(project: Project, registry: Registry, share: float, *, alias: str, actor: str) -> str:
    """Steer the rollout in progress by hand (say, one whose `conveyor deploy` was killed): 0 rolls it back,
    100 promotes a canary, anything else holds it at `share` percent. Returns what was done."""
    traffic = local.deployment_state(project).get("traffic")
    if not isinstance(traffic, dict):
        raise ServingError("no rollout is in progress on the local server; start one with "
                           "`conveyor deploy NAME@VERSION --strategy canary`")
    stable, candidate = registry.resolve(traffic["stable"]), registry.resolve(traffic["candidate"])
    name, pointed = stable.name, registry.aliases(stable.name).get(alias)
    if share <= 0:
        if pointed == candidate.version:
            registry.set_alias(name, alias, stable.version, actor=actor, kind="rollback", expected=pointed,
                               reason=f"canary of v{candidate.version} rolled back by hand (traffic 0%)")
        local.set_traffic(project, None, 0)
        return f"rolled back: {stable.ref} answers every request"
    if share >= 100 and traffic.get("mode") == "canary":
        if pointed != candidate.version:
            registry.set_alias(name, alias, candidate.version, actor=actor, kind="canary", expected=pointed,
                               reason=f"canary of v{candidate.version} promoted by hand (traffic 100%)")
        local.set_traffic(project, None, 0)
        return f"promoted: {candidate.ref} answers every request ({name}@{alias})"
    local.set_traffic(project, candidate.ref, share, mode=str(traffic.get("mode", "canary")), stable=stable.ref,
                      compare=bool(traffic.get("compare", False)))
    return f"holding: {share:g}% of traffic to {candidate.ref} ({traffic.get('mode')}), the rest to {stable.ref}"


def split_report(project: Project) -> dict[str, Any] | None:
    """The rollout in progress on the local server and its candidate's record since the server started
    (predictions, errors, p99, comparisons with stable and the share that disagreed), or None without one."""
    state = local.deployment_state(project)
    traffic, candidate = state.get("traffic"), state.get("candidate")
    if not isinstance(traffic, dict) or not isinstance(candidate, dict):
        return None
    counts = _counts(project, str(candidate["name"]), int(candidate["version"]), traffic.get("mode") == "shadow")
    p99, disagreement = counts.p99_s(), counts.disagreement()
    return {**traffic, "predictions": counts.total, "errors": counts.errors,
            "p99_ms": None if p99 is None else round(p99 * 1000, 3), "compared": counts.compared,
            "disagreed": counts.disagreed, "disagreement": disagreement}


def describe_split(report: dict[str, Any]) -> str:
    """One line for `conveyor deployments`: how the candidate has done, disagreement included when compared."""
    record = f"{report['predictions']} predictions, {report['errors']} errors"
    if report["p99_ms"] is not None:
        record += f", p99 ≤ {report['p99_ms']:g} ms"
    if report["disagreement"] is not None:
        record += f", disagreement {report['disagreement']:.1%} ({report['disagreed']} of {report['compared']})"
    return record
