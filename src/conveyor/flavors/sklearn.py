"""The scikit-learn flavor: any fitted estimator with `predict`, pickled with joblib.

Loading a pickle runs code, so `conveyor.model` only loads an artifact whose
bytes match the digest the registry recorded for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    import numpy as np

ARTIFACT = "model.joblib"
PACKAGES = ("scikit-learn", "numpy", "joblib")


def check(model: Any) -> None:
    """Refuse what is not an estimator before anything is written."""
    if not callable(getattr(model, "predict", None)):
        raise ConveyorError(
            f"a {type(model).__name__} has no predict method; the sklearn flavor needs a fitted estimator"
        )


def save(model: Any, directory: Path) -> str:
    """Dump the estimator into `directory`; return the artifact's file name."""
    import joblib

    joblib.dump(model, directory / ARTIFACT)
    return ARTIFACT


def load(path: Path) -> Any:
    """Unpickle an estimator: call only on verified bytes."""
    import joblib

    return joblib.load(path)


def as_input(model: Any, X: np.ndarray, columns: list[str]) -> Any:
    """`X` as the estimator wants it: an estimator fitted on a DataFrame wants one back (else
    scikit-learn warns, and column-name based transformers fail), so it gets one, if pandas is here."""
    if getattr(model, "feature_names_in_", None) is None:
        return X
    try:
        import pandas as pd
    except ImportError:
        return X
    return pd.DataFrame(X, columns=columns)


def predict(model: Any, X: np.ndarray, columns: list[str]) -> np.ndarray:
    """Predictions as a numpy array, one per row of `X` (given as `as_input` makes it)."""
    import numpy as np

    return np.asarray(model.predict(as_input(model, X, columns)))
