"""The ONNX serving form: conversion of a registered scikit-learn version, verification, storage, lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from conveyor import save_model
from conveyor.cli import main
from conveyor.model import load_model, load_verified, read_metadata
from conveyor.packaging import serving_form
from conveyor.registry import ModelVersion, Registry
from conveyor.store import ArtifactStore

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class _Stores:
    def __init__(self, root: Path) -> None:
        self.store = ArtifactStore(root / "cache")
        self.models_dir = root / "models"


@pytest.fixture
def stores(tmp_path: Path) -> _Stores:
    return _Stores(tmp_path)


def _register(registry: Registry, stores: _Stores, tmp_path: Path, model: Any, sample: Any,
              name: str = "iris") -> ModelVersion:
    """Save `model` as a model directory, store it and register it, as the line does."""
    directory = save_model(model, tmp_path / f"saved-{name}", sample_input=sample, input_names=FEATURES)
    digest = stores.store.put(directory)
    metadata = read_metadata(directory)
    version, _created = registry.register(
        name=name, digest=digest, flavor=metadata.flavor, signature=metadata.signature, metrics={}, params={},
        lineage={"environment": metadata.environment}, gates=[], run_id=None)
    return version


def test_iris_converts_verified_stored_and_recorded(sqlite_registry: Registry, stores: _Stores, tmp_path: Path,
                                                    classifier: Any, iris: tuple[Any, Any]) -> None:
    features, _labels = iris
    version = _register(sqlite_registry, stores, tmp_path, classifier, features[::30])
    form, directory, made = serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, version)
    assert made
    assert form.runtime == "onnx" and form.converted_from == version.digest
    assert form.rows_checked == 5 + serving_form.GENERATED_ROWS
    assert 0 <= form.max_abs_difference < 1e-6
    assert form.converter.startswith("skl2onnx ")
    assert stores.store.has(form.digest.removesuffix(".dir"))

    recorded = sqlite_registry.get("iris", version.version).lineage["serving"]
    assert recorded == form.as_dict()
    assert serving_form.recorded(sqlite_registry.get("iris", version.version)) == form

    native, served = load_verified(stores.store, stores.models_dir, version.digest), load_model(directory)
    assert served.metadata.flavor == "onnx"
    assert served.signature == native.signature and served.metadata.sample == native.metadata.sample
    assert "scikit-learn" not in served.metadata.environment["packages"]
    assert served.predict(features).tolist() == native.predict(features).tolist()

    again, _directory, made_again = serving_form.ensure(
        sqlite_registry, stores.store, stores.models_dir, sqlite_registry.get("iris", version.version))
    assert again == form and not made_again  # recorded: only materialized


def test_the_image_runtime_checks_onnx_directories_against_their_serving_digests(
        sqlite_registry: Registry, stores: _Stores, tmp_path: Path, classifier: Any, iris: tuple[Any, Any]) -> None:
    import json
    import shutil

    from sklearn.linear_model import LogisticRegression

    from conveyor.exceptions import IntegrityError, ServingError
    from conveyor.packaging.context import version_record
    from conveyor.packaging.runtime import ImageSource, read_expected_digest

    features, labels = iris
    version = _register(sqlite_registry, stores, tmp_path, classifier, features[::30])
    form, directory, _made = serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, version)
    carried = tmp_path / "serving.json"
    carried.write_text(json.dumps({"runtime": "onnx", "digest": form.digest}))
    assert read_expected_digest(carried) == form.digest and read_expected_digest(tmp_path / "none.json") is None
    swapped = tmp_path / "swapped"
    source = ImageSource(version, directory, swapped, expected_digest=read_expected_digest(carried))
    assert source.load(version).model.metadata.flavor == "onnx"
    with pytest.raises(IntegrityError):  # the version's own digest is the scikit-learn directory's
        ImageSource(version, directory).load(version)

    # A later version swapped into the running image: checked against the form its record names.
    later = _register(sqlite_registry, stores, tmp_path, LogisticRegression(C=0.1, max_iter=1000).fit(features, labels),
                      features[::30])
    later_form, later_dir, _made = serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, later)
    (swapped / later.ref).mkdir(parents=True)
    shutil.copytree(later_dir, swapped / later.ref / "model")
    (swapped / later.ref / "version.json").write_text(version_record(sqlite_registry.get("iris", later.version)))
    assert source.load(source.resolve(later.ref)).version.version == later.version
    (swapped / later.ref / "version.json").write_text(version_record(later))  # recorded before its form was made
    with pytest.raises(ServingError, match="no ONNX form recorded"):
        source.load(source.resolve(later.ref))


def test_checked_rows_reach_beyond_the_sample(classifier: Any, iris: tuple[Any, Any], tmp_path: Path) -> None:
    features, _labels = iris
    metadata = read_metadata(save_model(classifier, tmp_path / "m", sample_input=features[:5], input_names=FEATURES))
    rows = serving_form.check_rows(metadata.sample, metadata.signature)
    assert rows.shape == (5 + serving_form.GENERATED_ROWS, 4)
    assert rows[:5].tolist() == metadata.sample
    assert rows.tolist() == serving_form.check_rows(metadata.sample, metadata.signature).tolist()  # seeded
    assert len(set(classifier.predict(rows).tolist())) > 1  # the first five rows are all one class


def test_string_labels_and_a_regressor_convert(sqlite_registry: Registry, stores: _Stores, tmp_path: Path,
                                               iris: tuple[Any, Any]) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    features, labels = iris
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    for name, model in (("species", LogisticRegression(max_iter=1000).fit(features, names)),
                        ("width", LinearRegression().fit(features[:, :3], features[:, 3]))):
        columns = 4 if name == "species" else 3
        directory = save_model(model, tmp_path / name, sample_input=features[::30, :columns],
                               input_names=FEATURES[:columns])
        metadata = read_metadata(directory)
        version, _ = sqlite_registry.register(
            name=name, digest=stores.store.put(directory), flavor="sklearn", signature=metadata.signature,
            metrics={}, params={}, lineage={}, gates=[], run_id=None)
        _form, served_dir, _made = serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, version)
        served = load_model(served_dir)
        expected = model.predict(features[:, :columns])
        got = served.predict(features[:, :columns])
        assert got.shape == expected.shape  # the regressor's (n, 1) output is served as (n,)
        if name == "species":
            assert got.tolist() == expected.tolist()
        else:
            assert np.allclose(got, expected)


def test_a_wrong_conversion_is_refused_and_nothing_recorded(sqlite_registry: Registry, stores: _Stores,
                                                            tmp_path: Path, classifier: Any, iris: tuple[Any, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx  # type: ignore[import-untyped]

    features, labels = iris
    version = _register(sqlite_registry, stores, tmp_path, classifier, features[::30])
    other = LogisticRegression(max_iter=1000).fit(features, (labels + 1) % 3)  # valid graph, wrong answers
    monkeypatch.setattr(serving_form, "to_onnx",
                        lambda model, X: to_onnx(other, X[:1], options={"zipmap": False}))
    objects_before = set(stores.store.digests())
    with pytest.raises(serving_form.NotConvertible) as raised:
        serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, version)
    message = str(raised.value)
    assert message.startswith("iris@1 cannot be served by onnxruntime: its ONNX form predicts other predictions")
    assert "package.runtime: native" in message
    assert "serving" not in sqlite_registry.get("iris", 1).lineage
    assert set(stores.store.digests()) == objects_before  # the rejected directory was not stored
    assert not [p for p in stores.models_dir.iterdir() if p.name.startswith(".tmp")]


class Unconvertible:
    """An estimator skl2onnx has no converter for."""

    def fit(self, X: Any, y: Any) -> Unconvertible:
        self.first = y[0]
        return self

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.first)


def test_an_estimator_skl2onnx_cannot_convert_is_one_clear_error(
        sqlite_registry: Registry, stores: _Stores, tmp_path: Path, iris: tuple[Any, Any]) -> None:
    features, labels = iris
    version = _register(sqlite_registry, stores, tmp_path, Unconvertible().fit(features, labels), features[:5])
    with pytest.raises(serving_form.NotConvertible, match=r"^iris@1 cannot be served by onnxruntime: skl2onnx "
                                                          r"cannot convert a Unconvertible .*package.runtime: native"):
        serving_form.ensure(sqlite_registry, stores.store, stores.models_dir, version)
    assert "serving" not in sqlite_registry.get("iris", 1).lineage


def test_package_runtime_key_and_flag_are_checked(tmp_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor import config
    from conveyor.exceptions import ConfigError

    path = tmp_repo / "conveyor.yaml"
    original = path.read_text()
    assert config.load(tmp_repo, tmp_repo / ".conveyor").package.runtime == "native"
    path.write_text(original + "package:\n  runtime: onnx\n")
    assert config.load(tmp_repo, tmp_repo / ".conveyor").package.runtime == "onnx"
    path.write_text(original + "package:\n  runtime: tensorflow\n")
    with pytest.raises(ConfigError, match="runtime"):
        config.load(tmp_repo, tmp_repo / ".conveyor")

    monkeypatch.chdir(tmp_repo)
    result = CliRunner().invoke(main, ["package", "iris@1", "--no-build", "--runtime", "tensorflow"])
    assert result.exit_code == 2 and "'native'" in result.output and "'onnx'" in result.output
    assert "Traceback" not in result.output


def test_package_refuses_an_unknown_runtime(sqlite_registry: Registry, stores: _Stores, tmp_path: Path) -> None:
    from conveyor.exceptions import ConveyorError
    from conveyor.packaging.package import package
    from conveyor.project import Project

    with pytest.raises(ConveyorError, match="runtime 'tensorflow' is not one of native, onnx"):
        package(Project(tmp_path), sqlite_registry, stores.store, "iris@1", output=tmp_path / "out",
                cache_dir=tmp_path / "c", runtime="tensorflow", build=False)


def test_package_help_shows_the_onnx_runtime() -> None:
    result = CliRunner().invoke(main, ["package", "--help"])
    assert result.exit_code == 0
    assert "--runtime [native|onnx]" in result.output
    assert "conveyor package iris@production --runtime onnx" in result.output
