"""Metrics files: written by training code, read by the line for gates and lineage."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.store import atomic_write_text

SLICES = "slices"
"""Top-level key of per-slice metrics: `{"slices": {"setosa": {"accuracy": 1.0}}}`."""


def log_metrics(
    metrics: Mapping[str, float],
    path: str | Path = "metrics.json",
    *,
    slices: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Write metrics as JSON for the line to read (declare the file in a stage's `metrics`).

    `slices` maps a slice of the data (a class, a segment) to its own metrics;
    they are read back as `slices.<name>.<metric>`, which a gate with
    `slices: true` checks one slice at a time.
    """
    document: dict[str, Any] = _clean(metrics, "")
    if slices:
        if SLICES in document:
            raise ConveyorError(f"metric '{SLICES}' clashes with the per-slice metrics; rename it")
        document[SLICES] = {}
        for name, values in slices.items():
            name = str(name)
            if not name or "." in name:
                raise ConveyorError(f"slice name {name!r} must be non-empty and contain no '.'; "
                                    "dots separate the parts of a metric's key")
            document[SLICES][name] = _clean(values, f"{SLICES}.{name}.")
    atomic_write_text(Path(path), json.dumps(document, indent=2, sort_keys=True) + "\n")


def _clean(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    clean = {}
    for key, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            raise ConveyorError(f"metric '{prefix}{key}' is {number}; metrics must be finite numbers")
        clean[str(key)] = number
    return clean


def slice_values(metrics: Mapping[str, float], metric: str) -> dict[str, float]:
    """`metric` in each slice that has it, by slice name, from metrics as `read_metrics` returns them."""
    head, tail = f"{SLICES}.", f".{metric}"
    return {
        key[len(head):-len(tail)]: value
        for key, value in metrics.items()
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)
    }


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def read_metrics(path: Path) -> dict[str, float]:
    """Numeric values of a JSON or YAML metrics file, nested keys joined with dots."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConveyorError(f"metrics file {path} was not written by its stage") from None
    except UnicodeDecodeError:
        raise ConveyorError(f"metrics file {path} is not UTF-8 text") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConveyorError(f"metrics file {path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConveyorError(f"metrics file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConveyorError(f"metrics file {path} must hold a mapping of metric names to numbers")
    return _flatten(data)
