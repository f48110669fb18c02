"""Train a logistic regression on the prepared iris data and save it for Conveyor.

`conveyor.save_model` writes the model directory (model.joblib plus its input
signature) that Conveyor tests, gates, registers and serves;
`conveyor.log_metrics` writes the metrics the gates in conveyor.yaml check.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

import conveyor

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features (in FEATURES order) and labels of a prepared csv file."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    X = np.array([[float(row[name]) for name in FEATURES] for row in rows])
    y = np.array([int(row["species"]) for row in rows])
    return X, y


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["train"]
    X_train, y_train = load(Path("data/prepared/train.csv"))
    X_test, y_test = load(Path("data/prepared/test.csv"))

    model = LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]))
    model.fit(X_train, y_train)
    predicted = model.predict(X_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }

    conveyor.save_model(model, "model", sample_input=X_train[:5], input_names=FEATURES)
    conveyor.log_metrics(metrics, "metrics.json")
    print(
        f"train: accuracy {metrics['accuracy']:.3f}, f1_macro {metrics['f1_macro']:.3f} "
        f"(C={params['C']}, {len(y_train)} train / {len(y_test)} test rows)"
    )


if __name__ == "__main__":
    main()
