"""Remotes: a directory and a real S3 API (moto's server on loopback), push/pull, resume, credentials."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git

from conveyor import data
from conveyor.remote import Remote
from conveyor.store import ArtifactStore, hash_bytes, hash_file

CONFIG = """\
project: remote
stages:
  train:
    cmd: echo 1 > model.txt
    deps: [files]
    outs: [model.txt]
model:
  name: remote
  path: model.txt
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git project with a tracked directory of 40 small files and one of 1 MiB."""
    root = tmp_path / "proj"
    (root / "files").mkdir(parents=True)
    for i in range(40):
        (root / "files" / f"{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / "files" / "big.bin").write_bytes(os.urandom(1 << 20))
    (root / "conveyor.yaml").write_text(CONFIG)
    (root / ".gitignore").write_text("/.conveyor/\n")
    git(root, "init", "-q", "-b", "main")
    data.add(root, ArtifactStore(root / ".conveyor" / "cache"), root / "files")
    return root


def _cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                          check=False, env={**os.environ, **(env or {})}, timeout=300)


def _objects(root: Path) -> dict[str, Path]:
    """Loose objects of a directory remote (large ones; small ones are in packs)."""
    return {p.parent.name + p.name: p for p in (root / "objects").glob("*/*")}


def _inventory(root: Path) -> set[str]:
    return Remote(str(root)).digests()


def _intact(root: Path) -> bool:
    """Every loose object and every object of every indexed pack hashes to its digest."""
    if not all(hash_file(path) == digest for digest, path in _objects(root).items()):
        return False
    for index in (root / "packs").glob("*.idx"):
        pack = index.with_suffix(".pack").read_bytes()
        for digest, (offset, length) in json.loads(index.read_text()).items():
            if hash_bytes(pack[offset:offset + length]) != digest:
                return False
    return True


def _reset_clone(root: Path) -> None:
    """What a fresh clone has: the pointer, no data, no store."""
    shutil.rmtree(root / ".conveyor")
    shutil.rmtree(root / "files")


def test_a_directory_remote_moves_only_what_is_missing_and_a_clone_gets_its_data_back(
        project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    first = _cli(project, "push", "--remote", str(remote), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["moved"] == 42  # 41 files + the manifest
    assert len(_inventory(remote)) == 42 and _intact(remote)
    assert len(_objects(remote)) == 1  # the 1 MiB file; the 41 small objects went in one pack
    assert len(list((remote / "packs").glob("*.idx"))) == 1
    again = _cli(project, "push", "--remote", str(remote), "--json")
    assert json.loads(again.stdout) == {"moved": 0, "present": 42, "bytes": 0, "missing": [], "corrupt": [],
                                        "stage_results": {"moved": 0, "present": 0, "invalid": 0, "held_back": 0}}
    expected = data.status(project)[0].digest
    _reset_clone(project)
    pulled = _cli(project, "pull", "--json", env={"CONVEYOR_REMOTE": f"file://{remote}"})
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["moved"] == 42
    assert _cli(project, "data", "checkout").returncode == 0
    assert data.status(project)[0].state == "unchanged"
    assert data.status(project)[0].digest == expected


def test_the_remote_comes_from_the_flag_then_the_environment_then_conveyor_yaml(project: Path, tmp_path: Path) -> None:
    in_yaml, in_env, in_flag = tmp_path / "yaml", tmp_path / "env", tmp_path / "flag"
    with open(project / "conveyor.yaml", "a") as config:
        config.write(f"remote: {in_yaml}\n")
    assert _cli(project, "push").returncode == 0
    assert _cli(project, "push", env={"CONVEYOR_REMOTE": str(in_env)}).returncode == 0
    assert _cli(project, "push", "--remote", str(in_flag), env={"CONVEYOR_REMOTE": str(in_env)}).returncode == 0
    assert len(_inventory(in_yaml)) == len(_inventory(in_env)) == len(_inventory(in_flag)) == 42


def test_without_a_remote_the_error_says_how_to_set_one(project: Path) -> None:
    failed = _cli(project, "pull", env={"CONVEYOR_REMOTE": ""})
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: no remote configured") and "CONVEYOR_REMOTE" in failed.stderr


def test_a_corrupt_remote_object_is_reported_and_never_enters_the_store(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert _cli(project, "push", "--remote", str(remote)).returncode == 0
    victim_digest, victim = next((d, p) for d, p in _objects(remote).items() if p.stat().st_size == 1 << 20)
    victim.chmod(0o644)
    victim.write_bytes(b"bit rot")
    index = next((remote / "packs").glob("*.idx"))
    packed_digest, (offset, _length) = next(iter(json.loads(index.read_text()).items()))
    pack = bytearray(index.with_suffix(".pack").read_bytes())
    pack[offset] ^= 0xFF
    index.with_suffix(".pack").write_bytes(bytes(pack))
    checked = _cli(project, "verify", "--remote", "--remote-url", str(remote))
    assert checked.returncode == 1
    assert f"corrupt on the remote: {victim_digest[:16]}" in checked.stdout
    assert f"corrupt on the remote: {packed_digest[:16]}" in checked.stdout
    _reset_clone(project)
    pulled = _cli(project, "pull", "--remote", str(remote))
    assert pulled.returncode == 1
    assert "arrived corrupt" in pulled.stderr and "Traceback" not in pulled.stderr
    assert "2 object(s) arrived corrupt" in pulled.stderr
    assert not ArtifactStore(project / ".conveyor" / "cache").has(victim_digest)
    assert not ArtifactStore(project / ".conveyor" / "cache").has(packed_digest)
    assert not list((project / ".conveyor" / "cache" / "tmp").iterdir())  # no leftovers


def test_an_interrupted_push_leaves_no_partial_object_and_resumes(project: Path, tmp_path: Path) -> None:
    (project / "files" / "huge.bin").write_bytes(os.urandom(96 << 20))
    data.add(project, ArtifactStore(project / ".conveyor" / "cache"), project / "files")
    remote = tmp_path / "remote"
    process = subprocess.Popen([sys.executable, "-m", "conveyor", "push", "--remote", str(remote), "--jobs", "1"],
                               cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            partial = [p for p in (remote / "tmp").glob("*") if p.stat().st_size > 0] if (remote / "tmp").is_dir() else []
            if partial:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert _intact(remote)  # nothing partial under a digest
    resumed = _cli(project, "push", "--remote", str(remote), "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["moved"] + summary["present"] == 43
    assert len(_inventory(remote)) == 43
    assert _intact(remote)


def test_redact_masks_credentials_from_the_url() -> None:
    remote = Remote("file:///tmp/x")
    assert remote.redact("failed at s3://AKIA123:s3cr3t@bucket/p") == "failed at s3://***@bucket/p"
    with_creds = Remote("/tmp/x")
    with_creds._secrets = ["AKIA123", "s3cr3t"]
    assert "s3cr3t" not in with_creds.redact("signature for s3cr3t mismatched (key AKIA123)")


# -- stage results ------------------------------------------------------------------------------
def _entry(stage: str, outs: dict[str, str]) -> str:
    return json.dumps({"stage": stage, "outs": outs, "created_at": time.time()})


@pytest.fixture(scope="module")
def iris_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Project A: the iris example, its line run once, not deployed."""
    root = tmp_path_factory.mktemp("stage-results") / "a"
    assert _cli(root.parent, "init", str(root), "--example", "iris").returncode == 0
    ran = _cli(root, "run", "--no-deploy")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return root


def _clone_runs_from_cache(a: Path, b: Path, env: dict[str, str]) -> None:
    """A pushes; B, a fresh clone of A, pulls and runs: no stage and no test runs again."""
    only_model = _cli(a, "push", "--model", "iris@1", "--json", env=env)
    assert only_model.returncode == 0, only_model.stderr
    assert json.loads(only_model.stdout)["stage_results"] is None  # --run and --model leave them alone
    pushed = _cli(a, "push", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    stages = json.loads(pushed.stdout)["stage_results"]
    assert stages["moved"] == 3 and stages["held_back"] == stages["invalid"] == 0  # prepare, train, tests
    again = _cli(a, "push", "--json", env=env)
    assert json.loads(again.stdout)["moved"] == 0
    assert json.loads(again.stdout)["stage_results"] == {"moved": 0, "present": 3, "invalid": 0, "held_back": 0}
    git(a.parent, "clone", "-q", str(a), str(b))
    pulled = _cli(b, "pull", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "Stage results: 3 pulled, 0 already there." in pulled.stdout
    ran = _cli(b, "run", "--no-deploy", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    steps = {s["name"]: s for s in json.loads(_cli(b, "runs", "show", "--json").stdout)["steps"]}
    # The outs are not in B's workspace: they come back from the store, and no command runs.
    assert {n: s["status"] for n, s in steps.items() if s["kind"] == "stage"} == {
        "stage:prepare": "restored", "stage:train": "restored"}
    assert steps["tests"]["status"] == "cached"
    assert _cli(b, "run", "--no-deploy", env=env).returncode == 0
    steps = {s["name"]: s for s in json.loads(_cli(b, "runs", "show", "--json").stdout)["steps"]}
    assert {n: s["status"] for n, s in steps.items() if s["kind"] == "stage"} == {
        "stage:prepare": "cached", "stage:train": "cached"}


def test_a_fresh_clone_pulls_stage_results_and_runs_every_stage_from_cache(iris_a: Path, tmp_path: Path) -> None:
    _clone_runs_from_cache(iris_a, tmp_path / "b", {"CONVEYOR_REMOTE": str(tmp_path / "remote")})


def test_invalid_stage_results_on_the_remote_are_reported_and_never_written(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    assert _cli(project, "push", "--remote", str(remote)).returncode == 0
    digest = data.status(project)[0].digest
    keys = [hash_bytes(str(i).encode()) for i in range(6)]
    entries = {
        f"{keys[0]}.json": _entry("train", {"files": digest}),  # valid
        f"tests-{keys[1]}.json": json.dumps({"passed": 3, "created_at": 1.0}),  # valid
        f"{keys[2]}.json": "{not json",
        f"{keys[3]}.json": json.dumps({"stage": "train", "outs": ["files"], "created_at": 1.0}),
        f"{keys[4]}.json": _entry("train", {"files": "../../../etc/passwd"}),
        f"tests-{keys[5]}.json": json.dumps({"passed": "all", "created_at": 1.0}),
        "params.json": _entry("train", {"files": digest}),
        f"{keys[0][:40]}.json": _entry("train", {"files": digest}),
    }
    (remote / "stages").mkdir()
    for name, text in entries.items():
        (remote / "stages" / name).write_text(text)
    _reset_clone(project)
    pulled = _cli(project, "pull", "--remote", str(remote), "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["stage_results"] == {"moved": 2, "present": 0, "invalid": 6, "held_back": 0}
    local = project / ".conveyor" / "stages"
    assert sorted(p.name for p in local.iterdir()) == sorted([f"{keys[0]}.json", f"tests-{keys[1]}.json"])
    assert (local / f"{keys[0]}.json").read_text() == entries[f"{keys[0]}.json"]
    (local / f"{keys[0]}.json").unlink()
    again = _cli(project, "pull", "--remote", str(remote))
    assert again.returncode == 0, again.stderr
    assert ("Stage results: 1 pulled, 1 already there, 6 invalid and skipped (" in again.stdout
            and "…)." in again.stdout)


def test_a_stage_result_goes_up_only_with_its_outputs_and_only_once(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    local = project / ".conveyor" / "stages"
    local.mkdir()
    complete = f"{hash_bytes(b'complete')}.json"
    orphan = f"{hash_bytes(b'orphan')}.json"
    (local / complete).write_text(_entry("prepare", {"files": data.status(project)[0].digest}))
    (local / orphan).write_text(_entry("train", {"model.txt": hash_bytes(b"never stored")}))
    (local / "params.json").write_text(json.dumps({"key": "k", "params": {}}))  # a local cache, not a result
    first = _cli(project, "push", "--remote", str(remote), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stage_results"] == {"moved": 1, "present": 0, "invalid": 0, "held_back": 1}
    assert sorted(p.name for p in (remote / "stages").iterdir()) == [complete]
    again = _cli(project, "push", "--remote", str(remote))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ("Pushed 0 object(s), 0 B; 42 already there. Stage results: 0 pushed, "
                                    "1 already there, 1 held back (their outputs are not on the remote).")
    assert sorted(p.name for p in (remote / "stages").iterdir()) == [complete]


# -- a real S3 API: moto's server on a free loopback port ----------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`moto_server` on a port the OS picks; the URL it listens on. Its log goes to a file: a pipe
    nobody reads would fill up and stall the server."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert server, "moto[server] is in the dev extra"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
            url = found.group(1) if found else None
            time.sleep(0.05)
        assert url, f"moto_server did not start: {log.read_text(errors='replace')[-2000:]}"
        yield url
    finally:
        process.kill()
        process.wait(timeout=60)


def _s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def _make_bucket(endpoint: str, bucket: str) -> None:
    code = f"import s3fs; s3fs.S3FileSystem(skip_instance_cache=True).mkdir({bucket!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **_s3_env(endpoint)}, timeout=120)


@pytest.mark.slow
def test_push_and_pull_through_s3_on_moto(project: Path, moto_endpoint: str) -> None:
    _make_bucket(moto_endpoint, "models")
    env = {**_s3_env(moto_endpoint), "CONVEYOR_REMOTE": "s3://models/team/remote"}
    pushed = _cli(project, "push", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["moved"] == 42
    assert json.loads(_cli(project, "push", "--json", env=env).stdout)["moved"] == 0
    expected = data.status(project)[0].digest
    _reset_clone(project)
    pulled = _cli(project, "pull", "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["moved"] == 42
    assert _cli(project, "data", "checkout").returncode == 0
    assert data.status(project)[0].digest == expected
    assert _cli(project, "verify", "--remote", env=env).returncode == 0


@pytest.mark.slow
def test_a_fresh_clone_runs_from_stage_results_on_s3(iris_a: Path, moto_endpoint: str, tmp_path: Path) -> None:
    _make_bucket(moto_endpoint, "stage-results")
    _clone_runs_from_cache(iris_a, tmp_path / "b", {**_s3_env(moto_endpoint),
                                                    "CONVEYOR_REMOTE": "s3://stage-results/team/iris"})


@pytest.mark.slow
def test_credentials_in_the_url_never_appear_in_errors(project: Path, moto_endpoint: str) -> None:
    env = _s3_env(moto_endpoint)
    url = "s3://AKIAVERYSECRETKEY:wJalrXUtnFEMI%2Fsecret@no-such-bucket/prefix"
    failed = _cli(project, "push", "--remote", url, env=env)
    assert failed.returncode == 1
    output = failed.stdout + failed.stderr
    assert "Error:" in output and "Traceback" not in output
    assert "no-such-bucket" in output  # the error still says where
    for secret in ("AKIAVERYSECRETKEY", "wJalrXUtnFEMI", "secret@"):
        assert secret not in output
