"""Helpers for the dashboard tests: start `conveyor ui` as a user would, and stop it whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 90.0
"""Generous: the machine running the suite may be busy."""


@dataclass
class UI:
    url: str
    process: subprocess.Popen[bytes]
    output: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)


def start_ui(root: Path, *args: str, env: dict[str, str] | None = None) -> UI:
    """`conveyor ui --port 0` in `root`; returns once it printed the URL it serves on."""
    output = root.parent / f"ui-{os.getpid()}-{time.monotonic_ns()}.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "conveyor", "ui", "--port", "0", *args], cwd=root,
                                   env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT)
    ui = UI("", process, output)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = output.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("Dashboard at "):
                ui.url = line.split()[2]
                return ui
        if process.poll() is not None or time.monotonic() > deadline:
            ui.stop()
            raise AssertionError(f"conveyor ui did not start (exit {process.poll()}):\n{text}")
        time.sleep(0.05)
