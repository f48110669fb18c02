"""Every error Conveyor raises on purpose derives from `ConveyorError`.

The CLI prints such an error as one line (`Error: …`) and exits non-zero; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class ConveyorError(Exception):
    """Base class: a message that says what went wrong, where, and how to fix it."""

    exit_code = 1


class ConfigError(ConveyorError):
    """`conveyor.yaml` (or a file it names) is invalid."""

    def __init__(self, path: str, problems: Sequence[tuple[int | None, str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = []
        for line, key, message in self.problems:
            where = f"{path}:{line}" if line else path
            lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        super().__init__("\n".join(lines))


class NotAProjectError(ConveyorError):
    """No `conveyor.yaml` was found."""

    def __init__(self, start: str) -> None:
        super().__init__(
            f"no conveyor.yaml in {start} or any parent directory; "
            "run `conveyor init` to create one"
        )


class IntegrityError(ConveyorError):
    """Stored content does not match its digest."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{what} is corrupt: expected digest {expected[:16]}…, got {actual[:16]}…"
        )


class ObjectMissing(ConveyorError):
    """An object is not in the artifact store."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"object {digest} is not in the artifact store")


class LockBusy(ConveyorError):
    """Another process holds the project lock."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(
            f"another conveyor run holds {path} ({holder}); "
            "wait for it to finish, or pass --wait SECONDS to queue behind it"
        )


class DirtyWorkingTree(ConveyorError):
    """The git working tree has uncommitted changes."""

    def __init__(self, paths: Sequence[str]) -> None:
        shown = ", ".join(paths[:5]) + (" …" if len(paths) > 5 else "")
        super().__init__(
            f"the working tree has uncommitted changes ({shown}); "
            "commit them, or pass --allow-dirty to run anyway (the model is marked dirty)"
        )


class ModelNotFound(ConveyorError):
    """A model reference names no registered version."""

    def __init__(self, ref: str, hint: str = "") -> None:
        super().__init__(f"no model version matches '{ref}'" + (f"; {hint}" if hint else ""))


class RegistryError(ConveyorError):
    """The registry refused an operation."""


class PayloadError(ConveyorError):
    """A prediction request does not match the model's signature."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ServingError(ConveyorError):
    """The model server could not be started, reached or switched."""


class RunNotFound(ConveyorError):
    """No run has the given id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run '{run_id}'; `conveyor runs list` shows the runs")


class BadDigest(ConveyorError):
    """A name that should be an object digest is not one (a crafted or damaged pointer)."""

    def __init__(self, digest: str) -> None:
        shown = digest if len(digest) <= 80 else digest[:77] + "..."
        super().__init__(f"'{shown}' is not an object digest (64 hex digits, optionally '.dir'); "
                         "the pointer or manifest that names it is damaged")


class RemoteError(ConveyorError):
    """A remote could not be reached or refused an operation (credentials are never shown)."""
