"""Moving aliases by hand: promotion behind the gates, and rollback.

Every move goes through `Registry.set_alias`, which records who moved which
alias from where to where, when and why; `kind` tells a rollback or a forced
promotion from an ordinary one, so the line never undoes a person's rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.exceptions import ConveyorError, RegistryError

if TYPE_CHECKING:
    from conveyor.config import GateConfig
    from conveyor.gates import GateResult
    from conveyor.registry import AliasMove, ModelVersion, Registry


class GatesRefused(ConveyorError):
    """A promotion whose gates failed, without --force."""

    def __init__(self, ref: str, alias: str, results: Sequence[GateResult]) -> None:
        self.results = list(results)
        failing = "; ".join(r.gate for r in results if not r.passed)
        super().__init__(f"{ref} was not promoted to {alias}: gates failed ({failing}); "
                         "pass --force to promote anyway (recorded as forced)")


@dataclass(frozen=True)
class Promotion:
    move: AliasMove
    results: list[GateResult]
    forced: bool


def baselines_for(registry: Registry, name: str, gates: Sequence[GateConfig]) -> dict[str, ModelVersion | None]:
    """The version each `no_worse_than` alias points to now (None when it points nowhere yet)."""
    from conveyor.exceptions import ModelNotFound
    from conveyor.gates import baseline_aliases

    found: dict[str, ModelVersion | None] = {}
    for alias in baseline_aliases(gates):
        try:
            found[alias] = registry.resolve(f"{name}@{alias}")
        except ModelNotFound:
            found[alias] = None
    return found


def check(registry: Registry, version: ModelVersion, gates: Sequence[GateConfig],
          model_path: Callable[[ModelVersion], Path | None], against: str | None = None,
          against_must_exist: bool = False) -> list[GateResult]:
    """The verdict of the project's gates on a registered version.

    `against` replaces the alias every `no_worse_than` gate compares with; with
    `against_must_exist`, an alias that points nowhere is an error rather than
    a comparison that passes (`conveyor gates --against prodution` must not be green).
    """
    from dataclasses import replace

    from conveyor.gates import check_version

    if against is not None:
        from conveyor.registry import validate_alias

        validate_alias(against)  # a one-line error for `--against Production`, before the gates see it
        known = registry.aliases(version.name)
        if against_must_exist and against not in known:
            listed = ", ".join(sorted(known)) or "none yet"
            raise RegistryError(f"{version.name} has no alias '{against}' (its aliases: {listed})")
        gates = [replace(g, no_worse_than=against) if g.no_worse_than else g for g in gates]
    baselines = baselines_for(registry, version.name, gates)
    return check_version(version, gates, baselines, model_path(version))


def promote(registry: Registry, name: str, version: int, alias: str, *, reason: str, actor: str,
            gates: Sequence[GateConfig], model_path: Callable[[ModelVersion], Path | None],
            force: bool = False) -> Promotion:
    """Point `alias` at `version` if the project's gates pass for it (or `force`).

    The `no_worse_than` gates compare with the alias's current holder: promoting
    to staging is judged against staging, to production against production.
    """
    from conveyor.gates import passed

    if not reason.strip():
        raise ConveyorError("say why with --reason; it is recorded in the alias history")
    candidate = registry.get(name, version)
    holder = registry.aliases(name).get(alias)
    results = check(registry, candidate, gates, model_path, against=alias)
    ok = passed(results)
    if not ok and not force:
        raise GatesRefused(candidate.ref, alias, results)
    if not ok:
        reason += " (forced past failing gates: " + "; ".join(r.gate for r in results if not r.passed) + ")"
    move = registry.set_alias(name, alias, version, actor=actor, reason=reason, kind="promote" if ok else "forced",
                              expected=holder)
    return Promotion(move=move, results=results, forced=not ok)


def rollback_target(registry: Registry, name: str, alias: str) -> tuple[int, int]:
    """(current, previous) versions of `alias`: previous is the version it held before the
    move that put the current one there. Rollbacks are skipped over, so repeated rollbacks
    walk back through the promotions instead of flipping between two versions."""
    current = registry.aliases(name).get(alias)
    if current is None:
        raise RegistryError(f"{name} has no alias '{alias}'; `conveyor models history {name}` shows its moves")
    for move in registry.alias_history(name, alias):  # newest first
        if move.to_version == current and move.kind != "rollback":
            if move.from_version is None:
                break
            return current, move.from_version
    raise RegistryError(f"{name}@{alias} has no earlier version to roll back to (it is v{current})")


def rollback(registry: Registry, name: str, alias: str, *, actor: str, reason: str | None = None) -> AliasMove:
    """Move `alias` back to the version it held before, recorded as a rollback."""
    current, previous = rollback_target(registry, name, alias)
    why = reason or f"rollback of v{current}"
    return registry.set_alias(name, alias, previous, actor=actor, reason=why, kind="rollback", expected=current)
