"""PNG plots for a report, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conveyor.exceptions import ConveyorError

METRIC_PLOT = "metric-history.png"
CONFUSION_PLOT = "confusion-matrix.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConveyorError("plots need matplotlib: pip install 'conveyor-ml[report]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_history(history: list[tuple[int, dict[str, float]]], dest: Path) -> Path | None:
    """Each metric across the last versions, one line per metric; None when there is nothing to draw."""
    names = sorted({name for _, metrics in history for name in metrics})
    if not history or not names:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    versions = [version for version, _ in history]
    for name in names:
        axes.plot(versions, [metrics.get(name, float("nan")) for _, metrics in history], marker="o", label=name)
    axes.set_xlabel("version")
    axes.set_xticks(versions)
    axes.set_title("metrics across versions")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(dest)
    plt.close(figure)
    return dest


def confusion_matrix(source: Path, dest: Path) -> Path:
    """The project's `confusion_matrix.json` ({"labels": [...], "matrix": [[...]]}, rows = truth) as a heat map."""
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        labels = [str(label) for label in data["labels"]]
        matrix = [[float(cell) for cell in row] for row in data["matrix"]]
        if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
            raise ValueError(f"matrix is not {len(labels)}×{len(labels)}, one row and column per label")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConveyorError(f"{source}: not a confusion matrix ({exc}); "
                            'write {"labels": [...], "matrix": [[...], ...]}') from None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(4, 4), dpi=100)
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, cell in enumerate(row):
            axes.text(j, i, f"{cell:g}", ha="center", va="center")
    figure.tight_layout()
    figure.savefig(dest)
    plt.close(figure)
    return dest
