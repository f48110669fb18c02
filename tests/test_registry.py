"""The model registry on both backends (a SQLite file, a real PostgreSQL), its schema upgrades, and the probe.

Tests that take `registry` or `registry_url` run once per backend; the
PostgreSQL ones are marked slow and get a fresh database on a throwaway
cluster (see conftest.py and postgres.py).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

import postgres
from conveyor.exceptions import ConveyorError, ModelNotFound, RegistryError
from conveyor.registry import ALIAS_PATTERN, NAME_PATTERN, ModelVersion, Registry, parse_ref, probe
from conveyor.registry.migrations import LATEST, MIGRATIONS
from conveyor.registry.schema import metadata, schema_version


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / ".conveyor" / "registry.db"


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    registry = Registry(registry_url)
    yield registry
    registry.close()


@pytest.fixture
def sqlite_registry(db_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{db_path}")
    yield registry
    registry.close()


def _engine(url: str) -> sa.Engine:
    """A plain engine on a registry's database, to look at it or build old layouts by hand."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _another_url(registry_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second empty database on the same backend as `registry_url`."""
    if registry_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database()


def register(registry: Registry, digest: str, name: str = "iris", **fields: Any) -> tuple[ModelVersion, bool]:
    values: dict[str, Any] = {
        "flavor": "sklearn",
        "signature": {"inputs": [{"name": "x", "type": "double"}]},
        "metrics": {"accuracy": 0.9},
        "params": {"C": 1.0},
        "lineage": {"commit": "abc123", "dirty": False},
        "gates": [],
        "run_id": "run-1",
        **fields,
    }
    return registry.register(name=name, digest=digest, **values)


# -- versions -----------------------------------------------------------------


def test_versions_start_at_one_and_increment_per_model(registry: Registry) -> None:
    assert [register(registry, d)[0].version for d in ("a", "b", "c")] == [1, 2, 3]
    assert register(registry, "a", name="wine")[0].version == 1
    assert registry.models() == ["iris", "wine"]
    assert [v.version for v in registry.versions("iris")] == [3, 2, 1]
    assert registry.versions("unknown") == []


def test_register_is_idempotent_on_name_and_digest(registry: Registry) -> None:
    first, created = register(registry, "a")
    again, created_again = register(registry, "a", metrics={"accuracy": 0.5})
    assert (created, created_again) == (True, False)
    assert again == first
    assert len(registry.versions("iris")) == 1
    assert registry.find_by_digest("iris", "a") == first
    assert registry.find_by_digest("iris", "b") is None


def test_registered_version_reads_back_equal_and_utc(registry: Registry) -> None:
    version, _ = register(
        registry, "a", params={"layers": (1, 2)}, gates=[{"gate": "accuracy >= 0.9", "passed": True}]
    )
    assert registry.get("iris", 1) == version
    assert version.params == {"layers": [1, 2]}
    assert version.ref == "iris@1"
    assert version.created_at.tzinfo == timezone.utc


def test_registry_persists_across_reopen(registry_url: str) -> None:
    with Registry(registry_url) as registry:
        version, _ = register(registry, "a")
        registry.set_alias("iris", "production", 1, actor="ana", reason="first")
    with Registry(registry_url) as reopened:
        assert reopened.resolve("iris@production") == version
        assert len(reopened.alias_history("iris")) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metrics": {"accuracy": float("nan")}}, "metric 'accuracy' is nan"),
        ({"metrics": {"accuracy": "high"}}, "not a number"),
        ({"params": {"when": object()}}, "params cannot be stored"),
        ({"lineage": {"x": float("inf")}}, "lineage cannot be stored"),
        ({"name": "bad name"}, "invalid model name 'bad name'"),
        ({"digest": ""}, "without an artifact digest"),
    ],
)
def test_register_rejects_bad_input(registry: Registry, fields: dict[str, Any], message: str) -> None:
    fields = dict(fields)  # the parameter is shared by both backends' runs
    digest = fields.pop("digest", "a")
    with pytest.raises(RegistryError, match=message):
        register(registry, digest, **fields)
    assert registry.models() == []


def test_invalid_url_is_a_conveyor_error() -> None:
    with pytest.raises(RegistryError, match="invalid registry URL 'not a url'"):
        Registry("not a url")


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    bogus = tmp_path / "registry.db"
    bogus.write_text("this is not sqlite " * 100)
    with pytest.raises(ConveyorError, match="registry.db"):
        Registry(f"sqlite:///{bogus}")


# -- references ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("iris", ("iris", None)),
        ("iris@3", ("iris", "3")),
        ("iris@v3", ("iris", "v3")),
        ("iris@production", ("iris", "production")),
        (" my-model.v2@latest ", ("my-model.v2", "latest")),
    ],
)
def test_parse_ref(ref: str, expected: tuple[str, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "@3", "iris@", "iris@Production", "iris@3@4", "ir is", "iris@-1"])
def test_malformed_refs_name_the_expected_form(registry: Registry, ref: str) -> None:
    with pytest.raises(ConveyorError, match=r"NAME\[@VERSION\|@ALIAS\]"):
        registry.resolve(ref)


@given(
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.one_of(st.none(), st.from_regex(ALIAS_PATTERN, fullmatch=True), st.integers(0, 10**6).map(str)),
)
def test_parse_ref_round_trips(name: str, selector: str | None) -> None:
    assert parse_ref(name if selector is None else f"{name}@{selector}") == (name, selector)


def test_resolve_forms(registry: Registry) -> None:
    for digest in ("a", "b", "c"):
        register(registry, digest)
    registry.set_alias("iris", "production", 2, actor="ana", reason="best so far")
    assert registry.resolve("iris").version == 3
    assert registry.resolve("iris@latest").version == 3
    assert registry.resolve("iris@1").version == 1
    assert registry.resolve("iris@v2").version == 2
    assert registry.resolve("iris@production").version == 2


def test_not_found_hints_list_versions_and_aliases(registry: Registry) -> None:
    with pytest.raises(ModelNotFound, match="the registry is empty"):
        registry.resolve("iris")
    register(registry, "a")
    register(registry, "b")
    registry.set_alias("iris", "production", 1, actor="ana", reason="first")
    with pytest.raises(ModelNotFound, match=r"'iris@9'.*versions 1-2; aliases: production -> v1"):
        registry.resolve("iris@9")
    with pytest.raises(ModelNotFound, match="'iris@staging'.*production -> v1"):
        registry.resolve("iris@staging")
    with pytest.raises(ModelNotFound, match="no model named 'wine'.*known models: iris"):
        registry.get("wine", 1)


# -- aliases ------------------------------------------------------------------


def test_alias_moves_are_recorded_newest_first(registry: Registry) -> None:
    for digest in ("a", "b"):
        register(registry, digest)
    registry.set_alias("iris", "production", 1, actor="ana", reason="first release")
    registry.set_alias("iris", "staging", 2, actor="ci", reason="candidate", run_id="run-7")
    registry.set_alias("iris", "production", 2, actor="ana", reason="better accuracy")
    rollback = registry.set_alias("iris", "production", 1, actor="bo", reason="latency regression")

    assert (rollback.from_version, rollback.to_version) == (2, 1)
    assert registry.aliases("iris") == {"production": 1, "staging": 2}
    history = registry.alias_history("iris", "production")
    assert [(m.from_version, m.to_version, m.actor, m.reason) for m in history] == [
        (2, 1, "bo", "latency regression"),
        (1, 2, "ana", "better accuracy"),
        (None, 1, "ana", "first release"),
    ]
    assert history[0] == rollback
    assert all(m.at.tzinfo == timezone.utc for m in history)
    everything = registry.alias_history("iris")
    assert len(everything) == 4 and everything[2].run_id == "run-7"


def test_pointing_an_alias_where_it_points_records_nothing(registry: Registry) -> None:
    register(registry, "a")
    registry.set_alias("iris", "production", 1, actor="ana", reason="first")
    move = registry.set_alias("iris", "production", 1, actor="ci", reason="same again")
    assert move.from_version == move.to_version == 1
    assert len(registry.alias_history("iris")) == 1


def test_alias_needs_an_existing_version_and_writes_nothing_otherwise(registry: Registry) -> None:
    register(registry, "a")
    with pytest.raises(ModelNotFound, match="'iris@5'.*version 1"):
        registry.set_alias("iris", "production", 5, actor="ana", reason="typo")
    assert registry.aliases("iris") == {}
    assert registry.alias_history("iris") == []


@pytest.mark.parametrize("alias", ["Production", "3", "v3", "latest", "-x", "prod@1", ""])
def test_alias_names_are_validated(registry: Registry, alias: str) -> None:
    register(registry, "a")
    with pytest.raises(RegistryError, match=f"invalid alias '{alias}'"):
        registry.set_alias("iris", alias, 1, actor="ana", reason="x")


def test_remove_alias_is_recorded(registry: Registry) -> None:
    register(registry, "a")
    registry.set_alias("iris", "candidate", 1, actor="ci", reason="trained")
    move = registry.remove_alias("iris", "candidate", actor="ana", reason="withdrawn")
    assert (move.from_version, move.to_version) == (1, None)
    assert registry.aliases("iris") == {}
    assert registry.alias_history("iris")[0] == move
    with pytest.raises(ModelNotFound):
        registry.remove_alias("iris", "candidate", actor="ana", reason="again")


# -- backends -----------------------------------------------------------------


def test_sqlite_registry_uses_wal_so_readers_never_wait_for_a_writer(sqlite_registry: Registry, db_path: Path) -> None:
    register(sqlite_registry, "a")
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        # EXCLUSIVE shuts readers out of a rollback-journal database; in WAL mode they read the last commit.
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute(
            "INSERT INTO model_versions (name, version, digest, flavor, signature, metrics, params, lineage, "
            "gates, run_id, created_at, dirty) VALUES ('iris', 2, 'b', 'sklearn', '{}', '{}', '{}', '{}', "
            "'[]', NULL, '2024-05-01 10:00:00.000000', 0)"
        )
        started = time.monotonic()
        assert probe.registered_version(db_path, "iris", "a") == 1
        assert probe.registered_version(db_path, "iris", "b") is None
        assert sqlite_registry.resolve("iris").version == 1
        assert time.monotonic() - started < 2
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert probe.registered_version(db_path, "iris", "b") == 2


def test_the_probe_never_writes_the_database(sqlite_registry: Registry, db_path: Path) -> None:
    register(sqlite_registry, "a")
    sqlite_registry.set_alias("iris", "production", 1, actor="ana", reason="r")
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    assert probe.registered_version(db_path, "iris", "a") == 1
    assert probe.alias_version(db_path, "iris", "production") == 1
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before


@pytest.mark.slow
def test_every_postgresql_url_form_uses_psycopg(postgres_cluster: postgres.Cluster) -> None:
    url = postgres_cluster.create_database()
    with Registry(url) as registry:
        register(registry, "a")
    for form in ("postgres://", "postgresql+psycopg://"):
        with Registry(url.replace("postgresql://", form, 1)) as registry:
            assert registry.resolve("iris").digest == "a"


def test_a_server_that_does_not_answer_is_a_one_line_error_without_the_password() -> None:
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for scheme in ("postgresql", "postgres"):
            with pytest.raises(RegistryError) as caught:
                Registry(f"{scheme}://ana:s3cret@127.0.0.1:{port}/registry")
            message = str(caught.value)
            assert message.startswith(f"cannot connect to the registry at {scheme}://ana:***@127.0.0.1:{port}/registry: ")
            assert "refused" in message and "s3cret" not in message and "\n" not in message


# -- schema versions ----------------------------------------------------------


def _layout(url: str) -> dict[str, Any]:
    """Tables, columns, keys, constraints and indexes of the database at `url`, as reflected."""
    engine = _engine(url)
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
    engine = _engine(url)
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
    described = _another_url(registry_url, request, tmp_path)
    engine = _engine(described)
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
    engine = _engine(url)
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
    engine = _engine(registry_url)
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
    engine = _engine(registry_url)
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


# -- concurrency --------------------------------------------------------------

_REGISTER_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from conveyor.registry import Registry

    url, start, worker, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    while not start.exists():
        time.sleep(0.001)
    registry = Registry(url)  # all at once, on an empty database: they race to create the schema too
    made = []
    try:
        for i in range(count):
            for digest in (f"{worker}-{i}", "shared"):
                version, created = registry.register(
                    name="iris", digest=digest, flavor="sklearn", signature={}, metrics={},
                    params={}, lineage={}, gates=[], run_id=worker,
                )
                made.append([digest, version.version, created])
    finally:
        registry.close()
    print(json.dumps(made))
    """
)

_ALIAS_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from conveyor.registry import Registry

    url, start, worker, moves = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    targets = [int(v) for v in sys.argv[5].split(",")]
    while not start.exists():
        time.sleep(0.001)
    made = []
    with Registry(url) as registry:
        for i in range(moves):
            move = registry.set_alias("iris", "production", targets[i % len(targets)], actor=worker,
                                      reason=f"{worker} move {i}", kind="promote")
            made.append([move.from_version, move.to_version, move.reason])
    print(json.dumps(made))
    """
)


def _race(script: str, tmp_path: Path, argvs: list[list[str]]) -> list[Any]:
    """Run `script` in one process per argv, released together; their JSON outputs, in order."""
    start = tmp_path / "start"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, argv[0], str(start), *argv[1:]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    start.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs


def test_concurrent_processes_get_distinct_gapless_versions(tmp_path: Path, registry_url: str) -> None:
    workers, count = 8, 5
    outputs = _race(_REGISTER_WORKER, tmp_path, [[registry_url, f"w{n}", str(count)] for n in range(workers)])
    made = [tuple(entry) for output in outputs for entry in output]

    created = [(digest, version) for digest, version, new in made if new]
    total = workers * count + 1
    assert sorted(version for _, version in created) == list(range(1, total + 1))
    assert [digest for digest, _ in created].count("shared") == 1
    assert len({version for digest, version, _ in made if digest == "shared"}) == 1
    with Registry(registry_url) as registry:
        rows = registry.versions("iris")
    assert [v.version for v in rows] == list(range(total, 0, -1))
    assert {v.digest for v in rows} == {f"w{n}-{i}" for n in range(workers) for i in range(count)} | {"shared"}
    with _engine(registry_url).connect() as conn:
        assert conn.execute(sa.text("SELECT number FROM schema_version ORDER BY number")).scalars().all() == \
            [m.number for m in MIGRATIONS]


def test_concurrent_alias_moves_serialise_and_lose_no_history(tmp_path: Path, registry_url: str) -> None:
    with Registry(registry_url) as registry:
        for digest in "abcd":
            register(registry, digest)
    moves = 20
    outputs = _race(_ALIAS_WORKER, tmp_path, [[registry_url, "ana", str(moves), "1,2"],
                                              [registry_url, "bo", str(moves), "3,4"]])
    with Registry(registry_url) as registry:
        history = list(reversed(registry.alias_history("iris", "production")))
        current = registry.aliases("iris")["production"]
    # Each worker alternates between its own two versions, so every call is a real move.
    assert len(history) == 2 * moves
    assert sorted(m.reason for m in history) == sorted(r for output in outputs for _, _, r in output)
    # Serialised: every move starts where the one before it ended, as each mover saw it.
    assert [m.from_version for m in history] == [None] + [m.to_version for m in history[:-1]]
    assert current == history[-1].to_version
    returned = {(f, t, r) for output in outputs for f, t, r in output}
    assert returned == {(m.from_version, m.to_version, m.reason) for m in history}


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


def test_a_dirty_build_and_its_committed_twin_are_two_versions(registry: Registry) -> None:
    dirty, created = register(registry, "d" * 64, lineage={"git": {"commit": "abc", "dirty": True}})
    assert created and dirty.version == 1
    clean, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert created and clean.version == 2 and clean.lineage["git"]["commit"] == "def"
    again, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert not created and again.version == 2
    assert registry.find_by_digest("iris", "d" * 64) == clean
    assert registry.find_by_digest("iris", "d" * 64, dirty=True) == dirty


def test_probe_tells_a_dirty_build_from_its_committed_twin(sqlite_registry: Registry, db_path: Path) -> None:
    register(sqlite_registry, "d" * 64, lineage={"git": {"commit": "abc", "dirty": True}})
    register(sqlite_registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert probe.registered_version(db_path, "iris", "d" * 64) == 2
    assert probe.registered_version(db_path, "iris", "d" * 64, dirty=True) == 1
