"""The ONNX flavor: a graph saved as `model.onnx`, run by onnxruntime on the CPU.

The model handed to `save_model` is an `onnx.ModelProto`, the bytes of a
`.onnx` file, or its path (e.g. a scikit-learn model converted with skl2onnx:
`to_onnx(model, X[:1].astype("float32"), options={"zipmap": False})`).
The graph must take one 2-D input; predict feeds it the request rows, cast to
the input's element type, and returns the first output. Loading an ONNX file
runs no Python code, and serving needs onnxruntime only, not `onnx`.
A model whose weights live in external data files is not supported: only
the `.onnx` file itself is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    import numpy as np

ARTIFACT = "model.onnx"
PACKAGES = ("onnxruntime", "onnx", "numpy")
SERVING_PACKAGES = ("onnxruntime", "numpy")
"""What predicting needs: onnxruntime reads the graph itself, the `onnx` package is for building one."""
PROVIDERS = ["CPUExecutionProvider"]

_ELEMENT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}
"""onnxruntime input type -> numpy dtype the request array is cast to."""

_WANTED = (
    "the onnx flavor takes an onnx.ModelProto, the bytes of a .onnx file or its path "
    "(convert a scikit-learn model with skl2onnx.to_onnx)"
)


def _serialized(model: Any) -> bytes:
    """The ONNX bytes of a model given as a ModelProto, bytes or a path."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, Path)):
        file = Path(model)
        if file.suffix != ".onnx":
            raise ConveyorError(f"{file} is not a .onnx file; {_WANTED}")
        try:
            return file.read_bytes()
        except OSError as exc:
            raise ConveyorError(f"cannot read ONNX model {file}: {exc.strerror or exc}") from None
    serialize = getattr(model, "SerializeToString", None)  # a ModelProto, without importing onnx
    if type(model).__name__ == "ModelProto" and callable(serialize):
        data = serialize()
        if isinstance(data, bytes):
            return data
    raise ConveyorError(f"a {type(model).__name__} is not an ONNX model; {_WANTED}")


def _session(data: bytes, where: str) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    try:
        session = ort.InferenceSession(data, providers=PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own pybind classes, not a common base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConveyorError(f"{where} is not a valid ONNX model ({first}); export it again") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ConveyorError(
            f"{where} has {len(inputs)} inputs ({names}); the onnx flavor feeds one 2-D array "
            "to a single input, so export the model with one input holding all columns"
        )
    if inputs[0].type not in _ELEMENT_TYPES:
        raise ConveyorError(
            f"{where}: input '{inputs[0].name}' has type {inputs[0].type}; the onnx flavor feeds "
            f"tensors of {', '.join(_ELEMENT_TYPES)}"
        )
    return session


def check(model: Any) -> None:
    """Refuse what is not a runnable single-input ONNX model before anything is written."""
    where = str(model) if isinstance(model, (str, Path)) else "the ONNX model"
    _session(_serialized(model), where)


def save(model: Any, directory: Path) -> str:
    """Write the ONNX bytes into `directory`; return the artifact's file name."""
    (directory / ARTIFACT).write_bytes(_serialized(model))
    return ARTIFACT


def load(path: Path) -> Any:
    """An onnxruntime `InferenceSession` on the CPU for the `.onnx` file at `path`."""
    return _session(path.read_bytes(), str(path))


def predict(model: Any, X: np.ndarray, columns: list[str]) -> np.ndarray:
    """The first output for `X` fed to the first input, one prediction per row.

    `model` is a loaded session, or (while `save_model` infers the signature)
    anything `check` accepts.
    """
    session = model if hasattr(model, "get_inputs") else _session(_serialized(model), "the ONNX model")
    return run(session, X, session.get_outputs()[0].name)


def run(session: Any, X: np.ndarray, output: str) -> np.ndarray:
    """The output called `output` of a loaded session for `X` fed to its input, cast to the input's type."""
    import numpy as np

    first = session.get_inputs()[0]
    feed = np.ascontiguousarray(X, dtype=_ELEMENT_TYPES[first.type])
    return np.asarray(session.run([output], {first.name: feed})[0])
