"""The other protocols on the model server: MLflow's /invocations, Open Inference Protocol v2, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serving import IRIS, ROW, Line, _serve

ROW2 = [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One real server on loopback serving iris v1, shared by these read-only tests."""
    built = Line(tmp_path_factory.mktemp("protocols"))
    for _, _, http in _serve(built):
        yield http
    built.registry.close()


# -- MLflow /invocations -------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": IRIS, "data": [ROW, ROW2]}},
        {"dataframe_split": {"columns": IRIS[::-1], "data": [ROW[::-1], ROW2[::-1]], "index": [7, 8]}},
        {"dataframe_split": {"data": [ROW, ROW2]}},
        {"dataframe_records": [dict(zip(IRIS, ROW)), dict(zip(IRIS, ROW2))]},
        {"instances": [ROW, ROW2]},
        {"instances": [dict(zip(IRIS, ROW)), dict(zip(IRIS, ROW2))]},
        {"inputs": [ROW, ROW2]},
        {"inputs": [dict(zip(IRIS, ROW)), dict(zip(IRIS, ROW2))]},
        {"inputs": {name: [a, b] for name, a, b in zip(IRIS, ROW, ROW2)}},
        {"inputs": [ROW, ROW2], "params": {}},
    ],
)
def test_invocations_json_forms(client: httpx.Client, payload: Any) -> None:
    reply = client.post("/invocations", json=payload)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [0, 2]}
    assert reply.headers["x-model-version"] == "1"


def test_invocations_csv(client: httpx.Client) -> None:
    body = ",".join(IRIS[::-1]) + "\n" + ",".join(map(str, ROW[::-1])) + "\r\n" + ",".join(map(str, ROW2[::-1])) + "\n"
    reply = client.post("/invocations", content=body, headers={"content-type": "text/csv; charset=utf-8"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [0, 2]}
    assert reply.headers["x-model-version"] == "1"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"dataframe_split": {"columns": IRIS, "data": [ROW, ROW, [1, "x", 3, 4]]}},
         'dataframe_split.data[2][1]: expected a number, got "x"'),
        ({"dataframe_split": {"columns": IRIS[::-1], "data": [[1, 2, 3, True]]}},
         "dataframe_split.data[0][3]: expected a number, got true (a boolean)"),
        ({"dataframe_split": {"columns": [*IRIS[:3], "foo"], "data": [ROW]}},
         "dataframe_split.columns[3]: unknown column 'foo'"),
        ({"dataframe_split": {"columns": IRIS[:3], "data": [ROW[:3]]}},
         "dataframe_split.columns: missing column 'petal_width'"),
        ({"dataframe_split": {"columns": IRIS, "data": [ROW], "index": [1, 2]}}, "dataframe_split.index"),
        ({"dataframe_split": [ROW]}, "dataframe_split: expected an object"),
        ({"dataframe_records": [dict(zip(IRIS, ROW)), dict(zip(IRIS[:3], ROW))]},
         "dataframe_records[1]: missing column 'petal_width'"),
        ({"dataframe_records": [ROW]}, "dataframe_records[0]: expected an object"),
        ({"instances": [ROW, ROW[:3]]}, "instances[1]: expected 4 values, got 3"),
        ({"instances": [{**dict(zip(IRIS, ROW)), "sepal_width": None}]}, "instances[0].sepal_width: expected a number"),
        ({"instances": []}, "instances: no rows"),
        ({"instances": {"a": [1]}}, "instances: expected a list of rows"),
        ({"inputs": {**{n: [1.0] for n in IRIS}, "petal_width": ["y"]}}, 'inputs.petal_width[0]: expected a number, got "y"'),
        ({"inputs": {**{n: [1.0, 2.0] for n in IRIS}, "petal_width": [1.0]}}, "inputs: the column lists differ"),
        ({"inputs": {"sepal_length": [1.0]}}, "inputs.columns: missing column 'sepal_width'"),
        ({"inputs": 3}, "inputs: expected a list of rows"),
        ({"inputs": [ROW], "instances": [ROW]}, "expected exactly one of"),
        ({}, "expected exactly one of"),
        ({"rows": [ROW]}, "rows: unknown key"),
        ({"inputs": [ROW], "params": {"k": 1}}, "params: this model takes no inference parameters"),
        ([ROW], "body: expected a JSON object"),
    ],
)
def test_invocations_errors_are_mlflow_style_400s(client: httpx.Client, payload: Any, message: str) -> None:
    reply = client.post("/invocations", json=payload)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error_code"] == "BAD_REQUEST"
    assert message in reply.json()["message"]
    assert reply.headers["x-model-version"] == "1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (",".join(IRIS) + "\n1,2,3,4\n1,x,3,4\n", 'csv row 2.sepal_width: expected a number, got "x"'),
        (",".join(IRIS) + "\n1,2,3,\n", 'csv row 1.petal_width: expected a number, got ""'),
        (",".join(IRIS) + "\n1,2,3,nan\n", "csv row 1.petal_width: expected a finite number"),
        (",".join(IRIS) + "\n1,2,3\n", "csv row 1: expected 4 values, got 3"),
        (",".join(IRIS) + "\n1,2,3,4,5\n", "csv row 1: expected 4 values, got 5"),
        ("a,b,c,d\n1,2,3,4\n", "csv header[0]: unknown column 'a'"),
        (",".join(IRIS[:3]) + "\n1,2,3\n", "csv header: missing column 'petal_width'"),
        (",".join(IRIS) + "\n", "csv: no rows"),
        ("", "the CSV is empty"),
        ('"unterminated\n', "csv header"),
    ],
)
def test_invocations_csv_errors(client: httpx.Client, body: str, message: str) -> None:
    reply = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error_code"] == "BAD_REQUEST"
    assert message in reply.json()["message"]


def test_invocations_transport_errors_are_mlflow_style(client: httpx.Client) -> None:
    bad_json = client.post("/invocations", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["message"]
    wrong_type = client.post("/invocations", content=b"1,2", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error_code"] == "BAD_REQUEST" and "text/csv" in wrong_type.json()["message"]
    big = client.post("/invocations", content=b" " * (64 * 1024 + 1), headers={"content-type": "text/csv"})
    assert big.status_code == 413 and big.json()["error_code"] == "BAD_REQUEST"
    not_utf8 = client.post("/invocations", content=b"\xff\xfe,", headers={"content-type": "text/csv"})
    assert not_utf8.status_code == 400 and "UTF-8" in not_utf8.json()["message"]


# -- Open Inference Protocol v2 --------------------------------------------------


def test_oip_server_metadata_and_health(client: httpx.Client) -> None:
    from conveyor import __version__

    assert client.get("/v2").json() == {"name": "conveyor", "version": __version__, "extensions": []}
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert ready.headers["x-model-version"] == "1"


def test_oip_model_metadata(client: httpx.Client) -> None:
    expected = {
        "name": "iris",
        "versions": ["1"],
        "platform": "conveyor-sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    }
    assert client.get("/v2/models/iris").json() == expected
    assert client.get("/v2/models/iris/versions/1").json() == expected
    for path in ("/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"):
        reply = client.get(path)
        assert reply.status_code == 200 and reply.json() == {"name": "iris", "ready": True}


@pytest.mark.parametrize(
    "path",
    ["/v2/models/other", "/v2/models/other/ready", "/v2/models/iris/versions/2", "/v2/models/iris/versions/2/ready",
     "/v2/models/other/versions/1"],
)
def test_oip_other_models_and_versions_are_404(client: httpx.Client, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404
    assert set(reply.json()) == {"error"} and "not served here" in reply.json()["error"]
    assert reply.headers["x-model-version"] == "1"
    infer = client.post(path.removesuffix("/ready") + "/infer", json={"inputs": []})
    assert infer.status_code == 404 and "not served here" in infer.json()["error"]


def _tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "FP16", "INT64", "INT32", "UINT8"])
@pytest.mark.parametrize("nested", [False, True])
def test_oip_infer_one_tensor(client: httpx.Client, datatype: str, nested: bool) -> None:
    rows = [ROW, ROW2] if datatype.startswith("FP") else [[5, 3, 1, 0], [7, 3, 5, 2]]
    data = rows if nested else [x for row in rows for x in row]
    body = {"id": "req-1", "inputs": [_tensor("input-0", [2, 4], datatype, data)], "outputs": [{"name": "predict"}]}
    reply = client.post("/v2/models/iris/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "model_name": "iris", "model_version": "1", "id": "req-1",
        "outputs": [{"name": "predict", "shape": [2], "datatype": "INT64", "data": [0, 2]}],
    }
    assert reply.headers["x-model-version"] == "1"


@pytest.mark.parametrize("column_shape", [[2], [2, 1]])
def test_oip_infer_one_tensor_per_column(client: httpx.Client, column_shape: list[int]) -> None:
    inputs = [
        _tensor(name, column_shape, "FP32", [[a], [b]] if len(column_shape) == 2 else [a, b])
        for name, a, b in reversed(list(zip(IRIS, ROW, ROW2)))
    ]
    reply = client.post("/v2/models/iris/versions/1/infer", json={"inputs": inputs})
    assert reply.status_code == 200, reply.text
    assert "id" not in reply.json()
    assert reply.json()["outputs"][0]["data"] == [0, 2]


def _columns(**override: dict[str, Any]) -> list[dict[str, Any]]:
    tensors = {name: _tensor(name, [1], "FP64", [value]) for name, value in zip(IRIS, ROW)}
    for name, tensor in override.items():
        tensors[name] = tensor
    return [t for t in tensors.values() if t]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_tensor("input-0", [2, 4], "FP64", ROW)], "input 'input-0'.data: shape [2, 4] holds 8 elements but data has 4"),
        ([_tensor("input-0", [1, 4], "FP128", ROW)], "input 'input-0'.datatype: unknown datatype 'FP128'"),
        ([_tensor("input-0", [1, 4], "BYTES", ["a", "b", "c", "d"])],
         "input 'input-0'.datatype: BYTES does not fit column 'sepal_length' (float64); send FP64"),
        ([_tensor("input-0", [1, 4], "BOOL", [True] * 4)], "BOOL does not fit column 'sepal_length'"),
        ([_tensor("input-0", [1, 4], "FP64", [1, 2, "x", 4])], "input 'input-0'.data[2]: expected a number for FP64"),
        ([_tensor("input-0", [1, 4], "INT32", [1, 2, 3.5, 4])], "input 'input-0'.data[2]: expected an integer for INT32"),
        ([_tensor("input-0", [1, 4], "INT32", [1, 2, 2**40, 4])], "input 'input-0'.data[2]: out of range for INT32"),
        ([_tensor("input-0", [1, 4], "FP32", [1, 2, 3, 1e300])], "input 'input-0'.data[3]: out of range for FP32"),
        ([_tensor("input-0", [1, 4], "FP64", [1, 2, 3, 10**400])], "not valid JSON"),
        ([_tensor("input-0", [4, 1], "FP64", ROW)], "input 'input-0'.shape: expected [n, 4]"),
        ([_tensor("input-0", [0, 4], "FP64", [])], "input 'input-0': no rows"),
        ([_tensor("input-0", [1, 4], "FP64", ROW), _tensor("x", [1], "FP64", [1])], "input 'input-0': unknown input name"),
        ([{"name": "input-0", "shape": [1, 4], "data": ROW}], "inputs[0]: missing 'datatype'"),
        ([_tensor("input-0", [1, -4], "FP64", ROW)], "input 'input-0'.shape: expected a list of non-negative integers"),
        ([3], "inputs[0]: expected an object"),
        ([], "inputs: expected a non-empty list"),
        (_columns(petal_width={}), "inputs: missing column 'petal_width'"),
        (_columns(petal_width=_tensor("petal_width", [2], "FP64", [1, 2])), "different lengths [1, 2]"),
        (_columns(petal_width=_tensor("petal_width", [1, 2], "FP64", [1, 2])), "input 'petal_width'.shape: expected [n] or [n, 1]"),
        (_columns(petal_width=_tensor("petal_width", [1], "BYTES", ["1"])), "BYTES does not fit column 'petal_width'"),
        ([*_columns(), _tensor("sepal_length", [1], "FP64", [1])], "input 'sepal_length': appears twice"),
    ],
)
def test_oip_infer_errors_are_400_naming_the_input(client: httpx.Client, inputs: Any, message: str) -> None:
    reply = client.post("/v2/models/iris/infer", json={"inputs": inputs})
    assert reply.status_code == 400, reply.text
    assert set(reply.json()) == {"error"}
    assert message in reply.json()["error"]
    assert reply.headers["x-model-version"] == "1"


def test_oip_infer_request_level_errors(client: httpx.Client) -> None:
    one = [_tensor("input-0", [1, 4], "FP64", ROW)]
    wrong_output = client.post("/v2/models/iris/infer", json={"inputs": one, "outputs": [{"name": "proba"}]})
    assert wrong_output.status_code == 400 and "unknown output 'proba'" in wrong_output.json()["error"]
    assert client.post("/v2/models/iris/infer", json={"inputs": one, "id": 3}).status_code == 400
    assert client.post("/v2/models/iris/infer", json=[one]).status_code == 400
    assert client.get("/v2/models/iris/infer").status_code == 405


# -- OpenAPI and docs ------------------------------------------------------------------


def test_openapi_document_is_built_from_the_signature(client: httpx.Client) -> None:
    reply = client.get("/openapi.json")
    assert reply.status_code == 200 and reply.headers["x-model-version"] == "1"
    spec = reply.json()
    assert spec["openapi"] == "3.1.0" and spec["info"]["version"] == "1"
    assert {"/predict", "/invocations", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}",
            "/v2/models/{name}/ready", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}",
            "/v2/models/{name}/versions/{version}/infer", "/healthz", "/readyz", "/version", "/-/reload",
            "/openapi.json", "/docs"} <= set(spec["paths"])
    row = spec["components"]["schemas"]["RowObject"]
    assert row["required"] == IRIS
    assert row["properties"]["petal_width"] == {"type": "number", "format": "double"}
    assert row["additionalProperties"] is False
    predict = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert predict["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    # the examples in the document are real requests this server answers
    assert client.post("/predict", json=predict["example"]).status_code == 200
    invocations = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert client.post("/invocations", json=invocations["application/json"]["example"]).status_code == 200
    csv = client.post("/invocations", content=invocations["text/csv"]["example"], headers={"content-type": "text/csv"})
    assert csv.status_code == 200, csv.text
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert client.post("/v2/models/iris/infer", json=infer).status_code == 200
    for path in spec["paths"].values():
        for operation in path.values():
            assert "responses" in operation and operation["summary"]


def test_openapi_document_validates(client: httpx.Client) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(client.get("/openapi.json").json())


def test_docs_page(client: httpx.Client) -> None:
    reply = client.get("/docs")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    page = reply.text
    for text in ("/invocations", "/v2/models/{name}/infer", "/openapi.json", "petal_width", "sepal_length"):
        assert text in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # no external assets
    assert reply.headers["x-model-version"] == "1"


def test_before_a_model_loads_the_protocols_answer_503(tmp_path: Path) -> None:
    from test_serving import TOKEN, _Server

    from conveyor.serving.app import ServingApp

    built = Line(tmp_path)
    try:
        app = ServingApp(built.source(), token=TOKEN)
        with _Server(app) as running, httpx.Client(base_url=running.url, timeout=10) as http:
            invocations = http.post("/invocations", json={"inputs": [ROW]})
            assert invocations.status_code == 503
            assert invocations.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
            assert http.get("/v2/health/ready").status_code == 503
            assert http.get("/v2/health/live").status_code == 200
            assert http.post("/v2/models/iris/infer", json={}).status_code == 503
            assert http.get("/openapi.json").status_code == 503
    finally:
        built.registry.close()


# -- nothing a client sends is a 5xx ----------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
_names = st.sampled_from([*IRIS, "input-0", "x", ""])
_tensors = st.fixed_dictionaries(
    {"name": _names, "datatype": st.sampled_from(["FP64", "FP32", "INT64", "INT32", "BOOL", "BYTES", "FP8"]),
     "shape": st.lists(st.integers(-1, 5), max_size=3), "data": _json_values},
)
_invocations = st.one_of(
    _json_values,
    st.dictionaries(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "params"]),
                    _json_values, max_size=2),
    st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries(
        {"columns": st.lists(_names, max_size=5), "data": _json_values})}),
    st.fixed_dictionaries({"inputs": st.dictionaries(_names, st.lists(_json_values, max_size=3), max_size=5)}),
)
_infers = st.one_of(
    _json_values,
    st.fixed_dictionaries({"inputs": st.lists(_tensors, max_size=5)},
                          optional={"id": _json_values, "outputs": _json_values}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invocation=_invocations, infer=_infers, csv=st.text(max_size=60))
def test_arbitrary_bodies_never_get_a_5xx(client: httpx.Client, invocation: Any, infer: Any, csv: str) -> None:
    reply = client.post("/invocations", json=invocation)
    assert reply.status_code < 500, reply.text
    assert reply.status_code == 200 or reply.json()["error_code"] == "BAD_REQUEST"
    reply = client.post("/invocations", content=csv.encode("utf-8", "surrogatepass"), headers={"content-type": "text/csv"})
    assert reply.status_code < 500, reply.text
    reply = client.post("/v2/models/iris/infer", json=infer)
    assert reply.status_code < 500, reply.text
    assert reply.status_code == 200 or set(reply.json()) == {"error"}
