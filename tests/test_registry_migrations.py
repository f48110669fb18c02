"""The registry's schema: versioned, upgraded in place, never silently recreated."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import another_url, engine_for, register

from conveyor.exceptions import RegistryError
from conveyor.registry import (
    Registry,
    probe,
)
from conveyor.registry.migrations import LATEST, MIGRATIONS
from conveyor.registry.schema import metadata, schema_version

# -- schema versions ----------------------------------------------------------


def _layout(url: str) -> dict[str, Any]:
    """Tables, columns, keys, constraints and indexes of the database at `url`, as reflected."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: {
                    "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                                for c in inspector.get_columns(table)],
                    "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                    "unique": sorted((u["name"], tuple(u["column_names"]))
                                     for u in inspector.get_unique_constraints(table)),
                    "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"])
                                      for i in inspector.get_indexes(table)),
                    "foreign keys": sorted((f["name"], tuple(f["constrained_columns"]), f["referred_table"],
                                            tuple(f["referred_columns"])) for f in inspector.get_foreign_keys(table)),
                    "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
                }
                for table in sorted(inspector.get_table_names())
            }
    finally:
        engine.dispose()


def _applied(url: str) -> list[tuple[int, str, Any]]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT number, name, applied_at FROM schema_version ORDER BY number"))
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def test_a_new_registry_records_each_migration_once(registry_url: str) -> None:
    Registry(registry_url).close()
    applied = _applied(registry_url)
    assert [(number, name) for number, name, _ in applied] == [(m.number, m.name) for m in MIGRATIONS]
    assert [m.number for m in MIGRATIONS] == list(range(1, LATEST + 1))
    Registry(registry_url).close()
    assert _applied(registry_url) == applied


def test_the_migrations_build_exactly_the_tables_schema_py_describes(
    registry_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    Registry(registry_url).close()
    described = another_url(registry_url, request, tmp_path)
    engine = engine_for(described)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    assert _layout(registry_url) == _layout(described)


# The tables as the first Conveyor created them, before versioned schemas (and before `dirty`).
_OLD_TABLES = """
CREATE TABLE model_versions (
    id {serial} NOT NULL,
    name VARCHAR(255) NOT NULL,
    version INTEGER NOT NULL,
    digest VARCHAR(128) NOT NULL,
    flavor VARCHAR(64) NOT NULL,
    signature JSON NOT NULL,
    metrics JSON NOT NULL,
    params JSON NOT NULL,
    lineage JSON NOT NULL,
    gates JSON NOT NULL,
    run_id VARCHAR(128),
    created_at {timestamp} NOT NULL,{dirty}
    PRIMARY KEY (id),
    CONSTRAINT uq_model_versions_name_version UNIQUE (name, version),
    CONSTRAINT {digest_key},
    CONSTRAINT ck_model_versions_version_positive CHECK (version >= 1)
);
CREATE INDEX ix_model_versions_name_created_at ON model_versions (name, created_at);
CREATE INDEX ix_model_versions_created_at ON model_versions (created_at);
CREATE INDEX ix_model_versions_run_id ON model_versions (run_id);
CREATE TABLE aliases (
    name VARCHAR(255) NOT NULL,
    alias VARCHAR(64) NOT NULL,
    version INTEGER NOT NULL,
    updated_at {timestamp} NOT NULL,
    PRIMARY KEY (name, alias),
    CONSTRAINT fk_aliases_model_version FOREIGN KEY(name, version) REFERENCES model_versions (name, version)
);
CREATE TABLE alias_history (
    id {serial} NOT NULL,
    name VARCHAR(255) NOT NULL,
    alias VARCHAR(64) NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    at {timestamp} NOT NULL,
    actor VARCHAR(255) NOT NULL,
    reason TEXT NOT NULL,
    run_id VARCHAR(128),
    PRIMARY KEY (id)
);
CREATE INDEX ix_alias_history_name_alias_id ON alias_history (name, alias, id);
CREATE INDEX ix_alias_history_name_at ON alias_history (name, at);
INSERT INTO model_versions (name, version, digest, flavor, signature, metrics, params, lineage, gates, run_id,
                            created_at{dirty_column})
VALUES ('iris', 1, 'aaa', 'sklearn', '{{}}', '{{"accuracy": 0.9}}', '{{"C": 1.0}}', '{{"git": {{"commit": "c1"}}}}',
        '[]', 'run-1', {t1}{clean}),
       ('iris', 2, 'bbb', 'sklearn', '{{}}', '{{"accuracy": 0.95}}', '{{"C": 2.0}}', '{{"git": {{"commit": "c2"}}}}',
        '[]', 'run-2', {t2}{clean}),
       ('wine', 1, 'aaa', 'sklearn', '{{}}', '{{}}', '{{}}', '{{}}', '[]', NULL, {t2}{clean});
INSERT INTO aliases (name, alias, version, updated_at) VALUES ('iris', 'production', 2, {t2});
INSERT INTO alias_history (name, alias, from_version, to_version, at, actor, reason, run_id)
VALUES ('iris', 'production', NULL, 1, {t1}, 'ana', 'first release', NULL),
       ('iris', 'production', 1, 2, {t2}, 'ana', 'better accuracy', 'run-2');
"""


def _build_unversioned(url: str, *, with_dirty: bool) -> None:
    """An unversioned registry, by hand: the first layout, or (`with_dirty`) the one just before versioning."""
    sqlite = url.startswith("sqlite")
    sql = _OLD_TABLES.format(
        serial="INTEGER" if sqlite else "SERIAL",
        timestamp="DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE",
        dirty="\n    dirty BOOLEAN NOT NULL," if with_dirty else "",
        dirty_column=", dirty" if with_dirty else "",
        clean=", FALSE" if with_dirty else "",
        digest_key="uq_model_versions_name_digest_dirty UNIQUE (name, digest, dirty)" if with_dirty
        else "uq_model_versions_name_digest UNIQUE (name, digest)",
        t1="'2024-05-01 10:00:00.000000'" if sqlite else "'2024-05-01 10:00:00+00'",
        t2="'2024-05-02 10:00:00.000000'" if sqlite else "'2024-05-02 10:00:00+00'",
    )
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            for statement in filter(str.strip, sql.split(";")):
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.mark.parametrize("with_dirty", [False, True], ids=["first-layout", "layout-with-dirty"])
def test_an_unversioned_registry_is_adopted_and_upgraded_in_place(registry_url: str, with_dirty: bool) -> None:
    _build_unversioned(registry_url, with_dirty=with_dirty)
    with Registry(registry_url) as registry:
        iris = registry.versions("iris")
        assert [(v.version, v.digest, v.metrics, v.run_id) for v in iris] == [
            (2, "bbb", {"accuracy": 0.95}, "run-2"),
            (1, "aaa", {"accuracy": 0.9}, "run-1"),
        ]
        assert iris[1].created_at == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
        assert registry.models() == ["iris", "wine"]
        assert registry.resolve("iris@production").version == 2
        history = registry.alias_history("iris")
        assert [(m.from_version, m.to_version, m.reason, m.kind) for m in history] == [
            (1, 2, "better accuracy", "move"),
            (None, 1, "first release", "move"),
        ]
        assert registry.find_by_digest("iris", "aaa") == iris[1]

        # Registering works as now: uniqueness is on (name, digest, dirty).
        assert register(registry, "aaa") == (iris[1], False)
        dirty, created = register(registry, "aaa", lineage={"git": {"commit": "c3", "dirty": True}})
        assert created and dirty.version == 3
        assert register(registry, "ccc")[0].version == 4
        registry.set_alias("iris", "production", 4, actor="ci", reason="gates passed", kind="line")
        assert registry.alias_history("iris")[0].kind == "line"
    assert [number for number, _, _ in _applied(registry_url)] == list(range(1, LATEST + 1))

    if registry_url.startswith("sqlite"):
        db_path = Path(registry_url.removeprefix("sqlite:///"))
        assert probe.registered_version(db_path, "iris", "aaa") == 1
        assert probe.registered_version(db_path, "iris", "aaa", dirty=True) == 3
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_a_registry_from_a_newer_conveyor_is_refused_untouched(registry_url: str) -> None:
    Registry(registry_url).close()
    engine = engine_for(registry_url)
    try:
        with engine.begin() as conn:
            conn.execute(schema_version.insert().values(
                number=LATEST + 1, name="from the future", applied_at=datetime.now(timezone.utc)))
            conn.exec_driver_sql("ALTER TABLE model_versions ADD COLUMN future TEXT")
    finally:
        engine.dispose()
    before = (_layout(registry_url), _applied(registry_url))
    db_path = Path(registry_url.removeprefix("sqlite:///"))
    file_before = db_path.read_bytes() if registry_url.startswith("sqlite") else b""

    with pytest.raises(RegistryError) as caught:
        Registry(registry_url)
    assert str(caught.value) == (
        f"the registry at {registry_url} was written by a newer Conveyor "
        f"(schema {LATEST + 1}, this one knows up to {LATEST}); upgrade Conveyor"
    )
    assert (_layout(registry_url), _applied(registry_url)) == before
    if registry_url.startswith("sqlite"):
        assert db_path.read_bytes() == file_before


def test_a_database_that_is_not_a_registry_is_refused_untouched(registry_url: str) -> None:
    engine = engine_for(registry_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE model_versions (id INTEGER PRIMARY KEY, label TEXT)")
    finally:
        engine.dispose()
    before = _layout(registry_url)
    with pytest.raises(RegistryError, match="has a model_versions table but no alias_history or aliases "
                                            "table, so it is not a Conveyor registry"):
        Registry(registry_url)
    assert _layout(registry_url) == before


def test_alias_moves_record_their_kind(registry: Registry) -> None:
    for digest in ("a", "b"):
        register(registry, digest)
    registry.set_alias("iris", "production", 1, actor="ci", reason="gates passed", kind="line")
    registry.set_alias("iris", "production", 2, actor="ana", reason="by hand")
    registry.set_alias("iris", "production", 1, actor="ana", reason="bad answers", kind="rollback")
    registry.remove_alias("iris", "production", actor="ana", reason="withdrawn")
    assert [m.kind for m in registry.alias_history("iris")] == ["remove", "rollback", "move", "line"]
    with pytest.raises(RegistryError, match="invalid alias move kind 'Roll Back'"):
        registry.set_alias("iris", "production", 2, actor="ana", reason="x", kind="Roll Back")
    assert len(registry.alias_history("iris")) == 4


