"""Several server processes on one listening socket, forked after the model is loaded.

The parent binds the socket and loads the model once; each forked worker runs
its own event loop on the shared socket (the kernel spreads connections), and
shares the model's memory copy-on-write. A worker that dies is replaced.
SIGTERM/SIGINT stop them all; SIGHUP is passed to every worker (each then
reloads its model), which is how a reload asked of one worker reaches all.

The socket is created with an explicit IPPROTO_TCP so asyncio turns on
TCP_NODELAY for every accepted connection (a socket whose protocol reads 0
is skipped, which is what costs `uvicorn --workers` its latency).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger("conveyor.serving")

_STOP_TIMEOUT_S = 10.0
"""How long stopping workers may take to finish their requests before they are killed."""

_POLL_S = 0.05
"""How often the supervisor looks for workers that exited."""

_RESTART_BACKOFF_S = 1.0
"""Pause before replacing a worker that died within a second of starting (no crash loop at full speed)."""


def run(serve_one: Callable[[socket.socket], None], sock: socket.socket, workers: int) -> None:
    """Run `serve_one(sock)` in `workers` processes (in this one when `workers` is 1) until stopped."""
    if workers <= 1:
        serve_one(sock)
        return
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, started at)
    stopping = False

    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def spawn(slot: int) -> None:
        # Signals wait until the worker has dropped the parent's handlers: one that arrived
        # in between would run the parent's `forward` inside the worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid == 0:  # the worker
            for signum in handled:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            code = 0
            try:
                serve_one(sock)
            except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent replaces it
                log.exception("worker %d failed", slot)
                code = 1
            os._exit(code)
        children[pid] = (slot, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

    supervisor = os.getpid()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if os.getpid() != supervisor:  # a worker that still had this handler: act as the default would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for slot in range(workers):
            spawn(slot)
        log.info("%d workers share the socket (pids %s)", workers, ", ".join(map(str, children)))
        stop_deadline: float | None = None
        while children:
            if stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + _STOP_TIMEOUT_S
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)  # polled: a stop must not wait on a stuck worker
            except ChildProcessError:
                break
            if pid == 0:  # no worker has exited
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("workers %s did not stop within %.0fs; killing them",
                                ", ".join(map(str, children)), _STOP_TIMEOUT_S)
                    for straggler in children:
                        try:
                            os.kill(straggler, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    stop_deadline = float("inf")
                time.sleep(_POLL_S)
                continue
            if pid not in children:
                continue
            slot, started = children.pop(pid)
            if stopping:
                continue
            log.warning("worker %d (pid %d) exited with status %d; replacing it", slot, pid, status)
            if time.monotonic() - started < 1.0:
                time.sleep(_RESTART_BACKOFF_S)
            spawn(slot)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def notify_all() -> None:
    """From inside a worker: ask the parent to pass SIGHUP (reload) to every worker."""
    parent = os.getppid()
    if parent > 1:
        os.kill(parent, signal.SIGHUP)
