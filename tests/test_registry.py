"""The model registry on a real SQLite file, and the stdlib probe that reads it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.exceptions import ConveyorError, ModelNotFound, RegistryError
from conveyor.registry import ALIAS_PATTERN, NAME_PATTERN, ModelVersion, Registry, parse_ref, probe


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / ".conveyor" / "registry.db"


@pytest.fixture
def registry(db_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{db_path}")
    yield registry
    registry.close()


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


def test_registry_persists_across_reopen(db_path: Path) -> None:
    with Registry(f"sqlite:///{db_path}") as registry:
        version, _ = register(registry, "a")
        registry.set_alias("iris", "production", 1, actor="ana", reason="first")
    with Registry(f"sqlite:///{db_path}") as reopened:
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


# -- concurrency --------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from conveyor.registry import Registry

    url, start, worker, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    while not start.exists():
        time.sleep(0.001)
    registry = Registry(url)
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


def test_concurrent_processes_get_distinct_versions(tmp_path: Path, db_path: Path) -> None:
    workers, count = 4, 10
    start = tmp_path / "start"
    url = f"sqlite:///{db_path}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, str(start), f"w{n}", str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    start.touch()
    made: list[tuple[str, int, bool]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        made.extend(tuple(entry) for entry in json.loads(out))

    created = [(digest, version) for digest, version, new in made if new]
    total = workers * count + 1
    assert sorted(version for _, version in created) == list(range(1, total + 1))
    assert [digest for digest, _ in created].count("shared") == 1
    shared = {version for digest, version, _ in made if digest == "shared"}
    assert len(shared) == 1
    with Registry(url) as registry:
        rows = registry.versions("iris")
    assert [v.version for v in rows] == list(range(total, 0, -1))
    assert {v.digest for v in rows} == {f"w{n}-{i}" for n in range(workers) for i in range(count)} | {"shared"}


# -- probe --------------------------------------------------------------------


def test_probe_agrees_with_registry(registry: Registry, db_path: Path) -> None:
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


def test_a_dirty_build_and_its_committed_twin_are_two_versions(registry: Registry, db_path: Path) -> None:
    dirty, created = register(registry, "d" * 64, lineage={"git": {"commit": "abc", "dirty": True}})
    assert created and dirty.version == 1
    clean, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert created and clean.version == 2 and clean.lineage["git"]["commit"] == "def"
    again, created = register(registry, "d" * 64, lineage={"git": {"commit": "def", "dirty": False}})
    assert not created and again.version == 2
    assert registry.find_by_digest("iris", "d" * 64) == clean
    assert registry.find_by_digest("iris", "d" * 64, dirty=True) == dirty
    assert probe.registered_version(db_path, "iris", "d" * 64) == 2
    assert probe.registered_version(db_path, "iris", "d" * 64, dirty=True) == 1
