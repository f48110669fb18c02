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

UI_PORT = 8100
"""Port of the dashboard (`conveyor ui`)."""

UI_HOST = "127.0.0.1"
"""Interface the dashboard binds to; loopback unless asked, as it shows the whole project."""
WATCH_INTERVAL_S = 30.0
"""How often `conveyor watch` looks for new commits on the branch."""
FOLLOW_INTERVAL_S = 1.0
"""How often a server that follows an alias (`iris@production`) asks the registry where it points;
a rollback is live within this interval plus the time to swap (a cached version swaps at once)."""

DEPLOY_WORKERS = 2
"""Worker processes of the managed local deployment (`deploy.workers`): with two, a rolling restart
or a killed worker always leaves one answering."""

KEPT_VERSIONS = 3
"""Model versions a server worker keeps loaded (the one serving and those before it), so that a
rollback to one of them is a swap, not a load."""

RELOAD_IN_STEP_TIMEOUT_S = 20.0
"""How long a reload asked of one worker waits for the others to serve the same version before it answers."""

STRATEGY = "replace"
"""How `conveyor deploy` puts a new version live: replace (hot swap), canary or shadow."""

CANARY_STEPS = (10.0, 50.0, 100.0)
"""Percent of traffic a canary gets, step by step."""

CANARY_INTERVAL_S = 30.0
"""How long each canary step lasts before it is judged passed."""

CANARY_MIN_REQUESTS = 20
"""Requests a canary must have answered in a step before it can be judged."""

CANARY_MAX_ERROR_RATE = 0.01
"""Share of a canary's predictions that may fail before it is rolled back."""

CANARY_PATIENCE_S = 60.0
"""How much longer than its interval a step waits for enough requests before the canary is rolled back."""

SHADOW_SHARE = 100.0
"""Percent of requests copied to a shadow candidate."""
GC_KEEP_LAST_RUNS = 10
"""Runs whose stage outs `conveyor gc` keeps (`--keep-last`); registered versions and tracked data are always kept."""

REMOTE_JOBS = 8
"""Batches of objects a push or pull keeps in flight (`--jobs`)."""

CONTAINER_READY_TIMEOUT_S = 120.0
"""How long the container target waits for a new container to answer /readyz."""
