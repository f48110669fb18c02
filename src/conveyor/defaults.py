"""Tunables and their documented defaults.

Settings are resolved once, at the edge (CLI flag > `CONVEYOR_*` environment
variable > `conveyor.yaml` > the value here); library code takes them as
arguments.
"""

from __future__ import annotations

import os

CONFIG_FILE = "conveyor.yaml"
"""Name of the project file at the root of a repository."""

STATE_DIR = ".conveyor"
"""Per-project directory for the cache, registry, runs and server state (git-ignored)."""

PARAMS_FILE = "params.yaml"
"""File whose keys a stage's `params` name (dotted paths, as in DVC)."""

BRANCH = "main"
"""Branch on which a passing line promotes to production and deploys."""

PORT = 8000
"""Port of the local model server."""

HOST = "127.0.0.1"
"""Interface the local model server binds to."""

JOBS = 1
"""Stages run at once when the graph allows it (`--jobs`)."""

SERVER_START_TIMEOUT_S = 60.0
"""How long `deploy` waits for a started server to answer /readyz."""

MAX_REQUEST_BYTES = 10 * 1024 * 1024
"""Largest prediction request body the server accepts."""

LOG_TAIL_LINES = 20
"""Lines of a failed step's log shown by `conveyor run` and `conveyor runs show`."""

PRODUCTION_ALIAS = "production"
"""Alias the line promotes to and the local server follows."""

WORKERS = os.cpu_count() or 1
"""Server processes sharing the listening socket (`conveyor serve --workers`): one per core.
A reload asked of one worker reaches the others through the parent a moment later, so the
line's managed local deployment, which checks what a reload answered, runs one."""

MAX_BATCH_ROWS = 64
"""Most rows the micro-batcher puts in one predict call."""

MAX_BATCH_WAIT_MS = 2.0
"""Longest the micro-batcher waits for more requests when others are in flight."""

GC_KEEP_LAST_RUNS = 10
"""Runs whose stage outs `conveyor gc` keeps (`--keep-last`); registered versions and tracked data are always kept."""

REMOTE_JOBS = 8
"""Batches of objects a push or pull keeps in flight (`--jobs`)."""
