"""The server's OpenAPI 3.1 document and a small HTML docs page, both built from the served signature."""

from __future__ import annotations

import html
import json
from typing import Any

from conveyor.serving.oip import datatype
from conveyor.signature import Signature, column_names

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "float64": {"type": "number", "format": "double"},
    "float32": {"type": "number", "format": "float"},
    "int64": {"type": "integer", "format": "int64"},
    "int32": {"type": "integer", "format": "int32"},
    "bool": {"type": "boolean"},
    "string": {"type": "string"},
}
_FILLER = {"float64": 0.0, "float32": 0.0, "int64": 0, "int32": 0, "bool": False, "string": ""}

ENDPOINTS = (
    ("POST", "/predict", "Predict: {\"rows\": [...]} or {\"columns\": [...], \"data\": [[...]]}"),
    ("POST", "/invocations", "MLflow scoring protocol: dataframe_split, dataframe_records, instances, inputs, or text/csv"),
    ("GET", "/v2", "Open Inference Protocol v2: server metadata"),
    ("GET", "/v2/health/live", "OIP liveness"),
    ("GET", "/v2/health/ready", "OIP readiness"),
    ("GET", "/v2/models/{name}", "OIP model metadata (also /versions/{version})"),
    ("GET", "/v2/models/{name}/ready", "OIP model readiness (also /versions/{version}/ready)"),
    ("POST", "/v2/models/{name}/infer", "OIP inference (also /versions/{version}/infer)"),
    ("GET", "/healthz", "Liveness"),
    ("GET", "/readyz", "Readiness: 503 until a model is loaded"),
    ("GET", "/version", "The served model version"),
    ("POST", "/-/reload", "Re-resolve the followed reference and hot-swap (Bearer token)"),
    ("GET", "/openapi.json", "This API as OpenAPI 3.1"),
    ("GET", "/docs", "This page"),
)
"""Every route of the server: method, path, one line on what it does."""


def example_row(signature: Signature, sample: list[list[Any]] | None = None) -> dict[str, Any]:
    """One request row as {column: value}: the first training sample row if known, else zeros."""
    columns = signature["inputs"]
    if sample and isinstance(sample[0], list) and len(sample[0]) == len(columns):
        return dict(zip(column_names(signature), sample[0]))
    return {c["name"]: _FILLER[c["dtype"]] for c in columns}


def _body(schema: dict[str, Any], example: Any, media: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema, "example": example}}}


def _reply(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(name: str, version: int, signature: Signature, sample: list[list[Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server serving `name` v`version` with `signature`."""
    columns = signature["inputs"]
    names = column_names(signature)
    cell = {c["name"]: _JSON_TYPES[c["dtype"]] for c in columns}
    row = example_row(signature, sample)
    out_dtype = signature["outputs"]["dtype"]
    error = {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
             "required": ["error"]}
    schemas: dict[str, Any] = {
        "RowObject": {"type": "object", "properties": cell, "required": names, "additionalProperties": False},
        "RowList": {"type": "array", "prefixItems": [cell[n] for n in names], "items": False,
                    "minItems": len(names), "maxItems": len(names), "description": "values in column order: "
                    + ", ".join(names)},
        "PredictRequest": {"oneOf": [
            {"type": "object", "properties": {"rows": {"type": "array", "minItems": 1, "items": {
                "oneOf": [{"$ref": "#/components/schemas/RowObject"}, {"$ref": "#/components/schemas/RowList"}]}}},
             "required": ["rows"], "additionalProperties": False},
            {"type": "object", "properties": {
                "columns": {"type": "array", "items": {"enum": names}, "uniqueItems": True},
                "data": {"type": "array", "minItems": 1, "items": {"type": "array"}}},
             "required": ["columns", "data"], "additionalProperties": False},
        ]},
        "Predictions": {"type": "array", "items": _JSON_TYPES[out_dtype]},
        "Error": error,
        "MlflowError": {"type": "object", "properties": {"error_code": {"type": "string"},
                                                         "message": {"type": "string"}}},
        "Tensor": {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
            "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string"}, "data": {"type": "array"}}},
    }
    header = {"X-Model-Version": {"description": "The model version that answered", "schema": {"type": "string"}}}

    def prediction(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {**_reply(description, schema), "headers": header}

    bad = _reply("The request does not match the signature", {"$ref": "#/components/schemas/Error"})
    mlflow_bad = _reply("MLflow-style error", {"$ref": "#/components/schemas/MlflowError"})
    oip_infer = {"inputs": [{"name": "input-0", "shape": [1, len(names)],
                             "datatype": datatype(columns[0]["dtype"]), "data": list(row.values())}]}
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": [name]}}]
    version_param = [*name_param, {"name": "version", "in": "path", "required": True,
                                   "schema": {"type": "string", "enum": [str(version)]}}]
    simple = {"200": _reply("OK", {"type": "object"})}
    paths: dict[str, Any] = {
        "/predict": {"post": {
            "summary": f"Predict with {name}",
            "requestBody": _body({"$ref": "#/components/schemas/PredictRequest"}, {"rows": [row]}),
            "responses": {"200": prediction("Predictions", {"type": "object", "properties": {
                "predictions": {"$ref": "#/components/schemas/Predictions"}, "model": {"type": "object"}}}),
                "422": bad, "413": bad, "415": bad},
        }},
        "/invocations": {"post": {
            "summary": "MLflow scoring protocol",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object"},
                                     "example": {"dataframe_split": {"columns": names, "data": [list(row.values())]}}},
                "text/csv": {"schema": {"type": "string"},
                             "example": ",".join(names) + "\n" + ",".join(map(str, row.values())) + "\n"},
            }},
            "responses": {"200": prediction("Predictions", {"type": "object", "properties": {
                "predictions": {"$ref": "#/components/schemas/Predictions"}}}), "400": mlflow_bad},
        }},
        "/v2": {"get": {"summary": "OIP server metadata", "responses": simple}},
        "/v2/health/live": {"get": {"summary": "OIP liveness", "responses": simple}},
        "/v2/health/ready": {"get": {"summary": "OIP readiness", "responses": simple}},
    }
    for prefix, params in (("/v2/models/{name}", name_param), ("/v2/models/{name}/versions/{version}", version_param)):
        missing = {"404": _reply("Another model or version", {"$ref": "#/components/schemas/Error"})}
        paths[prefix] = {"get": {"summary": "OIP model metadata", "parameters": params,
                                 "responses": {**simple, **missing}}}
        paths[f"{prefix}/ready"] = {"get": {"summary": "OIP model readiness", "parameters": params,
                                            "responses": {**simple, **missing}}}
        paths[f"{prefix}/infer"] = {"post": {
            "summary": "OIP inference", "parameters": params,
            "requestBody": _body({"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                "outputs": {"type": "array", "items": {"type": "object"}}}}, oip_infer),
            "responses": {"200": prediction("Inference response", {"type": "object"}), "400": bad, **missing},
        }}
    for path, summary in (("/healthz", "Liveness"), ("/readyz", "Readiness"), ("/version", "Served version"),
                          ("/openapi.json", "This document")):
        paths[path] = {"get": {"summary": summary, "responses": simple}}
    paths["/docs"] = {"get": {"summary": "HTML docs", "responses": {
        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    paths["/-/reload"] = {"post": {"summary": "Hot-reload the followed reference",
                                   "security": [{"bearer": []}],
                                   "responses": {**simple, "401": bad, "403": bad, "409": bad}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{name} v{version} (Conveyor)", "version": str(version),
                 "description": "Columns: " + ", ".join(f"{c['name']} ({c['dtype']})" for c in columns)},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def docs_page(name: str, version: int, signature: Signature, sample: list[list[Any]] | None = None) -> str:
    """A self-contained HTML page: the columns, every endpoint, and example requests."""
    row = example_row(signature, sample)
    e = html.escape
    examples = [
        ("POST /predict", json.dumps({"rows": [row]}, indent=2)),
        ("POST /invocations", json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}},
                                         indent=2)),
        (f"POST /v2/models/{name}/infer", json.dumps({"inputs": [{
            "name": "input-0", "shape": [1, len(row)],
            "datatype": datatype(signature["inputs"][0]["dtype"]), "data": list(row.values())}]}, indent=2)),
    ]
    columns = "".join(f"<tr><td><code>{e(c['name'])}</code></td><td>{e(c['dtype'])}</td></tr>"
                      for c in signature["inputs"])
    routes = "".join(f"<tr><td>{e(method)}</td><td><code>{e(path)}</code></td><td>{e(what)}</td></tr>"
                     for method, path, what in ENDPOINTS)
    shown = "".join(f"<h3>{e(title)}</h3><pre>{e(body)}</pre>" for title, body in examples)
    curl = f"curl -s localhost:8000/predict -H 'content-type: application/json' -d '{json.dumps({'rows': [row]})}'"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(name)} v{version}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td{{padding:.2em 1em}}
pre{{background:#f4f4f4;padding:1em}}</style></head>
<body><h1>{e(name)} v{version}</h1>
<p>Served by Conveyor. Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>
<h2>Input columns</h2><table><tr><th>column</th><th>dtype</th></tr>{columns}</table>
<h2>Endpoints</h2><table>{routes}</table>
<h2>Examples</h2><pre>{e(curl)}</pre>{shown}
</body></html>
"""
