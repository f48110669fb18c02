"""Connecting to the registry's database: URLs, SQLite settings, and write serialisation.

Two backends run the same statements. SQLite (the default) keeps the registry
in one file in WAL mode, so readers (the fast-path probe, a serving process)
never wait for a writer, and a write transaction starts with BEGIN IMMEDIATE,
so concurrent writers queue for the lock instead of racing. PostgreSQL (for
teams) goes through psycopg 3; there a write takes a transaction-scoped
advisory lock on the model it changes, which serialises writers of one model
the way BEGIN IMMEDIATE serialises all writers of a SQLite file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from conveyor.exceptions import RegistryError

WRITE = "conveyor_write"
"""Execution option that marks a connection's transaction as a write (BEGIN IMMEDIATE on SQLite)."""

BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for another process's lock before giving up."""

CONNECT_TIMEOUT_S = 10
"""How long opening a PostgreSQL registry waits for the server to answer."""

_LOCK_CLASS = 0x436F6E76  # "Conv": the first key of every advisory lock Conveyor takes
"""Keeps Conveyor's PostgreSQL advisory locks apart from those of other programs on the database."""

_POSTGRES_SCHEMES = ("postgresql", "postgres")
"""URL schemes that mean "PostgreSQL through the default driver", which is psycopg 3 here."""


def parse_url(url: str) -> sa.URL:
    """The SQLAlchemy URL for a registry URL; `postgresql://` and `postgres://` use psycopg 3."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise RegistryError(
            f"invalid registry URL '{url}': expected e.g. sqlite:////abs/path/registry.db "
            "or postgresql://user@host/dbname"
        ) from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str) -> str:
    """`url` as a message may show it: any password hidden, and the query left out
    (it may carry `password=` or other secrets)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return url.split("?", 1)[0]
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    return shown + ("?…" if parsed.query else "")


def is_postgres(engine: sa.Engine) -> bool:
    """Whether `engine` talks to PostgreSQL (else SQLite)."""
    return engine.dialect.name == "postgresql"


def create_engine(url: str) -> sa.Engine:
    """An engine for the registry at `url`; creates the parent directory of a SQLite file."""
    parsed = parse_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            connect_args: dict[str, Any] = {}
            if parsed.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
            return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # No pooled connections: a long-running server must see the file as it is
        # now (replaced, restored from backup), and an SQLite connect costs microseconds.
        engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S}, poolclass=sa.pool.NullPool)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise RegistryError(
            f"cannot use registry URL '{display_url(url)}': {exc}; "
            "install the database driver it names (for PostgreSQL: pip install 'conveyor-ml[postgres]')"
        ) from None
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop pysqlite from issuing its own (late, deferred) BEGIN: `_sqlite_begin` does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def use_wal(engine: sa.Engine) -> None:
    """Switch a SQLite registry to WAL journal mode, once; a no-op when it already is.

    The mode is stored in the file. Changing it needs a moment with no other
    connection in a transaction and, unlike other statements, does not wait
    for one, so a busy database is retried until the busy timeout runs out.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        while True:
            try:
                mode = str(raw.execute("PRAGMA journal_mode").fetchone()[0])
                if mode.lower() in ("wal", "memory"):
                    return
                raw.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.Error as exc:  # the raw driver's: no SQLAlchemy wrapping here
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise sa.exc.OperationalError("PRAGMA journal_mode = WAL", None, exc) from exc
                time.sleep(0.01)


def lock(conn: sa.Connection, key: str) -> None:
    """Serialise this write transaction with every other that locks `key` (PostgreSQL).

    On SQLite the BEGIN IMMEDIATE that opened the transaction already holds
    the only write lock, so there is nothing more to take.
    """
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:cls, :key)"),
        {"cls": _LOCK_CLASS, "key": int.from_bytes(digest, "big", signed=True)},
    )


def reason(exc: sa.exc.DBAPIError) -> str:
    """The driver's message for `exc`, on one line."""
    return " ".join(str(exc.orig).split())
