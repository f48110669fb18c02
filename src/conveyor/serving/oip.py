"""Open Inference Protocol v2 (KServe, Triton, Seldon) over REST, as pure functions.

An infer request holds either one tensor of shape [n, k] with every column in
signature order, or one tensor per column (shape [n] or [n, 1]) named after the
column. Each becomes `{"rows": ...}` or `{"columns": ..., "data": ...}` for
`parse_payload`, after checking what the protocol adds: shapes against data
length, and each element against its declared datatype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import PayloadError
from conveyor.signature import Signature, column_names, parse_payload

if TYPE_CHECKING:
    import numpy as np

OUTPUT_NAME = "predict"
"""The name of the one output tensor: the model's predictions."""

TENSOR_NAME = "input-0"
"""The name model metadata gives the all-columns input tensor (any name not a column works)."""

_INTS = {f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)}
_UINTS = {f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)}
_FLOATS = ("FP16", "FP32", "FP64")
_FLOAT_MAX = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": math.inf}
DATATYPES = ("BOOL", *_UINTS, *_INTS, *_FLOATS, "BYTES")
"""The tensor datatypes of the protocol."""

_OF_DTYPE = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "int32": "INT32", "bool": "BOOL", "string": "BYTES"}
_ACCEPTS = {
    "float64": {*_FLOATS, *_INTS, *_UINTS},
    "float32": {*_FLOATS, *_INTS, *_UINTS},
    "int64": {*_INTS, *_UINTS},
    "int32": {*_INTS, *_UINTS},
    "bool": {"BOOL"},
    "string": {"BYTES"},
}
_FIELD = re.compile(r"^(rows|data)\[(\d+)\](?:\.(.+))?$")


def datatype(dtype: str) -> str:
    """The protocol datatype of a signature dtype."""
    return _OF_DTYPE[dtype]


def server_metadata(version: str) -> dict[str, Any]:
    """GET /v2."""
    return {"name": "conveyor", "version": version, "extensions": []}


def _tensor(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype(dtype), "shape": shape}


def input_tensors(signature: Signature) -> list[dict[str, Any]]:
    """The inputs model metadata advertises: one [-1, k] tensor, or one [-1, 1] per column when dtypes differ."""
    columns = signature["inputs"]
    if len({datatype(c["dtype"]) for c in columns}) == 1:
        return [_tensor(TENSOR_NAME, columns[0]["dtype"], [-1, len(columns)])]
    return [_tensor(c["name"], c["dtype"], [-1, 1]) for c in columns]


def model_metadata(name: str, version: int, flavor: str, signature: Signature) -> dict[str, Any]:
    """GET /v2/models/{name}[/versions/{v}]."""
    outputs = signature["outputs"]
    return {
        "name": name,
        "versions": [str(version)],
        "platform": f"conveyor-{flavor}",
        "inputs": input_tensors(signature),
        "outputs": [_tensor(OUTPUT_NAME, outputs["dtype"], list(outputs.get("shape", [-1])))],
    }


def _flatten(data: Any) -> list[Any]:
    """Nested lists to one row-major list, without recursion (a body may nest deeply)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _element_problem(kind: str, value: Any) -> str | None:
    """Why `value` is not an element of datatype `kind`, or None."""
    if kind == "BOOL":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "BYTES":
        return None if isinstance(value, str) else "expected a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    if kind in _FLOATS:
        return None if abs(value) <= _FLOAT_MAX[kind] else f"out of range for {kind}"
    if isinstance(value, float) and not value.is_integer():
        return "expected an integer"
    low, high = _INTS.get(kind) or _UINTS[kind]
    return None if low <= value <= high else f"out of range for {kind}"


class _Tensor:
    """One checked input tensor: name, shape, datatype, and its data flattened row-major."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise PayloadError(where, "expected an object with 'name', 'shape', 'datatype' and 'data'")
        for key in ("name", "shape", "datatype", "data"):
            if key not in raw:
                raise PayloadError(where, f"missing '{key}'")
        name = raw["name"]
        if not isinstance(name, str):
            raise PayloadError(f"{where}.name", "expected a string")
        self.name = name
        where = f"input '{name}'"
        shape = raw["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise PayloadError(f"{where}.shape", "expected a list of non-negative integers")
        self.shape: list[int] = shape
        kind = raw["datatype"]
        if kind not in DATATYPES:
            raise PayloadError(f"{where}.datatype", f"unknown datatype {kind!r}; expected one of {', '.join(DATATYPES)}")
        self.datatype: str = kind
        self.data = _flatten(raw["data"])
        expected = math.prod(shape)
        if expected != len(self.data):
            raise PayloadError(
                f"{where}.data", f"shape {shape} holds {expected} elements but data has {len(self.data)}"
            )
        for i, value in enumerate(self.data):
            problem = _element_problem(kind, value)
            if problem:
                raise PayloadError(f"{where}.data[{i}]", f"{problem} for {kind}, got {value!r}")


def _check_fits(tensor: _Tensor, columns: list[dict[str, str]]) -> None:
    for column in columns:
        if tensor.datatype not in _ACCEPTS[column["dtype"]]:
            raise PayloadError(
                f"input '{tensor.name}'.datatype",
                f"{tensor.datatype} does not fit column '{column['name']}' ({column['dtype']}); "
                f"send {datatype(column['dtype'])}",
            )


def _whole(signature: Signature, tensor: _Tensor) -> np.ndarray:
    columns = signature["inputs"]
    width = len(columns)
    shape = tensor.shape
    if not (len(shape) == 2 and shape[1] == width) and not (width == 1 and len(shape) == 1):
        raise PayloadError(f"input '{tensor.name}'.shape", f"expected [n, {width}] (one row per instance), got {shape}")
    _check_fits(tensor, columns)
    rows = [tensor.data[i : i + width] for i in range(0, len(tensor.data), width)]
    names = column_names(signature)
    try:
        return parse_payload(signature, {"rows": rows})
    except PayloadError as exc:
        match = _FIELD.match(exc.field)
        if match is None:
            raise PayloadError(f"input '{tensor.name}'", exc.problem) from None
        row, column = int(match[2]), match[3]
        where = f"input '{tensor.name}' row {row}" + (f" column {names.index(column)} ('{column}')" if column else "")
        raise PayloadError(where, exc.problem) from None


def _by_column(signature: Signature, tensors: list[_Tensor]) -> np.ndarray:
    by_name: dict[str, _Tensor] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise PayloadError(f"input '{tensor.name}'", "appears twice")
        by_name[tensor.name] = tensor
    lengths = set()
    for column in signature["inputs"]:
        found = by_name.get(column["name"])
        if found is None:
            raise PayloadError("inputs", f"missing column '{column['name']}'; send one tensor per column")
        if len(found.shape) not in (1, 2) or found.shape[1:] not in ([], [1]):
            raise PayloadError(f"input '{found.name}'.shape", f"expected [n] or [n, 1], got {found.shape}")
        _check_fits(found, [column])
        lengths.add(found.shape[0])
    if len(lengths) > 1:
        raise PayloadError("inputs", f"the column tensors have different lengths {sorted(lengths)}; send n values in each")
    names = column_names(signature)
    data = [list(row) for row in zip(*(by_name[name].data for name in names))]
    try:
        return parse_payload(signature, {"columns": names, "data": data})
    except PayloadError as exc:
        match = _FIELD.match(exc.field)
        if match is None or match[3] is None:
            raise PayloadError("inputs", exc.problem) from None
        raise PayloadError(f"input '{match[3]}'.data[{match[2]}]", exc.problem) from None


def parse_infer(signature: Signature, payload: Any) -> np.ndarray:
    """Validate an infer request body; return a 2-D array in signature column order.

    Raises `PayloadError` naming the input tensor and what is wrong with it.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("body", "expected a JSON object with 'inputs'")
    if "id" in payload and not isinstance(payload["id"], str):
        raise PayloadError("id", "expected a string")
    outputs = payload.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise PayloadError("outputs", "expected a list of {\"name\": ...}")
        for i, output in enumerate(outputs):
            name = output.get("name") if isinstance(output, Mapping) else None
            if name != OUTPUT_NAME:
                raise PayloadError(f"outputs[{i}]", f"unknown output {name!r}; the model has one output, '{OUTPUT_NAME}'")
    raw = payload.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise PayloadError("inputs", "expected a non-empty list of input tensors")
    tensors = [_Tensor(item, f"inputs[{i}]") for i, item in enumerate(raw)]
    names = set(column_names(signature))
    if all(tensor.name in names for tensor in tensors):
        return _by_column(signature, tensors)
    if len(tensors) == 1:
        return _whole(signature, tensors[0])
    unknown = next(tensor.name for tensor in tensors if tensor.name not in names)
    raise PayloadError(
        f"input '{unknown}'",
        f"unknown input name; send one tensor of shape [n, {len(names)}], "
        f"or one tensor per column named {', '.join(column_names(signature))}",
    )


def infer_response(name: str, version: int, request_id: Any, output: np.ndarray, dtype: str) -> dict[str, Any]:
    """The infer response body for the model's `output` (signature output dtype `dtype`)."""
    body: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if isinstance(request_id, str):
        body["id"] = request_id
    body["outputs"] = [{
        "name": OUTPUT_NAME,
        "shape": list(output.shape),
        "datatype": _OF_DTYPE.get(dtype, "BYTES"),
        "data": output.ravel().tolist(),
    }]
    return body
