"""Signature inference at save time and payload validation at request time."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from conftest import IRIS
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.exceptions import ConveyorError, PayloadError
from conveyor.signature import (
    check_signature,
    infer_signature,
    parse_payload,
    sample_rows,
    to_array,
)


def _first_column(X: np.ndarray, columns: list[str]) -> np.ndarray:
    return np.asarray(X)[:, 0]


@pytest.fixture
def sig() -> dict[str, Any]:
    return infer_signature(np.ones((3, 4)), _first_column, input_names=IRIS)


@pytest.fixture
def mixed() -> dict[str, Any]:
    rows = [{"age": 31, "height": 1.8, "member": True, "city": "Oslo"}]
    return infer_signature(rows, lambda X, columns: np.array(["yes"] * len(X)))


# --- inference --------------------------------------------------------------


def test_array_signature_names_columns_and_output(sig: dict[str, Any]) -> None:
    assert sig == {
        "inputs": [{"name": n, "dtype": "float64"} for n in IRIS],
        "input_type": "ndarray",
        "outputs": {"dtype": "float64", "shape": [-1]},
    }
    assert json.loads(json.dumps(sig)) == sig


def test_array_without_names_gets_positional_names() -> None:
    sig = infer_signature(np.ones((2, 3), dtype=np.int32), lambda X, c: np.zeros((len(X), 2), np.float32))
    assert [c["name"] for c in sig["inputs"]] == ["x0", "x1", "x2"]
    assert {c["dtype"] for c in sig["inputs"]} == {"int32"}
    assert sig["outputs"] == {"dtype": "float32", "shape": [-1, 2]}


def test_small_dtypes_widen() -> None:
    sig = infer_signature(np.ones((2, 2), dtype=np.uint8), _first_column)
    assert sig["inputs"][0]["dtype"] == "int32"


def test_records_signature_keeps_each_column_type(mixed: dict[str, Any]) -> None:
    assert mixed["inputs"] == [
        {"name": "age", "dtype": "int64"},
        {"name": "height", "dtype": "float64"},
        {"name": "member", "dtype": "bool"},
        {"name": "city", "dtype": "string"},
    ]
    assert mixed["input_type"] == "records"
    assert mixed["outputs"]["dtype"] == "string"


def test_records_mixing_ints_and_floats_is_float() -> None:
    sig = infer_signature([{"a": 1}, {"a": 2.5}], lambda X, c: np.zeros(len(X)))
    assert sig["inputs"] == [{"name": "a", "dtype": "float64"}]


@pytest.mark.parametrize(
    ("sample", "kwargs", "message"),
    [
        (np.ones(4), {}, "2-D array"),
        (np.ones((0, 4)), {}, "at least one row"),
        (np.ones((2, 4)), {"input_names": ["a", "b"]}, "input_names has 2 names"),
        (np.ones((2, 2)), {"input_names": ["a", "a"]}, "distinct"),
        (np.array([[1 + 2j]]), {}, "not supported"),
        ([], {}, "empty list"),
        ([{"a": 1}, {"a": "x"}], {}, "mixes"),
        ([{"a": [1]}], {}, "not supported"),
    ],
)
def test_bad_samples_say_what_to_do(sample: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConveyorError, match=message):
        infer_signature(sample, _first_column, **kwargs)


def test_scalar_output_is_rejected() -> None:
    with pytest.raises(ConveyorError, match="scalar"):
        infer_signature(np.ones((2, 2)), lambda X, c: np.float64(1.0))


def test_check_signature_rejects_malformed() -> None:
    with pytest.raises(ConveyorError, match="malformed"):
        check_signature({"inputs": [{"name": "a", "dtype": "complex"}], "outputs": {}}, "m.json")


# --- payloads: the three accepted shapes ------------------------------------


def test_rows_of_dicts_in_any_key_order(sig: dict[str, Any]) -> None:
    row = {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3}
    X = parse_payload(sig, {"rows": [row, row]})
    assert X.dtype == np.float64
    assert X.tolist() == [[5.1, 3.0, 1.4, 0.2]] * 2


def test_rows_of_lists(sig: dict[str, Any]) -> None:
    assert parse_payload(sig, {"rows": [[1, 2, 3, 4.5]]}).tolist() == [[1.0, 2.0, 3.0, 4.5]]


def test_columns_and_data_are_reordered(sig: dict[str, Any]) -> None:
    payload = {"columns": ["petal_width", "petal_length", "sepal_width", "sepal_length"], "data": [[4, 3, 2, 1]]}
    assert parse_payload(sig, payload).tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_mixed_types_build_an_object_array(mixed: dict[str, Any]) -> None:
    X = parse_payload(mixed, {"rows": [{"age": 40, "height": 2, "member": False, "city": "Rome"}]})
    assert X.dtype == object
    assert X.tolist() == [[40, 2, False, "Rome"]]


def test_integral_floats_fill_int_columns(mixed: dict[str, Any]) -> None:
    X = parse_payload(mixed, {"rows": [[3.0, 1.5, True, "x"]]})
    assert X[0, 0] == 3


def test_to_array_and_sample_rows(sig: dict[str, Any], mixed: dict[str, Any]) -> None:
    assert to_array(sig, np.zeros((2, 4))).shape == (2, 4)
    assert to_array(sig, [[1, 2, 3, 4]]).tolist() == [[1, 2, 3, 4]]
    with pytest.raises(PayloadError, match="4 columns"):
        to_array(sig, np.zeros((2, 3)))
    assert sample_rows(mixed).tolist() == [[0, 0.0, False, ""]]


# --- payloads: errors name the field ----------------------------------------


@pytest.mark.parametrize(
    ("payload", "field", "problem"),
    [
        ({"rows": [[1, 2, 3, 4]] * 3 + [[1, 2, 3, "abc"]]}, "rows[3].petal_width", 'expected a number, got "abc"'),
        ({"rows": [{"sepal_length": 1, "sepal_width": 1, "petal_length": 1}]}, "rows[0]",
         "missing column 'petal_width'"),
        ({"rows": [[1, 2, 3, 4], {**dict.fromkeys(IRIS, 1), "foo": 2}]}, "rows[1]", "unknown column 'foo'"),
        ({"rows": [[1, 2, 3, 4]] * 2 + [[1, 2, 3]]}, "rows[2]", "expected 4 values, got 3"),
        ({"rows": [[1, 2, True, 4]]}, "rows[0].petal_length", "got true (a boolean)"),
        ({"rows": [[1, None, 3, 4]]}, "rows[0].sepal_width", "expected a number, got null"),
        ({"rows": [[math.nan, 2, 3, 4]]}, "rows[0].sepal_length", "finite"),
        ({"rows": [[1, 2, math.inf, 4]]}, "rows[0].petal_length", "finite"),
        ({"rows": [[1, 2, 3, 10**400]]}, "rows[0].petal_width", "out of range"),
        ({"rows": [[1, 2, 3, [4]]]}, "rows[0].petal_width", "got a list"),
        ({"rows": []}, "rows", "no rows"),
        ({"rows": {}}, "rows", "expected a list of rows"),
        ({"rows": ["abc"]}, "rows[0]", "expected an object or a list"),
        ({"rows": [[1, 2, 3, 4]], "extra": 1}, "extra", "unknown key"),
        ({"data": [[1, 2, 3, 4]]}, "columns", "missing"),
        ({"columns": IRIS}, "data", "missing"),
        ({"columns": IRIS[:3], "data": [[1, 2, 3]]}, "columns", "missing column 'petal_width'"),
        ({"columns": [*IRIS, "foo"], "data": []}, "columns[4]", "unknown column 'foo'"),
        ({"columns": [*IRIS[:3], "sepal_length"], "data": []}, "columns[3]", "appears twice"),
        ({"columns": [1, 2, 3, 4], "data": []}, "columns[0]", "expected a column name"),
        ({"columns": IRIS, "data": [[1, 2, 3, "x"]]}, "data[0].petal_width", "expected a number"),
        ({"columns": IRIS[::-1], "data": [[1, 2, 3, "x"]]}, "data[0].sepal_length", "expected a number"),
        ({"columns": IRIS, "data": [{"a": 1}]}, "data[0]", "in the order of 'columns'"),
        ({}, "body", "got no keys"),
        ([[1, 2, 3, 4]], "body", "got a list"),
        ("rows", "body", 'got "rows"'),
    ],
)
def test_payload_errors_name_the_field(sig: dict[str, Any], payload: Any, field: str, problem: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(sig, payload)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ([1.5, 1.0, True, "x"], "rows[0].age", "expected an integer, got 1.5"),
        ([2**63, 1.0, True, "x"], "rows[0].age", "out of range for int64"),
        ([1, "1.0", True, "x"], "rows[0].height", 'got "1.0"'),
        ([1, 1.0, 1, "x"], "rows[0].member", "expected true or false, got 1"),
        ([1, 1.0, True, 7], "rows[0].city", "expected a string, got 7"),
        ([1, 1.0, True, {"a": 1}], "rows[0].city", "got an object"),
    ],
)
def test_typed_columns_reject_other_types(mixed: dict[str, Any], row: list[Any], field: str, problem: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(mixed, {"rows": [row]})
    assert (caught.value.field, problem in caught.value.problem) == (field, True)


def test_float32_range_is_enforced() -> None:
    sig = infer_signature(np.ones((1, 1), dtype=np.float32), _first_column)
    with pytest.raises(PayloadError, match="out of range for float32"):
        parse_payload(sig, {"rows": [[1e39]]})
    assert parse_payload(sig, {"rows": [[1.5]]}).dtype == np.float32


def test_long_strings_are_truncated_in_messages(sig: dict[str, Any]) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_payload(sig, {"rows": [[1, 2, 3, "x" * 10_000]]})
    assert len(str(caught.value)) < 120


# --- properties -------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
_cells = _scalars | st.lists(_scalars, max_size=2)
_rows = st.lists(_cells, min_size=0, max_size=6) | st.dictionaries(
    st.sampled_from([*IRIS, "foo"]), _cells, max_size=6
)
_payloads = (
    _json
    | st.fixed_dictionaries({"rows": st.lists(_rows, max_size=4)})
    | st.fixed_dictionaries({
        "columns": st.lists(st.sampled_from([*IRIS, "foo"]) | _scalars, max_size=5),
        "data": st.lists(_rows, max_size=4),
    })
)


@settings(max_examples=400, deadline=None)
@given(_payloads)
def test_any_json_payload_raises_only_payload_errors(payload: Any) -> None:
    sig = infer_signature(np.ones((1, 4)), _first_column, input_names=IRIS)
    try:
        X = parse_payload(sig, payload)
    except PayloadError as exc:
        assert exc.field and exc.problem
    else:
        assert X.ndim == 2 and X.shape[1] == 4 and len(X) >= 1
        assert np.isfinite(X).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
                         min_size=4, max_size=4), min_size=1, max_size=20))
def test_valid_numeric_rows_round_trip(rows: list[list[float]]) -> None:
    sig = infer_signature(np.ones((1, 4)), _first_column, input_names=IRIS)
    X = parse_payload(sig, {"rows": rows})
    assert X.tolist() == [[float(v) for v in row] for row in rows]
    as_dicts = [dict(zip(IRIS, row)) for row in rows]
    assert parse_payload(sig, {"rows": as_dicts}).tolist() == X.tolist()
