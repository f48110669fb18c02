"""The stdlib-sqlite3 probe the no-op fast path of `conveyor run` reads the registry with."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from conftest import register

from conveyor.registry import (
    Registry,
    probe,
)
from conveyor.registry.migrations import LATEST

# -- probe --------------------------------------------------------------------


def test_probe_agrees_with_registry(sqlite_registry: Registry, db_path: Path) -> None:
    registry = sqlite_registry
    for digest in ("a", "b", "c"):
        register(registry, digest)
    register(registry, "a", name="wine")
    registry.set_alias("iris", "production", 2, actor="ana", reason="r")
    registry.set_alias("wine", "production", 1, actor="ana", reason="r")

    for name in registry.models():
        for version in registry.versions(name):
            assert probe.registered_version(db_path, name, version.digest) == version.version
        for alias, version_number in registry.aliases(name).items():
            assert probe.alias_version(db_path, name, alias) == version_number
    assert probe.registered_version(db_path, "iris", "zzz") is None
    assert probe.registered_version(db_path, "unknown", "a") is None
    assert probe.alias_version(db_path, "iris", "staging") is None


def test_probe_answers_none_without_a_usable_database(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "registry.db"
    assert probe.registered_version(missing, "iris", "a") is None
    assert probe.alias_version(missing, "iris", "production") is None
    assert not missing.exists()

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert probe.registered_version(empty, "iris", "a") is None
    assert probe.alias_version(empty, "iris", "production") is None

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert probe.registered_version(garbage, "iris", "a") is None


def test_probe_path_with_uri_characters(tmp_path: Path) -> None:
    db_path = tmp_path / "odd dir?#%20" / "registry.db"
    with Registry("sqlite:///" + quote(str(db_path))) as registry:
        register(registry, "a")
        registry.set_alias("iris", "production", 1, actor="ana", reason="r")
    assert db_path.is_file()
    assert probe.registered_version(db_path, "iris", "a") == 1
    assert probe.alias_version(db_path, "iris", "production") == 1


def test_probe_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, conveyor.registry.probe; "
        "assert not any(m.split('.')[0] == 'sqlalchemy' for m in sys.modules), 'sqlalchemy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)





def test_probe_tells_a_dirty_build_from_its_committed_twin(sqlite_registry: Registry, db_path: Path) -> None:
    register(sqlite_registry, "d" * 64, lineage={"git": {"commit": "abc", "dirty": True}})
    register(sqlite_registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert probe.registered_version(db_path, "iris", "d" * 64) == 2
    assert probe.registered_version(db_path, "iris", "d" * 64, dirty=True) == 1


def test_the_probe_knows_the_schema_the_migrations_end_at() -> None:
    from conveyor.registry import SCHEMA_VERSION

    assert SCHEMA_VERSION == LATEST


def test_the_probe_does_not_read_a_newer_schema(sqlite_registry: Registry, db_path: Path) -> None:
    version, _ = register(sqlite_registry, "e" * 64)
    assert probe.registered_version(db_path, "iris", "e" * 64) == version.version
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("INSERT INTO schema_version (number, name, applied_at) VALUES (?, 'from the future', ?)",
                     (LATEST + 1, "2030-01-01 00:00:00"))
    assert probe.registered_version(db_path, "iris", "e" * 64) is None  # the slow path then refuses it
