"""The model registry: immutable model versions and movable, audited aliases.

This package stays free of SQLAlchemy at import time so that `probe` (the
no-op fast path of `conveyor run`) can be imported for the cost of `sqlite3`;
`Registry` itself is loaded from `conveyor.registry.sql` on first use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import RegistryError

if TYPE_CHECKING:
    from conveyor.registry.sql import Registry

__all__ = ["AliasMove", "ModelVersion", "Registry", "parse_ref", "validate_alias"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A model name, as `conveyor.config.ModelConfig.name` accepts it."""

ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]*")
"""An alias name: lower-case, so `iris@production` is never ambiguous."""

VERSION_PATTERN = re.compile(r"v?([0-9]+)")
"""A version selector in a reference: `3` or `v3`."""

SCHEMA_VERSION = 3
"""The newest registry schema this code reads and writes (`migrations.py` ends there).
Here, free of SQLAlchemy, so the fast-path probe can refuse a newer database too."""

LATEST = "latest"
"""Selector for the newest version; reserved, so no alias can take the name."""

_REF_FORM = "NAME[@VERSION|@ALIAS], e.g. iris, iris@3, iris@v3, iris@production"


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: immutable once written."""

    name: str
    version: int
    digest: str
    flavor: str
    signature: dict[str, Any]
    metrics: dict[str, float]
    params: dict[str, Any]
    lineage: dict[str, Any]
    gates: list[dict[str, Any]]
    run_id: str | None
    created_at: datetime

    @property
    def ref(self) -> str:
        """The reference that names exactly this version, e.g. `iris@3`."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias; `from_version`/`to_version` are None for a create/remove.

    `kind` says what made the move, in the mover's words: e.g. `line` (the line
    promoted after its gates passed), `promote`, `forced`, `rollback`, `remove`;
    `move` when the mover did not say (and for moves recorded before kinds were).
    """

    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime
    actor: str
    reason: str
    run_id: str | None
    kind: str = "move"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split `iris@production` into `("iris", "production")`; `iris` gives `("iris", None)`.

    The selector is returned as written (`3`, `v3`, an alias or `latest`);
    `Registry.resolve` interprets it. Raises `RegistryError` on anything else.
    """
    name, at, selector = ref.strip().partition("@")
    if not NAME_PATTERN.fullmatch(name) or (at and not selector):
        raise RegistryError(f"malformed model reference '{ref}': expected {_REF_FORM}")
    if not at:
        return name, None
    if not (VERSION_PATTERN.fullmatch(selector) or ALIAS_PATTERN.fullmatch(selector)):
        raise RegistryError(
            f"malformed model reference '{ref}': expected {_REF_FORM} "
            "(versions are numbers, aliases are lower-case letters, digits, '_' and '-')"
        )
    return name, selector


KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""The kind of an alias move: a short lower-case word."""


def validate_name(name: str) -> str:
    """Return `name` if it can be a model name, else raise `RegistryError`."""
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError(
            f"invalid model name '{name}': use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` if it can name an alias, else raise `RegistryError`."""
    if not ALIAS_PATTERN.fullmatch(alias):
        raise RegistryError(
            f"invalid alias '{alias}': use lower-case letters, digits, '_' and '-', "
            "starting with a letter (e.g. production, staging, candidate)"
        )
    if VERSION_PATTERN.fullmatch(alias) or alias == LATEST:
        raise RegistryError(
            f"invalid alias '{alias}': it would read as a version in a reference "
            f"such as NAME@{alias}; choose another name"
        )
    return alias


def validate_kind(kind: str) -> str:
    """Return `kind` if it can be the kind of an alias move, else raise `RegistryError`."""
    if not KIND_PATTERN.fullmatch(kind):
        raise RegistryError(
            f"invalid alias move kind '{kind}': use a lower-case word of at most 32 letters, "
            "digits, '_' and '-' (e.g. promote, rollback)"
        )
    return kind


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from conveyor.registry.sql import Registry

        return Registry
    raise AttributeError(f"module 'conveyor.registry' has no attribute {name!r}")
