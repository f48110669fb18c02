"""The pyfunc flavor: a model that is a class of the project's own code.

The model handed to `save_model` is a reference `"package.module:ClassName"`
(or a `Reference`, to also save a directory of artifacts). The class has a
`load(path)` classmethod or staticmethod returning an instance, and the
instance a `predict(X)` taking a 2-D numpy array and returning one prediction
per row. `load` is given the model's artifacts directory (the saved copy;
while saving, the directory given), or None when the model has none.

The model directory holds the reference and the artifacts, not the code:
loading imports the module and runs it, which is the point of this flavor.
So the module must be importable where the model is loaded (the project
installed, or its directory on PYTHONPATH), and the model directory's digest
covers the artifacts but not the code, which is versioned by its git commit.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    import numpy as np

ARTIFACT = "pyfunc.json"
ARTIFACTS_DIR = "artifacts"
PACKAGES = ("numpy",)

_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Reference:
    """A pyfunc model: `target` is `"package.module:ClassName"`, `artifacts` a directory copied beside it."""

    target: str
    artifacts: str | Path | None = None


class BadReference(ConveyorError):
    """A pyfunc reference that cannot be resolved to a usable class."""

    def __init__(self, target: str, problem: str, fix: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"pyfunc model '{target}': {problem}; {fix}")


def _reference(model: Any) -> Reference:
    if isinstance(model, str):
        return Reference(model)
    if isinstance(model, Reference):
        return model
    raise ConveyorError(
        f"a {type(model).__name__} is not a pyfunc model; the pyfunc flavor takes a reference "
        "'package.module:ClassName' (or conveyor.flavors.pyfunc.Reference(target, artifacts=dir)) "
        "to a class with load(path) and predict(X)"
    )


def resolve(target: str) -> Any:
    """Import the module of `target` (running its code) and return the class it names."""
    if not _REFERENCE.match(target):
        raise BadReference(target, "not a reference of the form 'package.module:ClassName'",
                           "write the module's import path, a colon, then the class name")
    module_name, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the module is the project's code: any error in it means "not importable"
        raise BadReference(
            target, f"module {module_name} not importable ({type(exc).__name__}: {exc})",
            "install the project (pip install -e .) or put its directory on PYTHONPATH where the model is loaded",
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadReference(target, f"module {module_name} has no attribute {part}",
                               "check the class name after the colon") from None
    if not isinstance(obj, type):
        raise BadReference(target, f"{qualname} is a {type(obj).__name__}, not a class",
                           "point the reference at a class with load(path) and predict(X)")
    for method, fix in (("load", "add a classmethod load(cls, path) returning an instance"),
                        ("predict", "add a method predict(self, X) returning one prediction per row")):
        if not callable(getattr(obj, method, None)):
            raise BadReference(target, f"{qualname} has no {method}", fix)
    return obj


def _artifacts(reference: Reference) -> Path | None:
    if reference.artifacts is None:
        return None
    source = Path(reference.artifacts)
    if not source.is_dir():
        raise BadReference(reference.target, f"artifacts {source} is not a directory",
                           "pass the directory holding the files load(path) reads")
    return source


def _instance(cls: Any, target: str, artifacts: Path | None) -> Any:
    instance = cls.load(artifacts)
    if not callable(getattr(instance, "predict", None)):
        raise BadReference(target, f"{cls.__qualname__}.load returned a {type(instance).__name__} with no predict",
                           "return an instance of the class from load")
    return instance


def check(model: Any) -> None:
    """Refuse a reference that does not name a class with `load` and `predict` (imports its module)."""
    reference = _reference(model)
    resolve(reference.target)
    _artifacts(reference)


def save(model: Any, directory: Path) -> str:
    """Write the reference (and a copy of the artifacts) into `directory`; return the artifact's name."""
    reference = _reference(model)
    source = _artifacts(reference)
    if source is not None:
        shutil.copytree(source, directory / ARTIFACTS_DIR)
    document = {"reference": reference.target, "artifacts": ARTIFACTS_DIR if source is not None else None}
    (directory / ARTIFACT).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return ARTIFACT


def load(path: Path) -> Any:
    """Import the referenced class (running the project's code) and call its `load` on the artifacts."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        target, artifacts = document["reference"], document.get("artifacts")
    except (ValueError, KeyError, TypeError):
        raise ConveyorError(f"{path} is not a pyfunc reference file; save the model again") from None
    if not isinstance(target, str) or not (artifacts is None or isinstance(artifacts, str)):
        raise ConveyorError(f"{path}: 'reference' and 'artifacts' must be strings; save the model again")
    directory = None if artifacts is None else path.parent / artifacts
    if directory is not None and (directory.parent != path.parent or not directory.is_dir()):
        raise ConveyorError(f"{path}: artifacts directory {artifacts!r} is missing; save the model again")
    return _instance(resolve(target), target, directory)


def predict(model: Any, X: np.ndarray, columns: list[str]) -> np.ndarray:
    """The instance's predictions for `X` as a numpy array.

    `model` is a loaded instance, or (while `save_model` infers the signature)
    a reference, loaded here from the artifacts directory given.
    """
    import numpy as np

    if isinstance(model, (str, Reference)):
        reference = _reference(model)
        model = _instance(resolve(reference.target), reference.target, _artifacts(reference))
    return np.asarray(model.predict(X))
