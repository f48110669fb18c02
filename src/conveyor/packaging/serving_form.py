"""The ONNX serving form of a scikit-learn version: converted, verified, stored, recorded.

An image with `package.runtime: onnx` serves the version through onnxruntime
instead of scikit-learn (whose image, with scipy and two OpenBLAS copies, adds
more than 150 MB to the base). The form is a model directory of flavor `onnx`
with the version's own signature and sample rows, content-addressed in the
artifact store like any model directory. It is accepted only when its
predictions equal the original's on the sample rows plus a few hundred rows
generated from them: labels identical, numbers within `RTOL`/`ATOL`.

It is made once, when the line registers the version (or by `conveyor
package` when the line did not): converting imports scikit-learn and
skl2onnx (about 2 s), which must not sit in a model-only rebuild. After that,
packaging only materializes the recorded, digest-checked directory.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError, ObjectMissing
from conveyor.model import (FORMAT_VERSION, METADATA_FILE, LoadedModel, load_model, load_verified, materialize,
                            package_versions)

if TYPE_CHECKING:
    import numpy as np

    from conveyor.registry import ModelVersion, Registry
    from conveyor.store import ArtifactStore

RUNTIMES = ("native", "onnx")
"""What an image can serve a version with: its own flavor, or its ONNX form."""

GENERATED_ROWS = 300
"""Rows generated from the sample rows (seeded) to compare the two forms on, besides the sample itself."""

RTOL = 1e-4
ATOL = 1e-5
"""How far a number (a regression value, a class probability) may move in the conversion."""

_SEED = 20261204


class NotConvertible(ConveyorError):
    """A version that has no faithful ONNX form: not convertible, or converted to different predictions."""

    def __init__(self, ref: str, problem: str) -> None:
        self.ref = ref
        self.problem = problem
        super().__init__(f"{ref} cannot be served by onnxruntime: {problem}; "
                         "package it with package.runtime: native (or --runtime native)")


@dataclass(frozen=True)
class ServingForm:
    """A verified ONNX model directory standing in for a registered version (its `lineage["serving"]`)."""

    runtime: str
    digest: str
    converted_from: str
    rows_checked: int
    max_abs_difference: float
    converter: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for people: `onnx (checked 305 rows, max difference 3e-07)`."""
        return f"{self.runtime} (checked {self.rows_checked} rows, max difference {self.max_abs_difference:.1g})"


def recorded(version: ModelVersion) -> ServingForm | None:
    """The serving form recorded on `version`, if one was made from its current digest."""
    found = version.lineage.get("serving")
    if not isinstance(found, dict) or found.get("converted_from") != version.digest:
        return None
    try:
        return ServingForm(runtime=str(found["runtime"]), digest=str(found["digest"]),
                           converted_from=str(found["converted_from"]), rows_checked=int(found["rows_checked"]),
                           max_abs_difference=float(found["max_abs_difference"]), converter=str(found["converter"]))
    except (KeyError, TypeError, ValueError):  # a hand-edited record is a miss: convert again
        return None


def check_rows(sample: list[list[Any]] | None, signature: dict[str, Any], n: int = GENERATED_ROWS) -> np.ndarray:
    """The sample rows plus `n` rows drawn around them (seeded): each number uniform over its column's
    observed range widened on both sides by the column's magnitude (a handful of sample rows is often
    one class: the checked rows must cross the model's decision boundaries), each string or boolean
    one of those seen."""
    import numpy as np

    from conveyor.signature import sample_rows, to_array

    base = to_array(signature, sample) if sample else sample_rows(signature)
    random = np.random.default_rng(_SEED)
    columns: list[list[Any]] = []
    for index, column in enumerate(signature["inputs"]):
        seen = base[:, index]
        if column["dtype"] in ("float64", "float32", "int64", "int32"):
            low, high = float(np.min(seen.astype(float))), float(np.max(seen.astype(float)))
            margin = max(high - low, abs(low), abs(high)) or 1.0
            drawn = random.uniform(low - margin, high + margin, n)
            columns.append((np.rint(drawn).astype(int) if column["dtype"].startswith("int") else drawn).tolist())
        else:
            columns.append([seen[i].item() if hasattr(seen[i], "item") else seen[i]
                            for i in random.integers(0, len(seen), n)])
    generated = to_array(signature, [list(row) for row in zip(*columns, strict=True)])
    return np.concatenate([base, generated.astype(base.dtype)])


def to_onnx(model: Any, X: np.ndarray) -> Any:
    """skl2onnx's graph of `model` for inputs like `X` (labels as a tensor, not a list of dicts)."""
    from skl2onnx import to_onnx as convert  # type: ignore[import-untyped]
    from sklearn.base import is_classifier

    return convert(model, X[:1], options={"zipmap": False} if is_classifier(model) else None)


def _difference(ref: str, what: str, native: np.ndarray, served: np.ndarray) -> float:
    """The largest absolute difference between two outputs; raise unless they agree."""
    import numpy as np

    if native.shape != served.shape:
        raise NotConvertible(ref, f"its ONNX form answers {what} of shape {served.shape}, the model {native.shape}")
    if native.dtype.kind in "fc":
        difference = np.abs(native.astype(float) - served.astype(float))
        worst = float(np.max(difference)) if difference.size else 0.0
        if not np.allclose(served.astype(float), native.astype(float), rtol=RTOL, atol=ATOL):
            row = int(np.unravel_index(np.argmax(difference), difference.shape)[0])
            raise NotConvertible(ref, f"its ONNX form's {what} differ from the model's by up to {worst:.3g} "
                                      f"(row {row}; allowed rtol {RTOL:g}, atol {ATOL:g})")
        return worst
    wrong = [i for i, (a, b) in enumerate(zip(native.tolist(), served.tolist(), strict=True)) if a != b]
    if wrong:
        raise NotConvertible(ref, f"its ONNX form predicts other {what} on {len(wrong)} of {len(native)} "
                                  f"checked rows (first: row {wrong[0]}, {native[wrong[0]]!r} became "
                                  f"{served[wrong[0]]!r})")
    return 0.0


def _compare(ref: str, native: LoadedModel, served: LoadedModel, X: np.ndarray) -> float:
    """Compare predictions, and class probabilities where both forms give them."""
    import numpy as np

    from conveyor.flavors import onnx as onnx_flavor
    from conveyor.flavors import sklearn as sklearn_flavor

    worst = _difference(ref, "predictions", native.predict_array(X), served.predict_array(X))
    outputs = served.model.get_outputs()
    if callable(getattr(native.model, "predict_proba", None)) and len(outputs) > 1:
        columns = [c["name"] for c in native.signature["inputs"]]
        expected = np.asarray(native.model.predict_proba(sklearn_flavor.as_input(native.model, X, columns)))
        probabilities = onnx_flavor.run(served.model, X, outputs[1].name)
        worst = max(worst, _difference(ref, "class probabilities", expected, probabilities))
    return worst


def _write(directory: Path, graph: Any, native: LoadedModel) -> None:
    """An onnx-flavor model directory with the native model's signature and sample rows."""
    from conveyor.flavors import onnx as onnx_flavor

    directory.mkdir()
    artifact = onnx_flavor.save(graph, directory)
    document = {
        "format": FORMAT_VERSION,
        "flavor": "onnx",
        "artifact": artifact,
        "signature": native.metadata.signature,
        "sample": native.metadata.sample,
        "environment": {"python": platform.python_version(),
                        "packages": package_versions(onnx_flavor.SERVING_PACKAGES)},
    }
    (directory / METADATA_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.chmod(directory, 0o755)


def convert(store: ArtifactStore, models_dir: Path, version: ModelVersion) -> ServingForm:
    """Convert `version` (verified against its digest before it is unpickled) to ONNX, check the
    predictions agree, and put the model directory into `store`. Raises `NotConvertible`."""
    if version.flavor != "sklearn":
        raise NotConvertible(version.ref, f"it is a {version.flavor} model; only scikit-learn models are converted")
    try:
        import onnxruntime  # type: ignore[import-untyped]  # noqa: F401
        import skl2onnx
    except ImportError as exc:
        missing = f"{exc.name or 'skl2onnx'} is not installed here (pip install 'conveyor-ml[onnx-serving]')"
        raise NotConvertible(version.ref, missing) from None
    try:
        native = load_verified(store, models_dir, version.digest)
    except ConveyorError:
        raise
    except Exception as exc:  # unpickling runs the model's classes' code: any error means "not loadable here"
        raise NotConvertible(version.ref, f"it cannot be loaded here ({type(exc).__name__}: {exc})") from None
    X = check_rows(native.metadata.sample, native.signature)
    try:
        graph = to_onnx(native.model, X)
    except Exception as exc:  # skl2onnx raises many types (RuntimeError, NameError, …) for what it cannot convert
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        kind = type(native.model).__name__
        raise NotConvertible(version.ref, f"skl2onnx cannot convert a {kind} ({first})") from None
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=".tmp-onnx-"))
    try:
        _write(staging / "model", graph, native)
        try:
            served = load_model(staging / "model")
        except ConveyorError as exc:  # e.g. a pipeline converted to several inputs: the onnx flavor feeds one
            raise NotConvertible(version.ref, f"its ONNX form cannot be served ({exc})") from None
        try:
            worst = _compare(version.ref, native, served, X)
        except NotConvertible:
            raise
        except Exception as exc:  # onnxruntime's own error classes: the graph cannot run these rows
            raise NotConvertible(version.ref, f"its ONNX form fails on the checked rows ({exc})") from None
        digest = store.put(staging / "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ServingForm(runtime="onnx", digest=digest, converted_from=version.digest, rows_checked=len(X),
                       max_abs_difference=worst, converter=f"skl2onnx {skl2onnx.__version__}")


def ensure(registry: Registry, store: ArtifactStore, models_dir: Path,
           version: ModelVersion) -> tuple[ServingForm, Path, bool]:
    """The version's ONNX form and its verified model directory; made and recorded when there is none yet
    (or its directory left the store). The flag says whether it was made now."""
    form = recorded(version)
    if form is not None:
        try:
            return form, materialize(store, models_dir, form.digest), False
        except ObjectMissing:
            pass
    form = convert(store, models_dir, version)
    registry.record_serving_form(version.name, version.version, form.as_dict())
    return form, materialize(store, models_dir, form.digest), True
