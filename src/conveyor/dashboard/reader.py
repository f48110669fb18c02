"""The registry, read-only: paginated, indexed queries for the dashboard's pages.

`Registry` is not used here: opening it migrates an old schema and switches a
SQLite file to WAL, and the dashboard must never change what it shows. A
SQLite registry is opened with `mode=ro` (SQLite itself refuses any write); a
PostgreSQL one with `default_transaction_read_only` on the session. Every
query is bounded by the page it fills and uses an index: `(name, version)` for
versions, `(name, alias, id)` for alias history.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa

from conveyor.exceptions import ConveyorError, ModelNotFound
from conveyor.registry import SCHEMA_VERSION, AliasMove, ModelVersion
from conveyor.registry.engine import display_url, parse_url
from conveyor.registry.schema import alias_history, aliases, model_versions, schema_version

BUSY_TIMEOUT_S = 5.0
"""How long a SQLite read waits for a writer's lock."""


@dataclass(frozen=True)
class ModelSummary:
    """One model on the models page."""

    name: str
    versions: int
    latest: int
    latest_at: datetime
    aliases: dict[str, int]


@dataclass(frozen=True)
class Page:
    """Which slice of a long list a page shows (numbers from 1)."""

    number: int
    size: int
    total: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    def as_dict(self) -> dict[str, int]:
        return {"number": self.number, "size": self.size, "total": self.total, "pages": self.pages}


def _version(row: Any) -> ModelVersion:
    m = row._mapping
    return ModelVersion(name=m["name"], version=m["version"], digest=m["digest"], flavor=m["flavor"],
                        signature=m["signature"], metrics=m["metrics"], params=m["params"], lineage=m["lineage"],
                        gates=m["gates"], run_id=m["run_id"], created_at=m["created_at"])


def _sqlite_file(url: str) -> Path | None:
    parsed = parse_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(unquote(database))


class RegistryReader:
    """Read-only queries on the registry at `url`; a SQLite file that does not exist reads as empty."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._where = display_url(url)
        self._engine: sa.Engine | None = None
        path = _sqlite_file(url)
        if path is not None:
            self._path: Path | None = path
            uri = path.resolve().as_uri() + "?mode=ro"
            self._engine = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool,
                                            creator=lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S,
                                                                            check_same_thread=False))
            return
        self._path = None
        parsed = parse_url(url)
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            connect_args = {"connect_timeout": 10, "options": "-c default_transaction_read_only=on"}
        try:
            self._engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=2, connect_args=connect_args)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise ConveyorError(f"cannot read the registry at {self._where}: {exc}") from None

    def __enter__(self) -> RegistryReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _exists(self) -> bool:
        return self._path is None or self._path.is_file()

    def _query(self, statement: Any) -> list[Any]:
        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(statement))
        except sa.exc.DBAPIError as exc:
            raise ConveyorError(f"cannot read the registry at {self._where}: "
                                f"{' '.join(str(exc.orig).split())}") from None

    def check(self) -> None:
        """Refuse a registry of another schema than this code reads (the line upgrades an older one)."""
        if not self._exists():
            return
        try:
            found = self._query(sa.select(sa.func.max(schema_version.c.number)))[0][0]
        except ConveyorError as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                return  # an empty database: nothing registered yet
            raise
        if found is not None and int(found) != SCHEMA_VERSION:
            newer = int(found) > SCHEMA_VERSION
            raise ConveyorError(
                f"the registry at {self._where} has schema {found}, this dashboard reads schema {SCHEMA_VERSION}; "
                + ("upgrade Conveyor" if newer else "run any `conveyor models` command once to upgrade it")
            )

    def _empty(self) -> bool:
        if not self._exists():
            return True
        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                return not sa.inspect(conn).has_table(model_versions.name)
        except sa.exc.DBAPIError as exc:
            raise ConveyorError(f"cannot read the registry at {self._where}: "
                                f"{' '.join(str(exc.orig).split())}") from None

    # -- models ---------------------------------------------------------------

    def models(self) -> list[ModelSummary]:
        """Every model with its version count, newest version and aliases: two queries in all."""
        if self._empty():
            return []
        mv = model_versions.c
        rows = self._query(sa.select(mv.name, sa.func.count(), sa.func.max(mv.version), sa.func.max(mv.created_at))
                           .group_by(mv.name).order_by(mv.name))
        by_name: dict[str, dict[str, int]] = {}
        for name, alias, version in self._query(sa.select(aliases.c.name, aliases.c.alias, aliases.c.version)
                                                .order_by(aliases.c.name, aliases.c.alias)):
            by_name.setdefault(name, {})[alias] = version
        out = []
        for name, count, latest, latest_at in rows:
            if isinstance(latest_at, str):  # an aggregate loses the column's type on SQLite
                latest_at = datetime.fromisoformat(latest_at)
            out.append(ModelSummary(name, int(count), int(latest), latest_at, by_name.get(name, {})))
        return out

    def aliases(self, name: str) -> dict[str, int]:
        """Where each alias of `name` points now."""
        if self._empty():
            return {}
        rows = self._query(sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.name == name)
                           .order_by(aliases.c.alias))
        return {alias: int(version) for alias, version in rows}

    def versions(self, name: str, page: int, size: int) -> tuple[list[ModelVersion], Page]:
        """One page of the versions of `name`, newest first; `ModelNotFound` for an unknown name."""
        if self._empty():
            raise ModelNotFound(name, "the registry is empty")
        mv = model_versions.c
        total = int(self._query(sa.select(sa.func.count()).where(mv.name == name))[0][0])
        if total == 0:
            raise ModelNotFound(name)
        where = Page(max(1, page), size, total)
        rows = self._query(sa.select(model_versions).where(mv.name == name).order_by(mv.version.desc())
                           .limit(size).offset(where.offset))
        return [_version(row) for row in rows], where

    def metric_series(self, name: str) -> list[tuple[int, dict[str, float]]]:
        """(version, metrics) for every version of `name`, oldest first: what the charts plot."""
        if self._empty():
            return []
        mv = model_versions.c
        rows = self._query(sa.select(mv.version, mv.metrics).where(mv.name == name).order_by(mv.version))
        return [(int(version), metrics or {}) for version, metrics in rows]

    def version(self, name: str, version: int) -> ModelVersion:
        """One version; `ModelNotFound` if there is none."""
        if not self._empty():
            mv = model_versions.c
            rows = self._query(sa.select(model_versions).where(mv.name == name, mv.version == version))
            if rows:
                return _version(rows[0])
        raise ModelNotFound(f"{name}@{version}")

    def history(self, name: str, limit: int) -> list[AliasMove]:
        """The newest `limit` moves of the aliases of `name`, newest first."""
        if self._empty():
            return []
        ah = alias_history.c
        rows = self._query(sa.select(alias_history).where(ah.name == name).order_by(ah.id.desc()).limit(limit))
        return [AliasMove(name=r.name, alias=r.alias, from_version=r.from_version, to_version=r.to_version, at=r.at,
                          actor=r.actor, reason=r.reason, run_id=r.run_id, kind=r.kind) for r in rows]

    def names(self) -> list[str]:
        """Model names, sorted."""
        if self._empty():
            return []
        return [row[0] for row in self._query(sa.select(model_versions.c.name).distinct()
                                              .order_by(model_versions.c.name))]
