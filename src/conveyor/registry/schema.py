"""The registry's tables as they are now, in SQLAlchemy Core, portable between SQLite and PostgreSQL.

The queries in `sql.py` are written against these tables; the database gets
them from the ordered steps in `migrations.py`, and a test checks that a
migrated database has exactly this layout. `conveyor.registry.probe` reads two
of these tables with the stdlib `sqlite3` module; its SQL names the same
tables and columns, and a test keeps them in step.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always written and read back as timezone-aware UTC.

    SQLite keeps no zone, PostgreSQL's `timestamptz` does; normalising to UTC
    on the way in and tagging naive values as UTC on the way out makes both agree.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores UTC-aware times only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


model_versions = sa.Table(
    "model_versions",
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
    # Built from uncommitted changes; added by migration 2, so older rows read False.
    sa.Column("dirty", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
    sa.UniqueConstraint("name", "digest", "dirty", name="uq_model_versions_name_digest_dirty"),
    sa.CheckConstraint("version >= 1", name="ck_model_versions_version_positive"),
    sa.Index("ix_model_versions_name_created_at", "name", "created_at"),
    sa.Index("ix_model_versions_created_at", "created_at"),
    sa.Index("ix_model_versions_run_id", "run_id"),
)
"""One row per registered model version; never updated, never deleted."""

aliases = sa.Table(
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
"""Where each alias points now; its past lives in `alias_history`."""

alias_history = sa.Table(
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
    # What made the move (see `AliasMove.kind`); added by migration 3, so older moves read "move".
    sa.Column("kind", sa.String(32), nullable=False, server_default="move"),
    sa.Index("ix_alias_history_name_alias_id", "name", "alias", "id"),
    sa.Index("ix_alias_history_name_at", "name", "at"),
)
"""Every alias move, append-only: who moved it, when, from where to where, and why."""

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)
"""One row per migration applied to this database (see `migrations.py`); the highest number is its schema."""
