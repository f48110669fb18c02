"""Split data/iris.csv into a training set and a held-out test set.

The split is stratified (every class keeps the same share in both sets) and
depends only on params.yaml, so the same parameters give the same files and
Conveyor can restore this stage from its cache.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

SOURCE = Path("data/iris.csv")
OUT_DIR = Path("data/prepared")


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["prepare"]
    test_size = float(params["test_size"])
    seed = int(params["seed"])

    with SOURCE.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    labels = np.array([int(row[-1]) for row in rows])

    rng = np.random.default_rng(seed)
    test_rows: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_rows.extend(members[: round(len(members) * test_size)].tolist())
    in_test = np.zeros(len(rows), dtype=bool)
    in_test[test_rows] = True

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, mask in (("train.csv", ~in_test), ("test.csv", in_test)):
        with (OUT_DIR / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(row for row, keep in zip(rows, mask) if keep)
    print(f"prepare: {int((~in_test).sum())} train rows, {int(in_test.sum())} test rows (seed {seed})")


if __name__ == "__main__":
    main()
