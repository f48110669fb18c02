"""One line at a time per repository: an advisory lock on `.conveyor/run.lock`.

`fcntl.flock` rather than the filelock package: it costs nothing to import
(filelock pulls in asyncio, +50 ms on every run) and the kernel releases it
when its holder dies, even by `kill -9`, so there is never a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conveyor.exceptions import LockBusy

_POLL_S = 0.2
_held: list[int] = []


def held_fds() -> tuple[int, ...]:
    """Descriptors of the locks this process holds, for commands it starts to inherit.

    A stage command that inherits the lock keeps it held while it runs, so a
    `kill -9` of `conveyor run` cannot let a new run start beside an orphaned
    stage that is still writing its outs.
    """
    return tuple(_held)


@contextmanager
def project_lock(path: Path, holder: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock for the block; wait up to `wait_s` seconds, then raise `LockBusy`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    current = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise LockBusy(str(path), current or "unknown holder") from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}, pid {os.getpid()}".encode(), 0)
        _held.append(fd)
        try:
            yield
        finally:
            _held.remove(fd)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
