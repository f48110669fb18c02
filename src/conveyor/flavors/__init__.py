"""Flavors: how a model artifact is saved, loaded and called.

A flavor is a module with `check(model)` (raise if it cannot save it),
`save(model, directory) -> artifact file name`,
`load(path) -> model`, `predict(model, X, columns) -> numpy array` and
`PACKAGES` (distributions whose versions are recorded beside the artifact),
and optionally `SERVING_PACKAGES` when predicting needs fewer of them.
The serving layer only ever talks to a flavor, never to a framework.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    import numpy as np

FLAVORS = {
    "sklearn": "conveyor.flavors.sklearn",
    "onnx": "conveyor.flavors.onnx",
    "pyfunc": "conveyor.flavors.pyfunc",
}
"""Flavor name -> module implementing it."""


class Flavor(Protocol):
    """What a flavor module provides."""

    PACKAGES: tuple[str, ...]

    def check(self, model: Any) -> None: ...

    def save(self, model: Any, directory: Path) -> str: ...

    def load(self, path: Path) -> Any: ...

    def predict(self, model: Any, X: np.ndarray, columns: list[str]) -> np.ndarray: ...


def get(name: str) -> Flavor:
    """The flavor module called `name`."""
    try:
        module: ModuleType = importlib.import_module(FLAVORS[name])
    except KeyError:
        raise ConveyorError(
            f"unknown model flavor '{name}'; supported flavors: {', '.join(sorted(FLAVORS))}"
        ) from None
    return cast(Flavor, module)


def serving_packages(name: str) -> tuple[str, ...]:
    """The distributions a serving image needs for flavor `name`: its `SERVING_PACKAGES`, else `PACKAGES`."""
    module = get(name)
    found = getattr(module, "SERVING_PACKAGES", None)
    return tuple(found) if found is not None else module.PACKAGES
