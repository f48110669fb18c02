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
from contextlib import closing
from datetime import timezone
from pathlib import Path
from typing import Any

import postgres
import pytest
import sqlalchemy as sa
from conftest import engine_for, register
from hypothesis import given
from hypothesis import strategies as st

from conveyor.exceptions import ConveyorError, ModelNotFound, RegistryError
from conveyor.registry import (
    ALIAS_PATTERN,
    NAME_PATTERN,
    Registry,
    parse_ref,
    probe,
)
from conveyor.registry.migrations import MIGRATIONS

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
    with engine_for(registry_url).connect() as conn:
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


def test_a_dirty_build_and_its_committed_twin_are_two_versions(registry: Registry) -> None:
    dirty, created = register(registry, "d" * 64, lineage={"git": {"commit": "abc", "dirty": True}})
    assert created and dirty.version == 1
    clean, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert created and clean.version == 2 and clean.lineage["git"]["commit"] == "def"
    again, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert not created and again.version == 2
    assert registry.find_by_digest("iris", "d" * 64) == clean
    assert registry.find_by_digest("iris", "d" * 64, dirty=True) == dirty


def test_a_move_decided_on_a_stale_alias_is_refused(registry: Registry) -> None:
    for digest in ("a" * 64, "b" * 64, "c" * 64):
        register(registry, digest)
    registry.set_alias("iris", "production", 1, actor="t", reason="first", expected=None)
    registry.set_alias("iris", "production", 2, actor="t", reason="meanwhile")  # someone else moves it
    with pytest.raises(RegistryError, match=r"iris@production moved meanwhile \(it now points to v2, not v1\)"):
        registry.set_alias("iris", "production", 3, actor="t", reason="judged against v1", expected=1)
    assert registry.aliases("iris") == {"production": 2}
    assert len(registry.alias_history("iris")) == 2


def test_urls_in_messages_hide_passwords_in_the_query_too() -> None:
    from conveyor.registry.engine import display_url

    assert display_url("postgresql://bob:s3cret@db/reg?password=other") == "postgresql://bob:***@db/reg?…"
    assert "s3cret" not in display_url("postgresql://bob@db/reg?password=s3cret")
