"""DVC interoperability: dvc.yaml import, .dvc pointers in status, `dvc pull` for missing data, dvc.lock lineage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import commit_all, git

from conveyor import data, dvc
from conveyor.config import parse
from conveyor.exceptions import ConveyorError
from conveyor.scaffold import init_project

DVC_YAML = """\
stages:
  prepare:
    cmd: python src/prepare.py
    deps:
      - src/prepare.py
      - data/iris.csv
    params:
      - prepare.test_size
      - prepare.seed
    outs:
      - data/prepared/
  train:
    cmd:
      - python src/train.py
    deps: [src/train.py, data/prepared/]
    params:
      - params.yaml:
          - train.C
          - train.max_iter
    outs:
      - model/:
          persist: false
    metrics:
      - metrics.json:
          cache: false
  report:
    wdir: reports
    cmd: python make.py
    deps: [make.py, ../metrics.json]
    params: [plot.width]
    plots:
      - curve.csv
"""


def test_a_dvc_stage_becomes_a_conveyor_stage() -> None:
    stages = dvc.convert_stage("report", yaml.safe_load(DVC_YAML)["stages"]["report"])
    assert stages == {"cmd": "cd reports && python make.py", "deps": ["reports/make.py", "metrics.json",
                                                                   "reports/params.yaml"],
                      "outs": ["reports/curve.csv"]}
    train = dvc.convert_stage("train", yaml.safe_load(DVC_YAML)["stages"]["train"])
    assert train == {"cmd": "python src/train.py", "deps": ["src/train.py", "data/prepared"],
                     "params": ["train.C", "train.max_iter"], "outs": ["model"], "metrics": ["metrics.json"]}


@pytest.mark.parametrize("templated", ["foreach: [a, b]\n    do:\n      cmd: echo ${item}",
                                       "matrix:\n      x: [1, 2]\n    cmd: echo"])
def test_foreach_and_matrix_are_refused_with_a_clear_message(tmp_path: Path, templated: str) -> None:
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  many:\n    {templated}\n")
    with pytest.raises(ConveyorError, match="not supported|templating"):
        dvc.convert(tmp_path)
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  many:\n    {templated.replace('${item}', 'x')}\n")
    with pytest.raises(ConveyorError, match="'(foreach|matrix)' stages are not supported"):
        dvc.convert(tmp_path)


def _dvc_project(tmp_path: Path) -> Path:
    """The iris example with its stages moved into a dvc.yaml (and a dvc.lock), conveyor.yaml without them."""
    root = tmp_path / "iris"
    init_project(root, "iris")
    (root / "dvc.yaml").write_text(DVC_YAML.split("  report:")[0])  # prepare and train
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: python src/train.py\n    deps:\n"
        "    - path: src/train.py\n      md5: 0123456789abcdef0123456789abcdef\n      size: 10\n"
        "    outs:\n    - path: model\n      md5: fedcba9876543210fedcba9876543210.dir\n")
    config = yaml.safe_load((root / "conveyor.yaml").read_text())
    del config["stages"]
    (root / "conveyor.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def _conveyor(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=root, capture_output=True, text=True,
                          check=False, timeout=600)


def test_import_fills_conveyor_yaml_with_the_dvc_stages(tmp_path: Path) -> None:
    root = _dvc_project(tmp_path)
    done = _conveyor(root, "import", "dvc")
    assert done.returncode == 0, done.stderr
    config, _ = parse((root / "conveyor.yaml").read_text())
    assert list(config.stages) == ["prepare", "train"]
    assert config.stages["train"].outs == ["model"] and config.stages["train"].metrics == ["metrics.json"]
    assert config.model.path == "model/" and config.gates  # the rest of the file is kept


@pytest.mark.slow
def test_an_imported_dvc_pipeline_runs_and_its_version_records_the_dvc_lock(tmp_path: Path) -> None:
    root = _dvc_project(tmp_path)
    assert _conveyor(root, "import", "dvc").returncode == 0
    commit_all(root, "run the DVC pipeline under conveyor")
    ran = _conveyor(root, "run", "--no-deploy", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = _conveyor(root, "models", "show", "iris@1", "--json")
    assert shown.returncode == 0, shown.stderr
    lineage = json.loads(shown.stdout)["lineage"]
    assert lineage["dvc_lock"]["train"] == {"src/train.py": "0123456789abcdef0123456789abcdef",
                                            "model": "fedcba9876543210fedcba9876543210.dir"}


def test_dvc_pointers_show_in_data_status(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "raw.csv").write_text("a,b\n")
    (root / "raw.csv.dvc").write_text("outs:\n- md5: 0d7c9a6a4a3e2b0b47b5bba8f4b1c0f5\n  size: 4\n  path: raw.csv\n")
    import hashlib

    real_md5 = hashlib.md5(b"a,b\n").hexdigest()
    (root / "good.csv").write_text("a,b\n")
    (root / "good.csv.dvc").write_text(f"outs:\n- md5: {real_md5}\n  size: 4\n  path: good.csv\n")
    (root / "gone.dvc").write_text("outs:\n- md5: 1234.dir\n  path: gone\n")
    states = {s.path: (s.state, s.kind) for s in data.status(root)}
    assert states == {"raw.csv": ("modified", "dvc"), "good.csv": ("unchanged", "dvc"), "gone": ("missing", "dvc")}


def test_missing_dvc_data_is_fetched_with_dvc_pull_with_stand_in_dvc(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC is not installed in CI: a stand-in `dvc` script on PATH records its arguments and restores the file."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "features.csv.dvc").write_text("outs:\n- md5: abc\n  path: features.csv\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "dvc"
    stand_in.write_text(f"#!{sys.executable}\nimport pathlib, sys\n"
                        "pathlib.Path('dvc-args.txt').write_text(' '.join(sys.argv[1:]))\n"
                        "pathlib.Path('features.csv').write_text('x\\n1\\n')\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert data.dep_digest(root, None, "features.csv") is None  # not Conveyor's: hashed as a plain dep
    assert (root / "dvc-args.txt").read_text() == "pull features.csv.dvc"
    assert (root / "features.csv").read_text() == "x\n1\n"


def test_missing_dvc_data_without_dvc_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "features.csv.dvc").write_text("outs:\n- md5: abc\n  path: features.csv\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConveyorError, match=r"install DVC and run `dvc pull features.csv.dvc`"):
        data.dep_digest(tmp_path, None, "features.csv")
