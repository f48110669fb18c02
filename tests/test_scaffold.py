"""`conveyor init`: the iris example is a committed, valid, working project; guesses are sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conveyor import config
from conveyor.exceptions import ConveyorError
from conveyor.scaffold import InitResult, init_project

EXPECTED_FILES = {
    ".gitignore", "README.md", "conveyor.yaml", "params.yaml", "requirements.txt",
    "data/iris.csv", "src/prepare.py", "src/train.py", "tests/test_model.py",
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def run_python(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a script of the example with this interpreter, as a stage would."""
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True,
                          check=False, timeout=300)


def train(root: Path) -> dict[str, float]:
    for script in ("src/prepare.py", "src/train.py"):
        done = run_python(root, script)
        assert done.returncode == 0, done.stdout + done.stderr
    metrics: dict[str, float] = json.loads((root / "metrics.json").read_text())
    return metrics


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> InitResult:
    return init_project(tmp_path_factory.mktemp("examples") / "iris", "iris")


@pytest.fixture(scope="module")
def trained(iris: InitResult) -> dict[str, float]:
    """The example's stages run once, by hand, in its directory."""
    return train(iris.root)


# -- the iris example -------------------------------------------------------


def test_example_writes_its_files(iris: InitResult) -> None:
    assert {p.as_posix() for p in iris.files} == EXPECTED_FILES
    assert all((iris.root / p).is_file() for p in iris.files)
    rows = (iris.root / "data/iris.csv").read_text().splitlines()
    assert rows[0] == "sepal_length,sepal_width,petal_length,petal_width,species"
    assert rows[1] == "5.1,3.5,1.4,0.2,0"
    assert len(rows) == 151
    assert {row.rsplit(",", 1)[1] for row in rows[1:]} == {"0", "1", "2"}


def test_example_is_a_repository_with_one_clean_commit(iris: InitResult) -> None:
    assert iris.commit is not None
    assert git(iris.root, "rev-parse", "--show-toplevel") == str(iris.root)
    assert git(iris.root, "rev-list", "HEAD") == iris.commit
    assert git(iris.root, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(iris.root, "log", "-1", "--format=%s") == "Start iris project (conveyor init --example iris)"
    assert git(iris.root, "status", "--porcelain", "--untracked-files=all") == ""
    assert set(git(iris.root, "ls-files").splitlines()) == EXPECTED_FILES


def test_example_config_is_valid(iris: InitResult) -> None:
    loaded = config.load(iris.root)
    assert list(loaded.stages) == ["prepare", "train"]
    assert config.stage_dependencies(loaded) == {"prepare": set(), "train": {"prepare"}}
    assert loaded.tests is not None and loaded.tests.cmd == "pytest -q tests"
    assert (loaded.model.name, loaded.model.path, loaded.model.flavor) == ("iris", "model/", "sklearn")
    assert [(g.metric, g.min, g.no_worse_than, g.tolerance) for g in loaded.gates] == [
        ("accuracy", 0.9, None, 0.0), ("accuracy", None, "production", 0.02),
    ]
    assert (loaded.deploy.target, loaded.deploy.port, loaded.triggers.branch) == ("local", 8000, "main")


def test_example_params_match_what_the_stages_declare(iris: InitResult) -> None:
    params = yaml.safe_load((iris.root / "params.yaml").read_text())
    assert params == {"prepare": {"test_size": 0.3, "seed": 42}, "train": {"C": 1.0, "max_iter": 200}}
    declared = [key for stage in config.load(iris.root).stages.values() for key in stage.params]
    for key in declared:
        section, name = key.split(".")
        assert name in params[section], key


def test_example_trains_an_accurate_model_and_leaves_the_tree_clean(
    iris: InitResult, trained: dict[str, float]
) -> None:
    assert trained["accuracy"] >= 0.9
    assert 0.9 <= trained["f1_macro"] <= 1.0
    saved = json.loads((iris.root / "model" / "conveyor-model.json").read_text())
    assert [column["name"] for column in saved["signature"]["inputs"]] == [
        "sepal_length", "sepal_width", "petal_length", "petal_width",
    ]
    assert (iris.root / "data/prepared/train.csv").is_file()
    assert git(iris.root, "status", "--porcelain", "--untracked-files=all") == ""


def test_example_split_is_deterministic(iris: InitResult, trained: dict[str, float]) -> None:
    before = (iris.root / "data/prepared/test.csv").read_bytes()
    done = run_python(iris.root, "src/prepare.py")
    assert done.returncode == 0, done.stderr
    assert (iris.root / "data/prepared/test.csv").read_bytes() == before
    assert len(before.decode().splitlines()) == 1 + 45  # 30% of each class of 50


def test_example_tests_pass_against_the_trained_model(iris: InitResult, trained: dict[str, float]) -> None:
    done = run_python(iris.root, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


def test_tiny_C_fails_the_accuracy_gate_but_not_the_tests(tmp_path: Path) -> None:
    # The end-to-end test breaks the gate with this change; the tests must still pass,
    # so that it is the gate, not the test step, that stops the line.
    root = init_project(tmp_path / "iris", "iris").root
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("C: 1.0", "C: 0.0001"))
    assert train(root)["accuracy"] < 0.9
    done = run_python(root, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert done.returncode == 0, done.stdout + done.stderr


def test_example_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConveyorError, match="not empty"):
        init_project(tmp_path, "iris")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_example_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    result = init_project(tmp_path, "iris")
    assert result.root == tmp_path.resolve()
    assert result.commit is not None


def test_unknown_example_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConveyorError, match="unknown example 'mnist'.*iris"):
        init_project(tmp_path / "x", "mnist")
    assert not (tmp_path / "x").exists()


def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with no git config, and none of the identity variables conftest sets."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                 "EMAIL", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_example_commits_without_a_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = fresh_home(tmp_path, monkeypatch)

    result = init_project(tmp_path / "iris", "iris")

    assert result.commit is not None
    assert git(result.root, "log", "-1", "--format=%an <%ae>") == "Conveyor <conveyor@localhost>"
    assert any("user.email" in note for note in result.notes)
    assert any("user.name" in note for note in result.notes)
    # The identity was used for that commit only, not written anywhere.
    assert list(home.iterdir()) == []
    assert subprocess.run(["git", "config", "user.email"], cwd=result.root, check=False).returncode != 0


def test_example_with_a_git_identity_adds_no_identity_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = fresh_home(tmp_path, monkeypatch)
    (home / ".gitconfig").write_text("[user]\n\tname = Ada\n\temail = ada@example.org\n")

    result = init_project(tmp_path / "iris", "iris")

    assert git(result.root, "log", "-1", "--format=%ae") == "ada@example.org"
    assert not any("user." in note for note in result.notes)


def test_example_without_git_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConveyorError, match="git is not installed"):
        init_project(tmp_path / "iris", "iris")
    assert not (tmp_path / "iris").exists()


# -- guessing a conveyor.yaml for an existing project -----------------------


def test_guess_for_a_project_with_train_py_and_data(tmp_path: Path) -> None:
    root = tmp_path / "churn-model"
    (root / "data").mkdir(parents=True)
    (root / "data" / "rows.csv").write_text("a,b\n1,2\n")
    (root / "train.py").write_text("print('training')\n")
    (root / "params.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\nother: 1\n")
    (root / "tests").mkdir()

    result = init_project(root, None)

    assert result.files == [Path("conveyor.yaml"), Path(".gitignore")]
    assert (root / ".gitignore").read_text().splitlines()[-3:] == ["/.conveyor/", "/model/", "/metrics.json"]
    assert result.commit is None
    assert result.notes
    loaded, _ = config.parse((root / "conveyor.yaml").read_text())
    assert loaded.project == "churn-model"
    train_stage = loaded.stages["train"]
    assert train_stage.cmd == "python train.py"
    assert train_stage.deps == ["train.py", "data/"]
    assert train_stage.params == ["train.lr", "train.epochs"]
    assert (train_stage.outs, train_stage.metrics) == (["model/"], ["metrics.json"])
    assert loaded.tests is not None and loaded.tests.cmd == "pytest -q tests"
    assert (loaded.model.name, loaded.model.path) == ("churn-model", "model/")
    assert loaded.gates == []
    assert "# gates:" in (root / "conveyor.yaml").read_text()
    # The guess is consistent with the files on disk (deps exist, model.path is an out).
    config.load(root)


def test_guess_finds_src_train_py_and_skips_missing_parts(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("")

    result = init_project(root, None)

    loaded = config.load(root)
    assert loaded.stages["train"].cmd == "python src/train.py"
    assert loaded.stages["train"].deps == ["src/train.py"]
    assert loaded.stages["train"].params == []
    assert loaded.tests is None
    assert any("tests/" in note for note in result.notes)


def test_guess_without_a_training_script_says_what_to_edit(tmp_path: Path) -> None:
    result = init_project(tmp_path, None)
    loaded, _ = config.parse((tmp_path / "conveyor.yaml").read_text())
    assert loaded.stages["train"].cmd == "python train.py"
    assert any("no training script" in note for note in result.notes)


def test_guess_refuses_to_overwrite_conveyor_yaml(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / "conveyor.yaml").write_text("project: mine\n")
    with pytest.raises(ConveyorError, match="already exists"):
        init_project(tmp_path, None)
    assert (tmp_path / "conveyor.yaml").read_text() == "project: mine\n"


def test_guess_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConveyorError, match="not a directory"):
        init_project(tmp_path / "missing", None)


def test_guess_uses_the_checked_out_branch_and_keeps_the_gitignore(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    root.mkdir()
    (root / "train.py").write_text("")
    (root / ".gitignore").write_text("*.pyc\n/model/\n")
    subprocess.run(["git", "init", "-q", "-b", "master"], cwd=root, check=True)

    init_project(root, None)

    loaded, _ = config.parse((root / "conveyor.yaml").read_text())
    assert loaded.triggers.branch == "master"
    assert (root / ".gitignore").read_text() == "*.pyc\n/model/\n# written by `conveyor init`\n/.conveyor/\n/metrics.json\n"
