"""A model's input/output signature: inferred once at save time, enforced on every request.

The signature is a plain JSON-serialisable dict, stored in `conveyor-model.json`:

    {"inputs": [{"name": "sepal_length", "dtype": "float64"}, ...],
     "input_type": "ndarray" | "dataframe" | "records",
     "outputs": {"dtype": "int64", "shape": [-1]}}

Request validation runs in plain Python plus one `numpy.array` call (no pandas):
a fast path checks cell types in a tight loop, and only when it finds something
wrong does the slow path walk the payload again to name the exact field.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError, PayloadError

if TYPE_CHECKING:
    import numpy as np

Signature = dict[str, Any]

DTYPES = ("float64", "float32", "int64", "int32", "bool", "string")
"""Column dtypes a signature can hold."""

_INT_RANGE = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38
_SHOWN = 40


# --- inference (save time) -------------------------------------------------


def _dtype_name(dtype: Any, values: Any = None, where: str = "sample") -> str:
    """Map a numpy dtype to a signature dtype, widening the small ones."""
    kind, size = dtype.kind, dtype.itemsize
    if kind == "f":
        return "float64" if size > 4 else "float32"
    if kind == "i":
        return "int64" if size > 4 else "int32"
    if kind == "u":
        if size < 4:
            return "int32"
        if size == 4:
            return "int64"
    if kind == "b":
        return "bool"
    if kind in "US":
        return "string"
    if kind == "O" and values is not None and all(isinstance(v, str) for v in values):
        return "string"
    raise ConveyorError(
        f"{where}: dtype {dtype} is not supported in a model signature "
        f"(supported: {', '.join(DTYPES)}); convert the sample input, e.g. with .astype('float64')"
    )


def _python_dtype(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    raise ConveyorError(
        f"{where}: {type(value).__name__} values are not supported in a sample input; "
        "use numbers, booleans or strings"
    )


def _columns_from_records(records: Sequence[Any]) -> list[dict[str, str]]:
    if not records:
        raise ConveyorError("sample input is an empty list; pass at least one row")
    names: list[str] = []
    kinds: dict[str, set[str]] = {}
    for i, row in enumerate(records):
        if not isinstance(row, Mapping):
            raise ConveyorError(f"sample input row {i} is a {type(row).__name__}; a list sample must hold dicts")
        for key, value in row.items():
            key = str(key)
            if key not in kinds:
                names.append(key)
                kinds[key] = set()
            kinds[key].add(_python_dtype(value, f"sample input row {i}, column '{key}'"))
    columns = []
    for name in names:
        found = kinds[name]
        if len(found) == 1:
            dtype = found.pop()
        elif found == {"int64", "float64"}:
            dtype = "float64"
        else:
            raise ConveyorError(
                f"sample input column '{name}' mixes {', '.join(sorted(found))} values; give it one type"
            )
        columns.append({"name": name, "dtype": dtype})
    return columns


def _input_columns(sample: Any, input_names: Sequence[str] | None) -> tuple[list[dict[str, str]], str]:
    if hasattr(sample, "columns") and hasattr(sample, "dtypes") and hasattr(sample, "to_numpy"):
        names = [str(c) for c in sample.columns]
        if len(sample) == 0:
            raise ConveyorError("sample DataFrame has no rows; pass a few rows of training data")
        if len(set(names)) != len(names):
            raise ConveyorError("sample DataFrame has duplicate column names; rename them")
        dtypes = [
            _dtype_name(dtype, sample[col].to_numpy(), f"sample column '{col}'")
            for col, dtype in zip(sample.columns, sample.dtypes)
        ]
        return [{"name": n, "dtype": d} for n, d in zip(names, dtypes)], "dataframe"
    if isinstance(sample, list) and (not sample or isinstance(sample[0], Mapping)):
        return _columns_from_records(sample), "records"
    import numpy as np

    array = np.asarray(sample)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ConveyorError(
            f"sample input has shape {array.shape}; pass a 2-D array with at least one row, "
            "a DataFrame, or a list of dicts"
        )
    dtype = _dtype_name(array.dtype, array.ravel(), "sample input")
    width = array.shape[1]
    names = list(input_names) if input_names is not None else [f"x{i}" for i in range(width)]
    if len(names) != width:
        raise ConveyorError(f"input_names has {len(names)} names but the sample has {width} columns")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConveyorError("input_names must be distinct non-empty strings")
    return [{"name": n, "dtype": dtype} for n in names], "ndarray"


def infer_signature(
    sample: Any,
    predict: Callable[[np.ndarray, list[str]], Any],
    *,
    input_names: Sequence[str] | None = None,
) -> Signature:
    """The signature of a model given a sample input and its predict function.

    `predict(X, column_names)` is called on the sample, converted exactly as a
    request would be, to record the output's dtype and shape.
    """
    import numpy as np

    columns, input_type = _input_columns(sample, input_names)
    if input_type == "dataframe" and input_names is not None:
        raise ConveyorError("input_names applies to arrays only; a DataFrame sample names its own columns")
    signature: Signature = {"inputs": columns, "input_type": input_type}
    output = np.asarray(predict(to_array(signature, sample), [c["name"] for c in columns]))
    if output.ndim == 0:
        raise ConveyorError("the model's prediction on the sample is a scalar; expected one value per row")
    signature["outputs"] = {
        "dtype": _dtype_name(output.dtype, output.ravel(), "model output"),
        "shape": [-1, *output.shape[1:]],
    }
    return signature


def column_names(signature: Signature) -> list[str]:
    return [column["name"] for column in signature["inputs"]]


def _array_dtype(signature: Signature) -> Any:
    dtypes = {column["dtype"] for column in signature["inputs"]}
    if "string" in dtypes:
        return object
    import numpy as np

    return np.result_type(*dtypes)


def to_array(signature: Signature, data: Any) -> np.ndarray:
    """Convert a DataFrame, array or list of rows to a 2-D array in signature column order."""
    import numpy as np

    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        missing = [n for n in column_names(signature) if n not in data.columns]
        if missing:
            raise PayloadError("columns", f"missing column '{missing[0]}'")
        return np.asarray(data[column_names(signature)].to_numpy(), dtype=_array_dtype(signature))
    if isinstance(data, list):
        return parse_payload(signature, {"rows": data})
    array = np.asarray(data)
    if array.ndim != 2 or array.shape[1] != len(signature["inputs"]):
        raise PayloadError("X", f"expected a 2-D array with {len(signature['inputs'])} columns, got shape {array.shape}")
    return array


def sample_rows(signature: Signature, n: int = 1) -> np.ndarray:
    """A harmless input built from the signature alone (zeros, False, ""), for warm-up."""
    filler = {"float64": 0.0, "float32": 0.0, "int64": 0, "int32": 0, "bool": False, "string": ""}
    row = [filler[c["dtype"]] for c in signature["inputs"]]
    return parse_payload(signature, {"rows": [row] * n})


# --- validation (request time) ---------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= _SHOWN else value[:_SHOWN] + "…"
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, int):
        text = str(int(value))
        return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
    return type(value).__name__


def _kind(value: Any) -> str | None:
    """'bool', 'int', 'float' or 'str' for a JSON value (or a numpy scalar, via the Python API)."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or kind is str:
        return kind.__name__
    if isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return None


def _cell_problem(dtype: str, value: Any) -> str | None:
    """Why `value` cannot fill a `dtype` column, or None if it can."""
    kind = _kind(value)
    if dtype in ("float64", "float32"):
        if kind == "float" or kind == "int":
            try:
                number = float(value)
            except OverflowError:
                return f"{_show(value)} is out of range for {dtype}"
            if not math.isfinite(number):
                return f"expected a finite number, got {_show(value)}"
            if dtype == "float32" and abs(number) > _FLOAT32_MAX:
                return f"{_show(value)} is out of range for float32"
            return None
        suffix = " (a boolean)" if kind == "bool" else ""
        return f"expected a number, got {_show(value)}{suffix}"
    if dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if kind == "float" and float(value).is_integer():
            value, kind = int(value), "int"
        if kind == "int":
            return None if low <= int(value) <= high else f"{_show(value)} is out of range for {dtype}"
        suffix = " (a boolean)" if kind == "bool" else ""
        return f"expected an integer, got {_show(value)}{suffix}"
    if dtype == "bool":
        return None if kind == "bool" else f"expected true or false, got {_show(value)}"
    return None if kind == "str" else f"expected a string, got {_show(value)}"


def _check_row(signature: Signature, row: Any, where: str, order: Sequence[str] | None) -> list[Any]:
    """Values of one row in signature order, or a PayloadError naming the bad field."""
    inputs = signature["inputs"]
    if isinstance(row, Mapping):
        if order is not None:
            raise PayloadError(where, "expected a list of values in the order of 'columns', got an object")
        values = []
        for column in inputs:
            name = column["name"]
            if name not in row:
                raise PayloadError(where, f"missing column '{name}'")
            values.append(row[name])
        if len(row) != len(inputs):
            known = {column["name"] for column in inputs}
            unknown = next(key for key in row if key not in known)
            raise PayloadError(where, f"unknown column '{unknown}'")
        names = [column["name"] for column in inputs]
    elif isinstance(row, list):
        names = list(order) if order is not None else [column["name"] for column in inputs]
        if len(row) != len(names):
            raise PayloadError(where, f"expected {len(names)} values, got {len(row)}")
        if order is not None:
            by_name = dict(zip(order, row))
            values = [by_name[column["name"]] for column in inputs]
            names = [column["name"] for column in inputs]
        else:
            values = row
    else:
        raise PayloadError(where, f"expected an object or a list of values, got {_show(row)}")
    for column, name, value in zip(inputs, names, values):
        problem = _cell_problem(column["dtype"], value)
        if problem:
            raise PayloadError(f"{where}.{name}", problem)
    return list(values)


def _check_columns(signature: Signature, columns: Any) -> list[str]:
    if not isinstance(columns, list):
        raise PayloadError("columns", f"expected a list of column names, got {_show(columns)}")
    known = column_names(signature)
    seen: set[str] = set()
    for i, name in enumerate(columns):
        if not isinstance(name, str):
            raise PayloadError(f"columns[{i}]", f"expected a column name, got {_show(name)}")
        if name in seen:
            raise PayloadError(f"columns[{i}]", f"column '{name}' appears twice")
        if name not in known:
            raise PayloadError(f"columns[{i}]", f"unknown column '{name}'")
        seen.add(name)
    for name in known:
        if name not in seen:
            raise PayloadError("columns", f"missing column '{name}'")
    return columns


def _fast_array(signature: Signature, rows: list[Any]) -> np.ndarray | None:
    """The array for the common all-numeric, list-of-lists case; None to take the slow path."""
    import numpy as np

    dtypes = {column["dtype"] for column in signature["inputs"]}
    if not dtypes <= {"float64", "float32"}:
        return None
    names = column_names(signature)
    width = len(names)
    if type(rows[0]) is dict:
        if any(type(row) is not dict or len(row) != width for row in rows):
            return None
        try:
            rows = [[row[name] for name in names] for row in rows]
        except KeyError:
            return None
    for row in rows:
        if type(row) is not list or len(row) != width:
            return None
        for value in row:
            kind = type(value)
            if kind is not float and kind is not int:
                return None
    try:
        array = np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError):
        return None
    if not np.isfinite(array).all():
        return None
    target = _array_dtype(signature)
    if target != np.float64:
        if (np.abs(array) > _FLOAT32_MAX).any():
            return None
        array = array.astype(target)
    return array


def parse_payload(signature: Signature, payload: Any) -> np.ndarray:
    """Validate a request body against the signature; return a 2-D array in column order.

    Accepts `{"rows": [{col: value}, ...]}`, `{"rows": [[value, ...], ...]}` (values
    in signature order) or `{"columns": [...], "data": [[...], ...]}`. Anything
    else raises `PayloadError` naming the offending field.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(
            "body", f"expected a JSON object with 'rows', or 'columns' and 'data'; got {_show(payload)}"
        )
    order: list[str] | None = None
    if "rows" in payload:
        extra = [key for key in payload if key != "rows"]
        if extra:
            raise PayloadError(str(extra[0]), "unknown key; send either 'rows', or 'columns' and 'data'")
        rows, field = payload["rows"], "rows"
    elif "data" in payload or "columns" in payload:
        extra = [key for key in payload if key not in ("columns", "data")]
        if extra:
            raise PayloadError(str(extra[0]), "unknown key; send either 'rows', or 'columns' and 'data'")
        if "columns" not in payload:
            raise PayloadError("columns", "missing; 'data' needs the list of column names it is in")
        if "data" not in payload:
            raise PayloadError("data", "missing; send the rows as a list of lists")
        order = _check_columns(signature, payload["columns"])
        rows, field = payload["data"], "data"
    else:
        keys = ", ".join(f"'{k}'" for k in list(payload)[:3]) or "no keys"
        raise PayloadError("body", f"expected 'rows', or 'columns' and 'data'; got {keys}")
    if not isinstance(rows, list):
        raise PayloadError(field, f"expected a list of rows, got {_show(rows)}")
    if not rows:
        raise PayloadError(field, "no rows; send at least one")
    fast = _fast_array(signature, rows)
    if fast is not None:
        if order is None:
            return fast
        position = {name: i for i, name in enumerate(order)}
        return fast[:, [position[name] for name in column_names(signature)]]
    import numpy as np

    checked = [_check_row(signature, row, f"{field}[{i}]", order) for i, row in enumerate(rows)]
    return np.array(checked, dtype=_array_dtype(signature))


def check_signature(signature: Any, where: str) -> Signature:
    """A signature read from disk, checked enough that requests can rely on it."""
    ok = (
        isinstance(signature, dict)
        and isinstance(signature.get("inputs"), list)
        and signature["inputs"]
        and all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and c.get("dtype") in DTYPES
            for c in signature["inputs"]
        )
        and isinstance(signature.get("outputs"), dict)
    )
    if not ok:
        raise ConveyorError(f"{where}: the model signature is malformed; save the model again with conveyor.save_model")
    return dict(signature)
