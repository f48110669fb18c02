"""Conveyor: a continuous-delivery line for machine-learning models.

What a training script or a test imports. Attributes load lazily so that
`import conveyor` (and so every CLI command) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["log_metrics", "load_model", "save_model", "__version__"]

if TYPE_CHECKING:
    from conveyor.metrics import log_metrics
    from conveyor.model import load_model, save_model

_LAZY = {
    "save_model": "conveyor.model",
    "load_model": "conveyor.model",
    "log_metrics": "conveyor.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
