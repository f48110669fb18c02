"""Behaviour tests for the candidate model, run by `conveyor run` before the gates.

`candidate_model` comes from Conveyor's pytest plugin: it loads the model
directory at `model.path` in conveyor.yaml. These tests check that the model
behaves sensibly; how good it must be is the job of the gates in conveyor.yaml.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TEST_CSV = Path(__file__).resolve().parent.parent / "data" / "prepared" / "test.csv"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = {0, 1, 2}  # setosa, versicolor, virginica


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The test split written by the prepare stage; never seen in training."""
    with TEST_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    X = np.array([[float(row[name]) for name in FEATURES] for row in rows])
    y = np.array([int(row["species"]) for row in rows])
    return X, y


def labels(candidate_model: Any, X: np.ndarray) -> np.ndarray:
    return np.asarray(candidate_model.predict(X)).reshape(-1)


def test_far_better_than_chance_on_held_out_data(
    candidate_model: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    # A floor, not the quality bar: chance is 1/3, the accuracy gate asks for 0.9.
    X, y = held_out
    accuracy = float(np.mean(labels(candidate_model, X) == y))
    assert accuracy >= 0.6, f"accuracy {accuracy:.3f} on {len(y)} held-out rows"


def test_predictions_are_known_classes(
    candidate_model: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _ = held_out
    predicted = labels(candidate_model, X)
    assert len(predicted) == len(X)
    assert {int(label) for label in predicted} <= CLASSES


def test_textbook_setosa_is_setosa(candidate_model: Any) -> None:
    # Short, narrow petals: every reasonable iris model calls this setosa (0).
    flower = np.array([[5.0, 3.4, 1.5, 0.2]])
    assert int(labels(candidate_model, flower)[0]) == 0


def test_predictions_are_deterministic(
    candidate_model: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _ = held_out
    np.testing.assert_array_equal(labels(candidate_model, X), labels(candidate_model, X))


def test_batch_matches_single_rows(
    candidate_model: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    # The server micro-batches requests: batching must not change any answer.
    X, _ = held_out
    one_by_one = np.concatenate([labels(candidate_model, X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_array_equal(labels(candidate_model, X), one_by_one)


def test_signature_names_the_features_in_order(candidate_model: Any) -> None:
    # Requests are validated against this signature; train.py sets the names.
    assert [column["name"] for column in candidate_model.signature["inputs"]] == FEATURES
