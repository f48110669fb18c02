"""Stage graph execution: cache keys, skipping unchanged stages, restoring outs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import config as config_module
from conveyor.exceptions import ConfigError
from conveyor.pipeline import Pipeline, StageCache
from conveyor.project import Project
from conveyor.store import ArtifactStore


def _pipeline(root: Path) -> Pipeline:
    project = Project(root)
    return Pipeline(root, config_module.load(root), ArtifactStore(project.cache_dir),
                    StageCache(project.stage_cache_dir))


def _run(root: Path, **kwargs: object) -> dict[str, str]:
    results = _pipeline(root).run(log_path_for=lambda name: root / ".conveyor" / "logs" / f"{name}.log", **kwargs)  # type: ignore[arg-type]
    return {r.name: r.status for r in results}


def _ran(root: Path) -> list[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


def test_first_run_runs_everything_in_order(tmp_repo: Path) -> None:
    assert _run(tmp_repo) == {"prepare": "ran", "train": "ran"}
    assert _ran(tmp_repo) == ["prepare", "train"]
    assert (tmp_repo / "model.txt").read_text() == "12.0"


def test_unchanged_stages_do_not_run(tmp_repo: Path) -> None:
    _run(tmp_repo)
    assert _run(tmp_repo) == {"prepare": "cached", "train": "cached"}
    assert _ran(tmp_repo) == ["prepare", "train"]


def test_param_change_reruns_from_the_changed_stage(tmp_repo: Path) -> None:
    _run(tmp_repo)
    (tmp_repo / "params.yaml").write_text("prepare:\n  factor: 3\n")
    assert _run(tmp_repo) == {"prepare": "ran", "train": "ran"}
    assert (tmp_repo / "model.txt").read_text() == "18.0"


def test_same_output_downstream_stays_cached(tmp_repo: Path) -> None:
    _run(tmp_repo)
    (tmp_repo / "data.txt").write_text("1 2 3")  # same content, new mtime
    assert _run(tmp_repo) == {"prepare": "cached", "train": "cached"}


def test_deleted_outs_are_restored_without_running(tmp_repo: Path) -> None:
    _run(tmp_repo)
    import shutil

    shutil.rmtree(tmp_repo / "prepared")
    (tmp_repo / "model.txt").unlink()
    assert _run(tmp_repo) == {"prepare": "restored", "train": "restored"}
    assert _ran(tmp_repo) == ["prepare", "train"]
    assert (tmp_repo / "prepared" / "sub" / "n.txt").read_text() == "3"
    assert (tmp_repo / "model.txt").read_text() == "12.0"


def test_reverting_a_change_restores_the_earlier_outs(tmp_repo: Path) -> None:
    _run(tmp_repo)
    (tmp_repo / "params.yaml").write_text("prepare:\n  factor: 3\n")
    _run(tmp_repo)
    (tmp_repo / "params.yaml").write_text("prepare:\n  factor: 2\n")
    assert _run(tmp_repo) == {"prepare": "restored", "train": "restored"}
    assert (tmp_repo / "model.txt").read_text() == "12.0"
    assert _ran(tmp_repo) == ["prepare", "train", "prepare", "train"]


def test_force_reruns(tmp_repo: Path) -> None:
    _run(tmp_repo)
    assert _run(tmp_repo, force=True) == {"prepare": "ran", "train": "ran"}


def test_failing_stage_stops_downstream(tmp_repo: Path) -> None:
    (tmp_repo / "data.txt").write_text("1 two 3")
    assert _run(tmp_repo) == {"prepare": "failed"}
    log = (tmp_repo / ".conveyor" / "logs" / "prepare.log").read_text()
    assert "ValueError" in log


def test_stage_that_forgets_an_out_fails(tmp_repo: Path) -> None:
    text = (tmp_repo / "conveyor.yaml").read_text().replace("outs: [model.txt]", "outs: [model.txt, extra.txt]")
    (tmp_repo / "conveyor.yaml").write_text(text)
    results = _pipeline(tmp_repo).run(log_path_for=lambda name: tmp_repo / f"{name}.log")
    train = results[-1]
    assert train.status == "failed" and "did not write extra.txt" in (train.error or "")


def test_corrupt_cache_entry_is_a_miss(tmp_repo: Path) -> None:
    _run(tmp_repo)
    for entry in (tmp_repo / ".conveyor" / "stages").glob("*.json"):
        entry.write_text("{not json")
    assert _run(tmp_repo) == {"prepare": "ran", "train": "ran"}


def test_missing_param_names_stage_and_key(tmp_repo: Path) -> None:
    (tmp_repo / "params.yaml").write_text("prepare: {}\n")
    with pytest.raises(ConfigError, match="stages.prepare.params: 'prepare.factor' is not in params.yaml"):
        _run(tmp_repo)


# Each side announces itself, then waits (bounded) for the other: only a parallel run sees both.
_MEET = (
    "import pathlib, time\nme, other = {me!r}, {other!r}\npathlib.Path(me + '.started').touch()\n"
    "deadline = time.time() + 10\n"
    "while not pathlib.Path(other + '.started').exists() and time.time() < deadline: time.sleep(0.05)\n"
    "pathlib.Path(me + '.txt').write_text('together' if pathlib.Path(other + '.started').exists() else 'alone')"
)


def test_independent_stages_run_in_parallel(tmp_repo: Path) -> None:
    (tmp_repo / "meet_left.py").write_text(_MEET.format(me="left", other="right"))
    (tmp_repo / "meet_right.py").write_text(_MEET.format(me="right", other="left"))
    config = (tmp_repo / "conveyor.yaml").read_text()
    config = config.replace("model:", """  left:
    cmd: python meet_left.py
    deps: [meet_left.py]
    outs: [left.txt]
  right:
    cmd: python meet_right.py
    deps: [meet_right.py]
    outs: [right.txt]
model:""")
    (tmp_repo / "conveyor.yaml").write_text(config)
    order = _pipeline(tmp_repo).order()
    assert order.index("prepare") < order.index("train")
    statuses = _run(tmp_repo, jobs=2)
    assert statuses["left"] == statuses["right"] == "ran"
    assert (tmp_repo / "left.txt").read_text() == "together"
    assert (tmp_repo / "right.txt").read_text() == "together"


def test_corrupt_cached_out_is_rebuilt_then_restorable(tmp_repo: Path) -> None:
    _run(tmp_repo)
    project = Project(tmp_repo)
    store = ArtifactStore(project.cache_dir)
    from conveyor.store import hash_path

    victim = store.object_path(hash_path(tmp_repo / "model.txt"))
    victim.chmod(0o644)
    victim.write_text("bit rot")
    (tmp_repo / "model.txt").unlink()
    assert _run(tmp_repo) == {"prepare": "cached", "train": "ran"}  # the cache could not give it back
    (tmp_repo / "model.txt").unlink()
    assert _run(tmp_repo) == {"prepare": "cached", "train": "restored"}  # and now it can
    assert (tmp_repo / "model.txt").read_text() == "12.0"


def test_a_cache_entry_without_its_objects_is_a_miss_or_refills_the_store(tmp_repo: Path) -> None:
    """What a pulled stage result can look like: the entry is here, its outputs' objects are not."""
    import shutil

    _run(tmp_repo)
    store = ArtifactStore(Project(tmp_repo).cache_dir)
    shutil.rmtree(store.root)
    assert _run(tmp_repo) == {"prepare": "cached", "train": "cached"}  # the workspace had the outs
    from conveyor.store import hash_path

    assert store.has(hash_path(tmp_repo / "model.txt")) and store.has(hash_path(tmp_repo / "prepared"))
    shutil.rmtree(store.root)
    (tmp_repo / "model.txt").unlink()
    assert _run(tmp_repo) == {"prepare": "cached", "train": "ran"}  # nothing to restore it from: a miss
    assert _ran(tmp_repo) == ["prepare", "train", "train"]
