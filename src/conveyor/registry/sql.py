"""`Registry`: model versions and aliases in SQL, through SQLAlchemy Core.

SQLite (the default: one file under `.conveyor/`) and PostgreSQL (for teams)
run the same statements. Every write is one transaction, so a crash leaves no
half-written row, and writers of one model are serialised (see `engine.py`),
so concurrent registrations get distinct, gapless version numbers and
concurrent alias moves lose no history. Opening a registry brings its schema
up to date (see `migrations.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import sqlalchemy as sa

from conveyor.exceptions import ModelNotFound, RegistryError
from conveyor.registry import (
    LATEST,
    VERSION_PATTERN,
    AliasMove,
    ModelVersion,
    migrations,
    parse_ref,
    validate_alias,
    validate_kind,
    validate_name,
)
from conveyor.registry.engine import (
    WRITE,
    create_engine,
    display_url,
    lock,
    parse_url,
    reason,
)
from conveyor.registry.schema import alias_history, aliases, model_versions

_T = TypeVar("_T")

_WRITE_ATTEMPTS = 5
"""Tries of a write that lost a race on a UNIQUE constraint (a backstop: writers of a model are serialised)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _json(field: str, value: Any) -> Any:
    """Round-trip through JSON so what `register` returns equals what `get` reads back."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"{field} cannot be stored in the registry: {exc}; "
            "use JSON values only (strings, finite numbers, booleans, lists, mappings)"
        ) from None


def _metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RegistryError(
                f"metric '{key}' is {value!r}, not a number; "
                "write only numeric metrics (log other values as params or lineage)"
            )
        if not math.isfinite(value):
            raise RegistryError(f"metric '{key}' is {value}; metrics must be finite numbers")
        clean[str(key)] = float(value)
    return clean


def _to_version(row: Mapping[Any, Any]) -> ModelVersion:
    return ModelVersion(**{field.name: row[field.name] for field in fields(ModelVersion)})


def _to_move(row: Mapping[Any, Any]) -> AliasMove:
    return AliasMove(**{field.name: row[field.name] for field in fields(AliasMove)})


def _span(versions: Sequence[int]) -> str:
    if len(versions) == 1:
        return f"version {versions[0]}"
    if list(versions) == list(range(versions[0], versions[-1] + 1)):
        return f"versions {versions[0]}-{versions[-1]}"
    return "versions " + ", ".join(map(str, versions))


class Registry:
    """Model versions and aliases in one SQL database (`sqlite:///…` or `postgresql://…`).

    Opening creates the tables in an empty database and upgrades an older
    registry's schema in place. Use as a context manager, or call `close()`,
    to release the database connections.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open (and upgrade) the registry at `url`. With `create=False` a SQLite
        file that does not exist yet is an error, not a new empty registry: a
        command that only reads must not turn a mistyped path into one."""
        self.url = url
        if not create:
            parsed = parse_url(url)
            database = parsed.database or ""
            if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") \
                    and not database.startswith("file:") and not Path(database).is_file():
                raise RegistryError(
                    f"there is no registry at {database} yet: `conveyor run` creates it when it registers "
                    "the first model (or check `registry:` in conveyor.yaml and CONVEYOR_REGISTRY_URL)"
                )
        self._engine = create_engine(url)
        self._where = display_url(url)
        try:
            migrations.upgrade(self._engine, url)
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            raise self._failure(exc) from exc
        except BaseException:
            self._engine.dispose()
            raise

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection; the registry is unusable afterwards."""
        self._engine.dispose()

    # -- transactions -------------------------------------------------------

    def _failure(self, exc: sa.exc.DBAPIError) -> RegistryError:
        return RegistryError(
            f"the registry at {self._where} failed: {reason(exc)}; check that it is a Conveyor "
            "registry you can reach, read and write, and that no process keeps it locked"
        )

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa.exc.DatabaseError as exc:
            raise self._failure(exc) from exc

    def _write(self, name: str, work: Callable[[sa.Connection], _T]) -> _T:
        """Run `work` in one write transaction on model `name`, after any other writer of it."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**{WRITE: True})
                    with conn.begin():
                        lock(conn, f"model:{name}")
                        return work(conn)
            except sa.exc.IntegrityError as exc:
                if attempt == _WRITE_ATTEMPTS:
                    raise RegistryError(
                        f"the registry at {self._where} kept refusing a write "
                        f"({reason(exc)}) after {attempt} tries; run the command again"
                    ) from exc
            except sa.exc.DatabaseError as exc:  # after IntegrityError, its subclass
                raise self._failure(exc) from exc
        raise AssertionError("unreachable")

    # -- lookups ------------------------------------------------------------

    @staticmethod
    def _first(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> ModelVersion | None:
        """The newest version matching `where`, if any."""
        query = sa.select(model_versions).where(*where)
        row = conn.execute(query.order_by(model_versions.c.version.desc()).limit(1)).first()
        return None if row is None else _to_version(row._mapping)

    def _row(self, conn: sa.Connection, name: str, version: int) -> ModelVersion | None:
        return self._first(conn, model_versions.c.name == name, model_versions.c.version == version)

    def _latest(self, conn: sa.Connection, name: str) -> ModelVersion | None:
        return self._first(conn, model_versions.c.name == name)

    def _by_digest(self, conn: sa.Connection, name: str, digest: str, dirty: bool) -> ModelVersion | None:
        return self._first(conn, model_versions.c.name == name, model_versions.c.digest == digest,
                           model_versions.c.dirty == dirty)

    @staticmethod
    def _alias(conn: sa.Connection, name: str, alias: str) -> int | None:
        return conn.execute(
            sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
        ).scalar_one_or_none()

    @staticmethod
    def _aliases(conn: sa.Connection, name: str) -> dict[str, int]:
        rows = conn.execute(
            sa.select(aliases.c.alias, aliases.c.version)
            .where(aliases.c.name == name)
            .order_by(aliases.c.alias)
        )
        return {alias: version for alias, version in rows}

    @staticmethod
    def _models(conn: sa.Connection) -> list[str]:
        query = sa.select(model_versions.c.name).distinct().order_by(model_versions.c.name)
        return list(conn.execute(query).scalars())

    def _hint(self, conn: sa.Connection, name: str) -> str:
        """What does exist, so a ModelNotFound message points at a valid reference."""
        versions = list(
            conn.execute(
                sa.select(model_versions.c.version)
                .where(model_versions.c.name == name)
                .order_by(model_versions.c.version)
            ).scalars()
        )
        if not versions:
            known = self._models(conn)
            if not known:
                return "the registry is empty; a passing `conveyor run` registers the first version"
            return f"no model named '{name}' is registered; known models: {', '.join(known)}"
        known_aliases = self._aliases(conn, name)
        hint = f"'{name}' has {_span(versions)}"
        if known_aliases:
            return hint + "; aliases: " + ", ".join(f"{a} -> v{v}" for a, v in known_aliases.items())
        return hint + " and no aliases yet"

    def get(self, name: str, version: int) -> ModelVersion:
        """The version `version` of model `name`; `ModelNotFound` if there is none."""
        with self._reading() as conn:
            found = self._row(conn, name, version)
            if found is None:
                raise ModelNotFound(f"{name}@{version}", self._hint(conn, name))
            return found

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: `iris` or `iris@latest` (newest), `iris@3`, `iris@v3`, `iris@production`."""
        name, selector = parse_ref(ref)
        with self._reading() as conn:
            found: ModelVersion | None
            if selector is None or selector == LATEST:
                found = self._latest(conn, name)
            elif match := VERSION_PATTERN.fullmatch(selector):
                found = self._row(conn, name, int(match.group(1)))
            else:
                version = self._alias(conn, name, selector)
                found = None if version is None else self._row(conn, name, version)
            if found is None:
                raise ModelNotFound(ref, self._hint(conn, name))
            return found

    def find_by_digest(self, name: str, digest: str, *, dirty: bool = False) -> ModelVersion | None:
        """The version of `name` whose artifact has `digest`, built from a clean (or dirty) tree."""
        with self._reading() as conn:
            return self._by_digest(conn, name, digest, dirty)

    def models(self) -> list[str]:
        """Names of all registered models, sorted."""
        with self._reading() as conn:
            return self._models(conn)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, newest first (empty for an unknown name)."""
        with self._reading() as conn:
            rows = conn.execute(
                sa.select(model_versions)
                .where(model_versions.c.name == name)
                .order_by(model_versions.c.version.desc())
            )
            return [_to_version(row._mapping) for row in rows]

    def aliases(self, name: str) -> dict[str, int]:
        """Where each alias of `name` points now, sorted by alias."""
        with self._reading() as conn:
            return self._aliases(conn, name)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Recorded moves of the aliases of `name` (or of one alias), newest first."""
        query = sa.select(alias_history).where(alias_history.c.name == name)
        if alias is not None:
            query = query.where(alias_history.c.alias == alias)
        with self._reading() as conn:
            rows = conn.execute(query.order_by(alias_history.c.id.desc()))
            return [_to_move(row._mapping) for row in rows]

    # -- writes -------------------------------------------------------------

    def register(
        self,
        *,
        name: str,
        digest: str,
        flavor: str,
        signature: Mapping[str, Any],
        metrics: Mapping[str, float],
        params: Mapping[str, Any],
        lineage: Mapping[str, Any],
        gates: Sequence[Mapping[str, Any]],
        run_id: str | None,
    ) -> tuple[ModelVersion, bool]:
        """Record a new version of `name`, numbered one past the newest.

        Idempotent on (name, digest, dirty): registering an artifact again returns
        its existing version and False; a new version returns True. `dirty` is
        `lineage["git"]["dirty"]`: the same artifact built from uncommitted changes
        and later from a commit gets two versions, so the committed one carries
        lineage that names the code that made it.
        """
        validate_name(name)
        if not digest:
            raise RegistryError(f"cannot register '{name}' without an artifact digest")
        if not flavor:
            raise RegistryError(f"cannot register '{name}' without a flavor (e.g. sklearn)")
        try:
            values: dict[str, Any] = {
                "name": name,
                "digest": digest,
                "flavor": flavor,
                "signature": _json("signature", dict(signature)),
                "metrics": _metrics(metrics),
                "params": _json("params", dict(params)),
                "lineage": _json("lineage", dict(lineage)),
                "gates": _json("gates", [dict(gate) for gate in gates]),
                "run_id": run_id,
                "dirty": bool(dict(lineage).get("git", {}).get("dirty", False)),
            }
        except RegistryError as exc:
            raise RegistryError(f"cannot register '{name}': {exc}") from None

        def write(conn: sa.Connection) -> tuple[ModelVersion, bool]:
            existing = self._by_digest(conn, name, digest, values["dirty"])
            if existing is not None:
                return existing, False
            newest = conn.execute(
                sa.select(sa.func.max(model_versions.c.version)).where(model_versions.c.name == name)
            ).scalar()
            row = {**values, "version": (newest or 0) + 1, "created_at": _now()}
            conn.execute(model_versions.insert().values(**row))
            return _to_version(row), True

        return self._write(name, write)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        reason: str,
        run_id: str | None = None,
        kind: str = "move",
        expected: int | None | Literal["any"] = "any",
    ) -> AliasMove:
        """Point `alias` at `version` of `name` and record the move.

        `kind` says what made the move (see `AliasMove.kind`). Pointing an alias
        where it already points records nothing; the returned move then has
        `from_version == to_version`. With `expected` (a version, or None for
        "points nowhere"), the move happens only if the alias still points
        there, in the same transaction: a decision taken on what the alias held
        (gates passed against it, a rollback computed from it) is not applied
        after someone else moved it.
        """
        validate_alias(alias)
        validate_kind(kind)
        if not actor.strip():
            raise RegistryError(f"moving alias '{alias}' of '{name}' needs an actor (who moved it)")

        def write(conn: sa.Connection) -> AliasMove:
            if self._row(conn, name, version) is None:
                raise ModelNotFound(f"{name}@{version}", self._hint(conn, name))
            current = self._alias(conn, name, alias)
            if expected != "any" and current != expected:
                now = f"v{current}" if current is not None else "nowhere"
                raise RegistryError(f"{name}@{alias} moved meanwhile (it now points {'to ' if current else ''}{now}, "
                                    f"not {'v' + str(expected) if expected is not None else 'nowhere'}); "
                                    "nothing was changed, run the command again")
            move = AliasMove(name, alias, current, version, _now(), actor, reason, run_id, kind)
            if current == version:
                return move
            if current is None:
                conn.execute(
                    aliases.insert().values(name=name, alias=alias, version=version, updated_at=move.at)
                )
            else:
                conn.execute(
                    aliases.update()
                    .where(aliases.c.name == name, aliases.c.alias == alias)
                    .values(version=version, updated_at=move.at)
                )
            self._record(conn, move)
            return move

        return self._write(name, write)

    def remove_alias(
        self, name: str, alias: str, *, actor: str, reason: str, run_id: str | None = None, kind: str = "remove"
    ) -> AliasMove:
        """Delete `alias` of `name` and record the move (its `to_version` is None)."""
        validate_kind(kind)
        if not actor.strip():
            raise RegistryError(f"removing alias '{alias}' of '{name}' needs an actor (who removed it)")

        def write(conn: sa.Connection) -> AliasMove:
            current = self._alias(conn, name, alias)
            if current is None:
                raise ModelNotFound(f"{name}@{alias}", self._hint(conn, name))
            conn.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
            move = AliasMove(name, alias, current, None, _now(), actor, reason, run_id, kind)
            self._record(conn, move)
            return move

        return self._write(name, write)

    def record_image(self, name: str, version: int, image: Mapping[str, Any]) -> ModelVersion:
        """Set `lineage["image"]` of a version: written after registration (like `serving`), because
        the image is built from the registered version (`conveyor package`). The rest stays immutable."""
        return self._set_lineage(name, version, "image", image)

    def record_serving_form(self, name: str, version: int, form: Mapping[str, Any]) -> ModelVersion:
        """Set `lineage["serving"]` of a version: the verified model directory an image serves instead of
        the registered one (`package.runtime: onnx`), made from the registered version after registration."""
        return self._set_lineage(name, version, "serving", form)

    def _set_lineage(self, name: str, version: int, key: str, value: Mapping[str, Any]) -> ModelVersion:
        def write(conn: sa.Connection) -> ModelVersion:
            current = self._row(conn, name, version)
            if current is None:
                raise ModelNotFound(f"{name}@{version}", self._hint(conn, name))
            lineage = {**current.lineage, key: _json(key, dict(value))}
            conn.execute(model_versions.update().where(model_versions.c.name == name,
                                                       model_versions.c.version == version).values(lineage=lineage))
            return replace(current, lineage=lineage)

        return self._write(name, write)

    @staticmethod
    def _record(conn: sa.Connection, move: AliasMove) -> None:
        conn.execute(
            alias_history.insert().values(
                name=move.name,
                alias=move.alias,
                from_version=move.from_version,
                to_version=move.to_version,
                at=move.at,
                actor=move.actor,
                reason=move.reason,
                run_id=move.run_id,
                kind=move.kind,
            )
        )
