"""The worker supervisor: several fresh server processes on one listening socket.

The supervisor binds and listens once, then starts each worker as a fresh
interpreter (`python -m conveyor.serving.worker`) that inherits the socket's
file descriptor; the kernel spreads connections among them, and while any
process holds the socket no connection is refused. A fresh interpreter (not
a fork) picks up new code and dependencies, which is what a rolling restart is
for, and starts with default signal handlers (forked workers inherited the
supervisor's, and a replacement could end up ignoring SIGTERM).

- A worker that dies, `kill -9` included, is replaced, also during start-up;
  a worker that cannot load its model before any worker was ready stops the
  start-up with its reason.
- SIGUSR2 is a rolling restart: one worker at a time, a new one is started
  and only once it reports ready (model loaded and warmed) does the old one
  get SIGTERM, which it answers by draining.
- SIGHUP is passed to every worker (each re-resolves its reference).
- SIGTERM/SIGINT stop every worker, killing those that do not stop in time.

The socket is created with an explicit IPPROTO_TCP so asyncio turns on
TCP_NODELAY for every accepted connection.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from types import FrameType

from conveyor.exceptions import ServingError
from conveyor.serving.worker import CONFIG_ENV, WorkerConfig, record_restart, record_workers

log = logging.getLogger("conveyor.serving")

_STOP_TIMEOUT_S = 10.0
"""How long stopping workers may take to finish their requests before they are killed."""

_POLL_S = 0.05
"""How often the supervisor looks for workers that exited or became ready."""

_RESTART_BACKOFF_S = 1.0
"""Pause before replacing a worker that died within a second of starting (no crash loop at full speed)."""

_RESTART_ATTEMPTS = 3
"""A rolling restart gives up (keeping the old workers) when a slot's new worker fails this many times."""

_BACKLOG = 2048
"""Connections the kernel queues while every worker is busy (or being replaced)."""


@dataclass(eq=False)
class _Worker:
    slot: int
    process: subprocess.Popen[bytes]
    ready_fd: int
    started: float
    ready: bool = False
    superseded: bool = False  # a rolling restart started its successor
    error: str = ""
    _buffer: bytes = field(default=b"", repr=False)


class Supervisor:
    """Starts, watches, replaces and restarts the workers of one server."""

    def __init__(self, config: WorkerConfig, sock: socket.socket, workers: int) -> None:
        self.config = config
        self.sock = sock
        self.count = max(1, workers)
        self.workers: dict[int, _Worker] = {}
        self.retiring: dict[int, tuple[_Worker, float]] = {}  # pid -> (worker, kill deadline)
        self.ever_ready = False
        self.stopping = False
        self.restart_requested = False
        self.hup_requested = False
        self._recorded: list[int] | None = None
        self.generation = 0  # rolling restarts asked for so far
        self._errors: dict[int, str] = {}  # slot -> why its last worker could not serve

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.hup_requested = True
        elif signum == signal.SIGUSR2:
            self.restart_requested = True
        else:
            self.stopping = True

    # -- workers -------------------------------------------------------------------

    def _spawn(self, slot: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        config = replace(self.config, listen_fd=self.sock.fileno(), ready_fd=write_fd, supervisor_pid=os.getpid(),
                         slot=slot)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "conveyor.serving.worker"], cwd=config.project_root,
                env={**os.environ, CONFIG_ENV: config.to_env()}, pass_fds=(self.sock.fileno(), write_fd),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = _Worker(slot, process, read_fd, time.monotonic())
        self.workers[process.pid] = worker
        return worker

    def _read_ready(self, worker: _Worker) -> None:
        if worker.ready_fd < 0:
            return
        try:
            chunk = os.read(worker.ready_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        worker._buffer += chunk
        if worker._buffer.startswith(b"ready\n") and not worker.ready:
            worker.ready = True
            self.ever_ready = True
            log.info("worker %d (pid %d) is ready", worker.slot, worker.process.pid)
        elif worker._buffer.startswith(b"error ") and worker._buffer.endswith(b"\n"):
            worker.error = worker._buffer[6:].decode("utf-8", "replace").strip()

    def _close(self, worker: _Worker) -> None:
        if worker.ready_fd < 0:
            return  # closed already: its number may belong to another worker's pipe by now
        try:
            os.close(worker.ready_fd)
        except OSError:
            pass
        worker.ready_fd = -1

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            worker.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def tick(self, timeout_s: float = _POLL_S) -> None:
        """Note ready workers, replace dead ones, kill retiring ones that overstay; wait up to `timeout_s`."""
        pending = [w for w in self.workers.values() if not w.ready and not w.error]
        if pending:
            readable, _, _ = select.select([w.ready_fd for w in pending], [], [], timeout_s)
            for worker in pending:
                if worker.ready_fd in readable:
                    self._read_ready(worker)
        else:
            time.sleep(timeout_s)
        if self.hup_requested:
            self.hup_requested = False
            for worker in self.workers.values():
                if worker.ready:
                    self._signal(worker, signal.SIGHUP)
        now = time.monotonic()
        for pid, (worker, deadline) in list(self.retiring.items()):
            if worker.process.poll() is not None:
                del self.retiring[pid]
                self._close(worker)
            elif now > deadline:
                log.warning("worker %d (pid %d) did not stop within %.0fs; killing it", worker.slot, pid,
                            _STOP_TIMEOUT_S)
                self._signal(worker, signal.SIGKILL)
                self.retiring[pid] = (worker, float("inf"))
        for pid, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del self.workers[pid]
            self._read_ready(worker)
            self._close(worker)
            if self.stopping:
                continue
            if worker.error and not self.ever_ready:
                self.stopping = True
                raise ServingError(worker.error)
            if worker.superseded:
                continue  # its successor is already there
            log.warning("worker %d (pid %d) exited with status %d; replacing it", worker.slot, pid, code)
            if now - worker.started < 1.0:
                time.sleep(_RESTART_BACKOFF_S)
            self._errors[worker.slot] = worker.error
            self._spawn(worker.slot)
        self._record_ready()

    def _last_error(self, slot: int) -> str:
        return self._errors.get(slot, "")

    def _record_ready(self) -> None:
        """Tell the workers which of them answer now (a reload waits until all of those serve the new version)."""
        ready = sorted(pid for pid, w in self.workers.items() if w.ready)
        if ready != self._recorded and self.config.served_dir is not None:
            record_workers(self.config.served_dir, ready)
            self._recorded = ready

    def _record_restart(self, state: str, reason: str = "") -> None:
        if self.config.served_dir is not None:
            record_restart(self.config.served_dir, {"generation": self.generation, "state": state, "reason": reason})

    def rolling_restart(self) -> bool:
        """Replace every worker, one at a time, each new one ready before the old one is stopped."""
        self.generation += 1
        self._record_restart("running")
        old = set(self.workers)
        done = self._replace_all()
        while done and old & set(self.retiring) and not self.stopping:
            self.tick()  # "done" once the old workers have finished what they accepted and exited
        if done:
            self._record_restart("done")
        return done

    def _replace_all(self) -> bool:
        log.info("rolling restart of %d worker(s)", len(self.workers))
        for slot in sorted({w.slot for w in self.workers.values()}):
            old = [w for w in self.workers.values() if w.slot == slot]
            for worker in old:
                worker.superseded = True
            self._spawn(slot)
            failures = 0
            while not any(w.slot == slot and not w.superseded and w.ready for w in self.workers.values()):
                if self.stopping:
                    self._record_restart("failed", "the server is stopping")
                    return False
                starting = {pid for pid, w in self.workers.items() if w.slot == slot and not w.superseded}
                self.tick()  # replaces a successor that died, like any worker
                failures += len(starting - set(self.workers))
                if failures >= _RESTART_ATTEMPTS and any(w.process.poll() is None for w in old):
                    reason = (f"a new worker {slot} failed {failures} times to start; the old workers keep "
                              f"serving{': ' + last_error if (last_error := self._last_error(slot)) else ''}")
                    log.error("rolling restart stopped: %s", reason)
                    self._record_restart("failed", reason)
                    for worker in self.workers.values():
                        if worker.slot == slot:
                            worker.superseded = worker not in old
                            if worker.superseded:
                                self._signal(worker, signal.SIGKILL)
                    return False
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            for worker in old:
                if worker.process.poll() is None:
                    self._signal(worker, signal.SIGTERM)
                self.workers.pop(worker.process.pid, None)
                self.retiring[worker.process.pid] = (worker, deadline)
            self._record_ready()
        log.info("rolling restart done: workers %s", ", ".join(map(str, self.workers)))
        return True

    def _stop_all(self) -> None:
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for pid, worker in list(self.workers.items()):
            self._signal(worker, signal.SIGTERM)
            self.retiring[pid] = (worker, deadline)
        self.workers.clear()
        while self.retiring:
            self.tick()

    def run(self) -> None:
        """Start the workers and supervise them until SIGTERM/SIGINT."""
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            self.sock.listen(_BACKLOG)
            for slot in range(self.count):
                self._spawn(slot)
            log.info("%d worker(s) starting on one socket (pids %s)", self.count, ", ".join(map(str, self.workers)))
            while not self.stopping:
                self.tick()
                if self.restart_requested and not self.stopping:
                    self.restart_requested = False
                    self.rolling_restart()
        finally:
            self.stopping = True
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def run(config: WorkerConfig, sock: socket.socket, workers: int) -> None:
    """Serve with `workers` worker processes on `sock` until SIGTERM/SIGINT (see `Supervisor`)."""
    Supervisor(config, sock, workers).run()
