"""Read-only registry lookups with the stdlib `sqlite3`, for the no-op fast path.

A fully cached `conveyor run` must finish in well under 140 ms, and importing
SQLAlchemy alone costs about 300 ms. These two questions ("is this artifact
registered?", "where does this alias point?") are all the fast path asks, so
they are answered here with plain SQL against the tables `schema.py` defines.

None means "not known here": the caller takes the slow path through
`Registry`, which then reports any real problem (a missing, locked, corrupt,
outdated or not yet upgraded database) properly.

The registry file is in WAL mode. A `mode=ro` connection reads it beside a
writer without waiting, and never changes the database; when no other
connection is open it creates the empty `-wal`/`-shm` side files SQLite needs
for that, which the next writer removes. Only in a directory it cannot write
does it fail, and then the answer is None like any other failure.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from conveyor.registry import SCHEMA_VERSION

_TIMEOUT_S = 5.0
"""How long a lookup waits for a writer's lock before answering "not known"."""


def _one(db_path: Path, sql: str, parameters: tuple[str | bool, ...]) -> int | None:
    if not db_path.is_file():
        return None
    uri = db_path.resolve().as_uri() + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=_TIMEOUT_S)) as conn:
            (schema,) = conn.execute("SELECT MAX(number) FROM schema_version").fetchone()
            if schema is None or int(schema) != SCHEMA_VERSION:  # older: to be upgraded; newer: refused
                return None
            row = conn.execute(sql, parameters).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else int(row[0])


def registered_version(db_path: Path, name: str, digest: str, dirty: bool = False) -> int | None:
    """The version under which `name` registered the artifact `digest` from a clean (or dirty) tree."""
    return _one(
        db_path,
        "SELECT version FROM model_versions WHERE name = ? AND digest = ? AND dirty = ?",
        (name, digest, dirty),
    )


def alias_version(db_path: Path, name: str, alias: str) -> int | None:
    """The version `alias` of model `name` points to, if the alias exists."""
    return _one(
        db_path,
        "SELECT version FROM aliases WHERE name = ? AND alias = ?",
        (name, alias),
    )
