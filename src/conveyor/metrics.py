"""Metrics files: written by training code, read by the line for gates and lineage."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.store import atomic_write_text


def log_metrics(metrics: Mapping[str, float], path: str | Path = "metrics.json") -> None:
    """Write metrics as JSON for the line to read (declare the file in a stage's `metrics`)."""
    clean = {}
    for key, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            raise ConveyorError(f"metric '{key}' is {number}; metrics must be finite numbers")
        clean[str(key)] = number
    atomic_write_text(Path(path), json.dumps(clean, indent=2, sort_keys=True) + "\n")


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
