"""Flavors: each saves, loads and predicts through save_model/load_model, and refuses a wrong model clearly."""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import IRIS
from onnx import TensorProto, helper
from onnxruntime import InferenceSession
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from conveyor import flavors
from conveyor.config import ModelConfig
from conveyor.exceptions import ConveyorError
from conveyor.flavors.pyfunc import BadReference, Reference
from conveyor.model import METADATA_FILE, load_model, read_metadata, save_model


def test_every_flavor_is_a_config_choice() -> None:
    choices = typing.get_args(typing.get_type_hints(ModelConfig)["flavor"])
    assert set(choices) == set(flavors.FLAVORS) == {"sklearn", "onnx", "pyfunc"}


def test_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(ConveyorError, match="unknown model flavor 'torch'; supported flavors: onnx, pyfunc, sklearn"):
        flavors.get("torch")


# --- onnx -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_onnx(classifier: LogisticRegression, iris: tuple[np.ndarray, Any]) -> onnx.ModelProto:
    return to_onnx(classifier, iris[0][:1].astype(np.float32), options={"zipmap": False}, target_opset=17)


@pytest.mark.parametrize("form", ["proto", "bytes", "path"])
def test_onnx_round_trip_predicts_like_sklearn(
    tmp_path: Path, form: str, iris_onnx: onnx.ModelProto, classifier: LogisticRegression, iris: Any
) -> None:
    X = iris[0]
    model: Any = iris_onnx
    if form == "bytes":
        model = iris_onnx.SerializeToString()
    elif form == "path":
        model = tmp_path / "exported.onnx"
        model.write_bytes(iris_onnx.SerializeToString())
    saved = save_model(model, tmp_path / "model", X[:5], flavor="onnx", input_names=IRIS)
    assert sorted(p.name for p in saved.iterdir()) == [METADATA_FILE, "model.onnx"]
    assert (saved / "model.onnx").read_bytes() == iris_onnx.SerializeToString()
    meta = read_metadata(saved)
    assert (meta.flavor, meta.artifact) == ("onnx", "model.onnx")
    assert set(meta.environment["packages"]) == {"onnxruntime", "onnx", "numpy", "conveyor"}
    assert meta.signature["outputs"] == {"dtype": "int64", "shape": [-1]}

    loaded = load_model(saved)
    assert isinstance(loaded.model, InferenceSession)
    assert np.array_equal(loaded.predict(X), classifier.predict(X))  # float64 rows, cast to the graph's float32
    assert loaded.predict([dict(zip(IRIS, X[7]))]).tolist() == classifier.predict(X[7:8]).tolist()
    loaded.warm()


def _linear_classifier(weights: np.ndarray, input_type: int = TensorProto.FLOAT, inputs: int = 1) -> onnx.ModelProto:
    """argmax(X @ W) by hand: the smallest useful graph."""
    features, classes = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)],
        "linear",
        [helper.make_tensor_value_info(name, input_type, [None, features]) for name in ["X", "Z"][:inputs]],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
        [helper.make_tensor("W", input_type, weights.shape, weights.ravel().tolist())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("input_type", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_onnx_casts_rows_to_the_input_element_type(tmp_path: Path, input_type: int) -> None:
    weights = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])
    sample = np.array([[3, 1], [1, 3], [-2, -2]], dtype=np.int64)  # an integer signature, fed as float
    saved = save_model(_linear_classifier(weights, input_type), tmp_path / "m", sample, flavor="onnx")
    loaded = load_model(saved)
    assert loaded.signature["inputs"][0]["dtype"] == "int64"
    assert loaded.predict(sample).tolist() == [0, 1, 2]


def test_onnx_refuses_what_is_not_an_onnx_model(tmp_path: Path, classifier: LogisticRegression, iris: Any) -> None:
    X = iris[0][:2]
    with pytest.raises(ConveyorError, match="a LogisticRegression is not an ONNX model; .*skl2onnx"):
        save_model(classifier, tmp_path / "m", X, flavor="onnx")
    with pytest.raises(ConveyorError, match="the ONNX model is not a valid ONNX model"):
        save_model(b"not a protobuf", tmp_path / "m", X, flavor="onnx")
    (tmp_path / "model.pkl").write_bytes(b"x")
    with pytest.raises(ConveyorError, match=r"model\.pkl is not a \.onnx file"):
        save_model(tmp_path / "model.pkl", tmp_path / "m", X, flavor="onnx")
    with pytest.raises(ConveyorError, match=r"cannot read ONNX model .*missing\.onnx"):
        save_model(str(tmp_path / "missing.onnx"), tmp_path / "m", X, flavor="onnx")
    two_inputs = _linear_classifier(np.eye(4), inputs=2)
    with pytest.raises(ConveyorError, match=r"has 2 inputs \(X, Z\); the onnx flavor feeds one 2-D array"):
        save_model(two_inputs, tmp_path / "m", X, flavor="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pkl"]


def test_onnx_load_names_a_corrupt_artifact(tmp_path: Path, iris_onnx: onnx.ModelProto, iris: Any) -> None:
    saved = save_model(iris_onnx, tmp_path / "m", iris[0][:2], flavor="onnx")
    (saved / "model.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ConveyorError, match=r"model\.onnx is not a valid ONNX model"):
        load_model(saved)


# --- pyfunc -----------------------------------------------------------------------------------------

PROJECT_CODE = '''\
import json

import numpy as np


class Threshold:
    """Class 1 when the first column exceeds a threshold read from the artifacts."""

    def __init__(self, threshold):
        self.threshold = threshold

    @classmethod
    def load(cls, path):
        return cls(json.loads((path / "threshold.json").read_text())["threshold"])

    def predict(self, X):
        return (X[:, 0] > self.threshold).astype(np.int64)


class Doubler:
    @staticmethod
    def load(path):
        assert path is None
        return Doubler()

    def predict(self, X):
        return X.sum(axis=1) * 2


class NoPredict:
    @classmethod
    def load(cls, path):
        return cls()


class LoadsSomethingElse:
    @classmethod
    def load(cls, path):
        return "not a model"

    def predict(self, X):
        return X


not_a_class = 42
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project package `pyfunc_project.models` importable from a temp dir, forgotten afterwards."""
    root = tmp_path / "project"
    package = root / "pyfunc_project"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(PROJECT_CODE)
    (package / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "pyfunc_project" or m.startswith("pyfunc_project.")]:
        del sys.modules[name]


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    directory = tmp_path / "weights"
    (directory / "nested").mkdir(parents=True)
    (directory / "threshold.json").write_text(json.dumps({"threshold": 5.0}))
    (directory / "nested" / "note.txt").write_text("copied too")
    return directory


def test_pyfunc_round_trip_with_artifacts(tmp_path: Path, project: Path, artifacts: Path, iris: Any) -> None:
    X = iris[0]
    model = Reference("pyfunc_project.models:Threshold", artifacts=artifacts)
    saved = save_model(model, tmp_path / "model", X[:5], flavor="pyfunc", input_names=IRIS)
    assert sorted(p.name for p in saved.iterdir()) == sorted([METADATA_FILE, "artifacts", "pyfunc.json"])
    assert (saved / "artifacts" / "nested" / "note.txt").read_text() == "copied too"
    assert json.loads((saved / "pyfunc.json").read_text()) == {
        "reference": "pyfunc_project.models:Threshold", "artifacts": "artifacts"}
    assert (read_metadata(saved).flavor, read_metadata(saved).artifact) == ("pyfunc", "pyfunc.json")

    (artifacts / "threshold.json").write_text(json.dumps({"threshold": 100.0}))  # the saved copy is what loads
    loaded = load_model(saved)
    assert type(loaded.model).__name__ == "Threshold" and loaded.model.threshold == 5.0
    assert np.array_equal(loaded.predict(X), (X[:, 0] > 5.0).astype(np.int64))
    assert loaded.signature["outputs"] == {"dtype": "int64", "shape": [-1]}
    loaded.warm()


def test_pyfunc_round_trip_without_artifacts(tmp_path: Path, project: Path) -> None:
    sample = np.array([[1.0, 2.0], [3.0, 4.0]])
    saved = save_model("pyfunc_project.models:Doubler", tmp_path / "m", sample, flavor="pyfunc")
    assert sorted(p.name for p in saved.iterdir()) == [METADATA_FILE, "pyfunc.json"]
    loaded = load_model(saved)
    assert loaded.predict(sample).tolist() == [6.0, 14.0]
    assert loaded.signature["outputs"]["dtype"] == "float64"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (LogisticRegression(), "a LogisticRegression is not a pyfunc model; .*'package.module:ClassName'"),
        ("pyfunc_project.models.Threshold", "not a reference of the form 'package.module:ClassName'"),
        ("pyfunc_project.nowhere:Model", r"module pyfunc_project.nowhere not importable \(ModuleNotFoundError: "
                                         r".*\); install the project .* PYTHONPATH"),
        ("pyfunc_project.broken:Model", r"module pyfunc_project.broken not importable \(RuntimeError: boom at import\)"),
        ("pyfunc_project.models:Missing", "module pyfunc_project.models has no attribute Missing"),
        ("pyfunc_project.models:not_a_class", "not_a_class is a int, not a class"),
        ("pyfunc_project.models:NoPredict", "NoPredict has no predict; add a method predict"),
        ("pyfunc_project.models:LoadsSomethingElse", "LoadsSomethingElse.load returned a str with no predict"),
        (Reference("pyfunc_project.models:Threshold", artifacts="no/such/dir"),
         "artifacts no/such/dir is not a directory"),
    ],
)
def test_pyfunc_refuses_a_bad_reference(tmp_path: Path, project: Path, model: Any, message: str) -> None:
    with pytest.raises(ConveyorError, match=message) as caught:
        save_model(model, tmp_path / "m", np.ones((2, 2)), flavor="pyfunc")
    if isinstance(model, (str, Reference)):
        assert isinstance(caught.value, BadReference)
        assert str(caught.value).startswith(f"pyfunc model '{getattr(model, 'target', model)}': ")
    assert not (tmp_path / "m").exists()


def test_pyfunc_load_names_code_that_is_not_importable_there(
    tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = save_model("pyfunc_project.models:Doubler", tmp_path / "m", np.ones((2, 2)), flavor="pyfunc")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])
    for name in [m for m in sys.modules if m.startswith("pyfunc_project")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(BadReference, match="module pyfunc_project.models not importable .* PYTHONPATH"):
        load_model(saved)


def test_pyfunc_load_refuses_a_tampered_reference_file(tmp_path: Path, project: Path) -> None:
    saved = save_model("pyfunc_project.models:Doubler", tmp_path / "m", np.ones((2, 2)), flavor="pyfunc")
    (saved / "pyfunc.json").write_text(json.dumps({"reference": "pyfunc_project.models:Doubler",
                                                   "artifacts": "../elsewhere"}))
    with pytest.raises(ConveyorError, match=r"artifacts directory '\.\./elsewhere' is missing"):
        load_model(saved)
    (saved / "pyfunc.json").write_text("[]")
    with pytest.raises(ConveyorError, match="is not a pyfunc reference file"):
        load_model(saved)
