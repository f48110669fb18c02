"""MLflow's scoring protocol (`POST /invocations`), translated to the signature's own payload forms.

Each MLflow input form becomes `{"rows": ...}` or `{"columns": ..., "data": ...}`
for `parse_payload`, so validation stays in one place; a `PayloadError` it
raises is renamed to the field the client actually sent
(`rows[2].petal_width` -> `dataframe_split.data[2][3]`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import PayloadError
from conveyor.signature import Signature, column_names, parse_payload

if TYPE_CHECKING:
    import numpy as np

FORMS = ("dataframe_split", "dataframe_records", "instances", "inputs")
"""The JSON keys MLflow accepts; a request holds exactly one of them (plus optional `params`)."""

_ERROR_CODES = {400: "BAD_REQUEST", 413: "BAD_REQUEST", 415: "BAD_REQUEST", 422: "BAD_REQUEST",
                503: "TEMPORARILY_UNAVAILABLE"}
_FIELD = re.compile(r"^(rows|data)(?:\[(\d+)\](?:\.(.+))?)?$")


def error_body(status: int, message: str) -> dict[str, str]:
    """An error in MLflow's shape: `{"error_code": ..., "message": ...}`."""
    return {"error_code": _ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": message}


def response_body(predictions: Any) -> dict[str, Any]:
    """The body MLflow returns for a prediction."""
    return {"predictions": predictions}


def _renamed(exc: PayloadError, rename: Callable[[int | None, str | None], str], prefix: str) -> PayloadError:
    """`exc` with a field from `parse_payload` (`rows[i].col`, `data[i]`, `columns[j]`) named as the client sent it."""
    match = _FIELD.match(exc.field)
    if match is None:  # columns, columns[j], body
        return PayloadError(f"{prefix}.{exc.field}", exc.problem)
    row = int(match[2]) if match[2] is not None else None
    return PayloadError(rename(row, match[3]), exc.problem)


def _parse(signature: Signature, payload: dict[str, Any], rename: Callable[[int | None, str | None], str],
           prefix: str) -> np.ndarray:
    try:
        return parse_payload(signature, payload)
    except PayloadError as exc:
        raise _renamed(exc, rename, prefix) from None


def _positional(form: str, rows: list[Any], order: list[str]) -> Callable[[int | None, str | None], str]:
    """Names `form[i][j]` for list rows (j from `order`), `form[i].col` for object rows."""
    position = {name: j for j, name in enumerate(order)}

    def rename(row: int | None, column: str | None) -> str:
        if row is None:
            return form
        if column is None:
            return f"{form}[{row}]"
        if isinstance(rows[row], list) and column in position:
            return f"{form}[{row}][{position[column]}]"
        return f"{form}[{row}].{column}"

    return rename


def _rows(signature: Signature, rows: Any, form: str) -> np.ndarray:
    if not isinstance(rows, list):
        raise PayloadError(form, "expected a list of rows")
    return _parse(signature, {"rows": rows}, _positional(form, rows, column_names(signature)), form)


def _split(signature: Signature, split: Any) -> np.ndarray:
    form = "dataframe_split"
    if not isinstance(split, Mapping):
        raise PayloadError(form, 'expected an object {"columns": [...], "data": [[...], ...]}')
    extra = [key for key in split if key not in ("columns", "data", "index")]
    if extra:
        raise PayloadError(f"{form}.{extra[0]}", "unknown key; expected 'columns', 'data' and optional 'index'")
    if "data" not in split:
        raise PayloadError(f"{form}.data", "missing; send the rows as a list of lists")
    data = split["data"]
    if not isinstance(data, list):
        raise PayloadError(f"{form}.data", "expected a list of rows")
    if "index" in split and (not isinstance(split["index"], list) or len(split["index"]) != len(data)):
        raise PayloadError(f"{form}.index", f"expected a list of {len(data)} labels, one per row of 'data'")
    if "columns" not in split:  # MLflow allows positional data; it is in signature order
        return _parse(signature, {"rows": data}, _positional(f"{form}.data", data, column_names(signature)), form)
    columns = split["columns"]
    order = columns if isinstance(columns, list) and all(isinstance(c, str) for c in columns) else []
    rename = _positional(f"{form}.data", data, order)
    return _parse(signature, {"columns": columns, "data": data}, rename, form)


def _records(signature: Signature, records: Any) -> np.ndarray:
    form = "dataframe_records"
    if not isinstance(records, list):
        raise PayloadError(form, "expected a list of objects {column: value}")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise PayloadError(f"{form}[{i}]", "expected an object {column: value}")
    return _rows(signature, records, form)


def _columnar(signature: Signature, columns: Mapping[str, Any], form: str) -> np.ndarray:
    """`{column: [values]}` as `columns` + `data`, every list the same length."""
    lengths = set()
    for name, values in columns.items():
        if not isinstance(values, list):
            raise PayloadError(f"{form}.{name}", "expected a list of values, one per row")
        lengths.add(len(values))
    if len(lengths) > 1:
        shown = ", ".join(f"{name}: {len(values)}" for name, values in columns.items())
        raise PayloadError(form, f"the column lists differ in length ({shown}); give each one value per row")
    names = list(columns)
    data = [list(row) for row in zip(*columns.values())]

    def rename(row: int | None, column: str | None) -> str:
        if row is None:
            return form
        return f"{form}.{column}[{row}]" if column is not None else f"{form}[{row}]"

    return _parse(signature, {"columns": names, "data": data}, rename, form)


def parse_json(signature: Signature, payload: Any) -> np.ndarray:
    """Validate an MLflow JSON request body; return a 2-D array in signature column order.

    Raises `PayloadError` whose field is the one the client sent, e.g.
    `dataframe_split.data[2][1]` or `inputs.petal_width[0]`.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("body", f"expected a JSON object with one of {', '.join(FORMS)}")
    present = [key for key in FORMS if key in payload]
    unknown = [key for key in payload if key not in FORMS and key != "params"]
    if unknown:
        raise PayloadError(str(unknown[0]), f"unknown key; send exactly one of {', '.join(FORMS)}")
    if len(present) != 1:
        found = f"got {' and '.join(present)}" if present else "got none"
        raise PayloadError("body", f"expected exactly one of {', '.join(FORMS)}; {found}")
    if payload.get("params") not in (None, {}):
        raise PayloadError("params", "this model takes no inference parameters; leave 'params' out")
    form = present[0]
    value = payload[form]
    if form == "dataframe_split":
        return _split(signature, value)
    if form == "dataframe_records":
        return _records(signature, value)
    if isinstance(value, Mapping):
        if form == "instances":
            raise PayloadError(form, "expected a list of rows (lists or objects); send columns under 'inputs'")
        return _columnar(signature, value, form)
    return _rows(signature, value, form)


def _csv_cell(dtype: str, text: str) -> Any:
    """The typed value of a CSV cell, or the text itself so `parse_payload` says what is wrong with it."""
    if dtype in ("float64", "float32"):
        try:
            return float(text)
        except ValueError:
            return text
    if dtype in ("int64", "int32"):
        try:
            return int(text)
        except ValueError:
            return text
    if dtype == "bool":
        return {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower(), text)
    return text


def parse_csv(signature: Signature, body: bytes) -> np.ndarray:
    """Validate a `text/csv` body (header row = column names); return a 2-D array in signature order.

    A bad cell is named by its data row (1 = the line after the header) and column, e.g. `csv row 2.petal_width`.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError("body", f"the CSV is not UTF-8 (byte {exc.start})") from None
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise PayloadError("body", f"the CSV cannot be read: {exc}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise PayloadError("body", "the CSV is empty; send a header row of column names, then one line per row")
    header, records = lines[0], lines[1:]
    dtypes = {column["name"]: column["dtype"] for column in signature["inputs"]}
    data = [[_csv_cell(dtypes.get(name, "string"), cell) for name, cell in zip(header, line)] + line[len(header):]
            for line in records]

    def rename(row: int | None, column: str | None) -> str:
        if row is None:
            return "csv"
        where = f"csv row {row + 1}"
        return f"{where}.{column}" if column is not None else where

    try:
        return parse_payload(signature, {"columns": header, "data": data})
    except PayloadError as exc:
        renamed = _renamed(exc, rename, "csv header")
        if renamed.field.startswith("csv header.columns"):
            renamed = PayloadError("csv header" + renamed.field.removeprefix("csv header.columns"), exc.problem)
        raise renamed from None
