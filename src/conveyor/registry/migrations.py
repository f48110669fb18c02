"""The registry's schema, versioned: ordered migrations, applied in place when a database is opened.

Each migration is a numbered step that a database gets exactly once; the
`schema_version` table records one row per step applied, so the highest number
is the database's schema. Opening a registry applies the missing steps in one
transaction that only one process at a time can hold (BEGIN IMMEDIATE on
SQLite, an advisory lock on PostgreSQL): a crash leaves the old schema, and
two processes opening a new database at once do not both create it.

A step never changes once released: a later change to the tables is a new
step, and `schema.py` is updated to the layout the steps produce (a test
compares the two). The tables are spelled out here as each step made them,
not taken from `schema.py`, which only knows the newest layout.

Databases made before the schema was versioned have the tables but no
`schema_version`; they are adopted (the steps whose result is already there
are recorded, the rest applied), never recreated. A database from a newer
Conveyor is refused untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa

from conveyor.exceptions import RegistryError
from conveyor.registry.engine import WRITE, display_url, is_postgres, lock, reason, use_wal
from conveyor.registry.schema import UTCDateTime, schema_version

_SCHEMA_LOCK = "conveyor schema"
"""The lock key held while migrating; model locks are prefixed "model:", so no name can clash."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: `apply` runs inside the migrating transaction."""

    number: int
    name: str
    apply: Callable[[sa.Connection], None]


def _model_versions(metadata: sa.MetaData, name: str, *, dirty: bool) -> sa.Table:
    """`model_versions` before migration 2 (`dirty=False`) or after it, without its indexes."""
    digest_key = ("name", "digest", "dirty") if dirty else ("name", "digest")
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("flavor", sa.String(64), nullable=False),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=False),
        sa.Column("gates", sa.JSON, nullable=False),
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        *([sa.Column("dirty", sa.Boolean, nullable=False, server_default=sa.false())] if dirty else []),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        sa.UniqueConstraint(*digest_key, name="uq_model_versions_" + "_".join(digest_key)),
        sa.CheckConstraint("version >= 1", name="ck_model_versions_version_positive"),
    )


def _model_versions_indexes(table: sa.Table) -> list[sa.Index]:
    return [
        sa.Index("ix_model_versions_name_created_at", table.c.name, table.c.created_at),
        sa.Index("ix_model_versions_created_at", table.c.created_at),
        sa.Index("ix_model_versions_run_id", table.c.run_id),
    ]


def _initial(conn: sa.Connection) -> None:
    """Migration 1: the tables as the first Conveyor made them (one version per name and digest)."""
    metadata = sa.MetaData()
    _model_versions_indexes(_model_versions(metadata, "model_versions", dirty=False))
    sa.Table(
        "aliases",
        metadata,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_aliases_model_version",
        ),
    )
    sa.Table(
        "alias_history",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(128), nullable=True),
        sa.Index("ix_alias_history_name_alias_id", "name", "alias", "id"),
        sa.Index("ix_alias_history_name_at", "name", "at"),
    )
    # checkfirst=False: a table already there is an error, never silently kept.
    metadata.create_all(conn, checkfirst=False)


def _dirty(conn: sa.Connection) -> None:
    """Migration 2: a `dirty` flag, and one version per name, digest and flag."""
    if is_postgres(conn.engine):
        quote = conn.dialect.identifier_preparer.quote
        conn.exec_driver_sql("ALTER TABLE model_versions ADD COLUMN dirty BOOLEAN NOT NULL DEFAULT false")
        for unique in sa.inspect(conn).get_unique_constraints("model_versions"):
            if unique["name"] and unique["column_names"] == ["name", "digest"]:
                conn.exec_driver_sql(f"ALTER TABLE model_versions DROP CONSTRAINT {quote(unique['name'])}")
        conn.exec_driver_sql(
            "ALTER TABLE model_versions ADD CONSTRAINT uq_model_versions_name_digest_dirty "
            "UNIQUE (name, digest, dirty)"
        )
        return
    # SQLite cannot drop a constraint: rebuild the table (its documented 12-step
    # procedure; foreign keys are off for the migrating connection, see `_migrate`).
    rebuilt = _model_versions(sa.MetaData(), "_model_versions_new", dirty=True)
    rebuilt.create(conn)
    columns = ", ".join(column.name for column in rebuilt.columns if column.name != "dirty")
    conn.exec_driver_sql(
        f"INSERT INTO _model_versions_new ({columns}, dirty) SELECT {columns}, 0 FROM model_versions"
    )
    conn.exec_driver_sql("DROP TABLE model_versions")
    conn.exec_driver_sql("ALTER TABLE _model_versions_new RENAME TO model_versions")
    for index in _model_versions_indexes(_model_versions(sa.MetaData(), "model_versions", dirty=True)):
        index.create(conn)


def _move_kinds(conn: sa.Connection) -> None:
    """Migration 3: what kind of move each alias move was (a rollback, a forced promotion…)."""
    conn.exec_driver_sql("ALTER TABLE alias_history ADD COLUMN kind VARCHAR(32) NOT NULL DEFAULT 'move'")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "model versions, aliases and alias history", _initial),
    Migration(2, "dirty flag: a build from uncommitted changes is a version of its own", _dirty),
    Migration(3, "kind of each alias move: line, promote, forced, rollback…", _move_kinds),
)
"""Every step, in order; numbers run 1, 2, 3… without gaps."""

LATEST = MIGRATIONS[-1].number
"""The newest schema this Conveyor knows."""


def upgrade(engine: sa.Engine, url: str) -> None:
    """Bring the registry at `engine` to schema `LATEST`, creating it when the database is empty.

    Raises `RegistryError` when the database cannot be reached, is newer than
    this Conveyor, or holds tables that are not a Conveyor registry; the
    database is then left as it was. `url` is the URL as the user wrote it.
    """
    try:
        conn = engine.connect()
    except sa.exc.DBAPIError as exc:
        hint = (
            "check that the server is running and that the host, port, user, password and "
            "database name in the URL are right"
            if is_postgres(engine)
            else "check that its directory exists and that you can write to it"
        )
        raise RegistryError(f"cannot connect to the registry at {display_url(url)}: {reason(exc)}; {hint}") from None
    with conn:
        applied, _ = _state(conn, url)
    if not is_postgres(engine):
        use_wal(engine)
    if applied < LATEST:
        _migrate(engine, url)


def _state(conn: sa.Connection, url: str) -> tuple[int, bool]:
    """(the schema the database is at, whether it predates versioning); refuses a newer one."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(schema_version.name):
        return 0, inspector.has_table("model_versions")
    applied = conn.execute(sa.select(sa.func.max(schema_version.c.number))).scalar() or 0
    if applied > LATEST:
        raise RegistryError(
            f"the registry at {display_url(url)} was written by a newer Conveyor "
            f"(schema {applied}, this one knows up to {LATEST}); upgrade Conveyor"
        )
    return applied, False


def _migrate(engine: sa.Engine, url: str) -> None:
    with engine.connect() as conn:
        if not is_postgres(engine):
            # Rebuilding a table drops it while others still point at it, which SQLite only
            # allows with foreign keys off; they can only be switched outside a transaction.
            # `PRAGMA foreign_key_check` below vouches for the result.
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys = OFF")
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            lock(conn, _SCHEMA_LOCK)
            applied, unversioned = _state(conn, url)  # again: another process may have migrated meanwhile
            if applied == 0:
                schema_version.create(conn)
                if unversioned:
                    applied = _adopt(conn, url)
            for migration in MIGRATIONS[applied:]:
                migration.apply(conn)
                _record(conn, migration)
            if not is_postgres(engine):
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RegistryError(
                        f"upgrading the registry at {display_url(url)} would break {len(broken)} "
                        f"reference(s) between tables (first: {tuple(broken[0])}); nothing was changed"
                    )


def _adopt(conn: sa.Connection, url: str) -> int:
    """Record the steps an unversioned registry already has; returns the schema it is at."""
    inspector = sa.inspect(conn)
    missing = sorted({"aliases", "alias_history"} - set(inspector.get_table_names()))
    if missing:
        raise RegistryError(
            f"the database at {display_url(url)} has a model_versions table but no "
            f"{' or '.join(missing)} table, so it is not a Conveyor registry; "
            "point the registry URL at an empty database or at a Conveyor registry"
        )
    columns = {column["name"] for column in inspector.get_columns("model_versions")}
    adopted = 2 if "dirty" in columns else 1
    for migration in MIGRATIONS[:adopted]:
        _record(conn, migration)
    return adopted


def _record(conn: sa.Connection, migration: Migration) -> None:
    conn.execute(
        schema_version.insert().values(
            number=migration.number, name=migration.name, applied_at=datetime.now(timezone.utc)
        )
    )
