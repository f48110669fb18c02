"""The container target: run a model image beside the one serving, switch only when it is ready.

Blue/green on two host ports (`port` and `port + 1`): the new container starts
on the port the serving one does not use and must answer `/readyz` before the
old one is stopped. Stopped containers are kept (the newest `keep` of them), so
a rollback is `start` + the same readiness check, with no pull and no build.
Containers are found by the label `io.conveyor.deployment=NAME`; podman or docker.

A new model version whose image differs only in the model layer does not need
a new container: `hot_swap` copies its model into a directory the serving
container mounts read-only and asks its server to `/-/deploy` it (bearer token),
so the old version answers until the new one is loaded and warmed, on the same
port, and no request is dropped. Each container has its own such directory
under the project's `.conveyor/containers/DEPLOYMENT/`, with `current` (what a
restarted container serves) and `history` (what a rollback swaps back to).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from conveyor import auth
from conveyor.exceptions import ConveyorError
from conveyor.packaging import runtime
from conveyor.packaging.context import copy_readable
from conveyor.packaging.package import LABEL_PREFIX, SHARED_LAYERS_LABEL

LABEL = "io.conveyor.deployment"
"""Label naming the deployment a container belongs to."""

_PORT_LABEL = "io.conveyor.port"


class ContainerDeployError(ConveyorError):
    """A container did not become ready; the serving one was left as it was."""

    def __init__(self, deployment: str, container: str, problem: str, logs: str) -> None:
        tail = "\n".join(logs.strip().splitlines()[-10:])
        super().__init__(f"deployment '{deployment}': container {container} {problem}; the one serving before "
                         f"keeps serving. Its log ends:\n{tail}")


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    port: int
    running: bool
    created: str
    labels: dict[str, str] = field(default_factory=dict)  # the image's labels and Conveyor's own

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def baked_ref(self) -> str:
        """The model version baked into the container's image (NAME@VERSION)."""
        return f"{self.labels.get(f'{LABEL_PREFIX}.name', '?')}@{self.labels.get(f'{LABEL_PREFIX}.version', '?')}"

    @property
    def shared_layers_key(self) -> str | None:
        """Key of the image's shared layers (`conveyor.packaging.package.SHARED_LAYERS_LABEL`)."""
        return self.labels.get(SHARED_LAYERS_LABEL)


@dataclass(frozen=True)
class Switch:
    """What a deploy or rollback did: the container now serving, and the one it replaced."""

    deployment: str
    serving: Container
    replaced: Container | None


def _engine(engine: str, *args: str, check: bool = True) -> str:
    try:
        done = subprocess.run([engine, *args], capture_output=True, text=True, check=False, timeout=300)
    except FileNotFoundError:
        raise ConveyorError(f"{engine} is not installed: the container target runs images with podman or docker "
                            "(deploy.container.engine)") from None
    if check and done.returncode != 0:
        raise ConveyorError(f"{engine} {args[0]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def containers(deployment: str, *, engine: str = "podman") -> list[Container]:
    """The deployment's containers, newest first."""
    found: list[Container] = []
    for name in _engine(engine, "ps", "-a", "--filter", f"label={LABEL}={deployment}", "--format",
                        "{{.Names}}").split():
        info = json.loads(_engine(engine, "inspect", name))[0]
        labels = info.get("Config", {}).get("Labels") or {}
        found.append(Container(name=name, image=str(info.get("ImageName") or info.get("Config", {}).get("Image")),
                               port=int(labels.get(_PORT_LABEL, 0)), running=bool(info["State"]["Running"]),
                               created=str(info.get("Created")), labels={str(k): str(v) for k, v in labels.items()}))
    return sorted(found, key=lambda c: c.created, reverse=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(deployment: str, container: Container, engine: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ready(container.url):
            return
        state = json.loads(_engine(engine, "inspect", container.name))[0]["State"]
        if not state.get("Running"):
            logs = subprocess.run([engine, "logs", container.name], capture_output=True, text=True, check=False)
            raise ContainerDeployError(deployment, container.name, f"exited (code {state.get('ExitCode')})",
                                       logs.stdout + logs.stderr)
        time.sleep(0.5)
    logs = subprocess.run([engine, "logs", container.name], capture_output=True, text=True, check=False)
    raise ContainerDeployError(deployment, container.name, f"did not answer /readyz within {timeout_s:.0f} s",
                               logs.stdout + logs.stderr)


def _prune(deployment: str, engine: str, keep: int, state_dir: Path | None = None) -> None:
    stopped = [c for c in containers(deployment, engine=engine) if not c.running]
    for old in stopped[keep:]:
        _engine(engine, "rm", "--force", old.name, check=False)
        if state_dir is not None:
            shutil.rmtree(swap_dir(state_dir, deployment, old.name), ignore_errors=True)


def _deployment_dir(state_dir: Path, deployment: str) -> Path:
    return state_dir / "containers" / deployment


def swap_dir(state_dir: Path, deployment: str, container: str) -> Path:
    """The directory `container` mounts at `runtime.SWAPPED_DIR` (read-only)."""
    return _deployment_dir(state_dir, deployment) / container


def token(state_dir: Path, deployment: str) -> str:
    """The deployment's management token (created on first use, mode 0600)."""
    return auth.load_or_create_token(_deployment_dir(state_dir, deployment) / "token")


def deploy(image: str, *, deployment: str, port: int, engine: str = "podman", timeout_s: float = 120.0,
           keep: int = 2, state_dir: Path | None = None) -> Switch:
    """Run `image` as the deployment's new container; stop the old one only once the new is ready.

    With `state_dir` (the project's), the container gets a management token and a directory for
    hot swaps; without, its management endpoints are off and it serves its baked model only.
    """
    current = next((c for c in containers(deployment, engine=engine) if c.running), None)
    new_port = port + 1 if current is not None and current.port == port else port
    name = f"{deployment}-{uuid.uuid4().hex[:8]}"
    extra: list[str] = []
    env = dict(os.environ)
    if state_dir is not None:
        mounted = swap_dir(state_dir, deployment, name)
        mounted.mkdir(parents=True)
        mounted.chmod(0o755)  # read by the image's non-root user
        env["CONVEYOR_SERVER_TOKEN"] = token(state_dir, deployment)
        # `-e NAME` without a value: the token comes from our environment, never from argv (ps shows argv).
        extra = ["-v", f"{mounted}:{runtime.SWAPPED_DIR}:ro", "-e", "CONVEYOR_SERVER_TOKEN"]
    done = subprocess.run([engine, "run", "-d", "--init", "--name", name, "--label", f"{LABEL}={deployment}",
                           "--label", f"{_PORT_LABEL}={new_port}", "-p", f"127.0.0.1:{new_port}:{runtime.PORT}",
                           *extra, image], capture_output=True, text=True, check=False, timeout=300, env=env)
    started = Container(name, image, new_port, True, "")
    try:
        if done.returncode != 0:
            raise ConveyorError(f"{engine} run failed: {done.stderr.strip()[-500:]}")
        _wait_ready(deployment, started, engine, timeout_s)
    except ConveyorError:
        _engine(engine, "rm", "--force", name, check=False)
        if state_dir is not None:
            shutil.rmtree(swap_dir(state_dir, deployment, name), ignore_errors=True)
        raise
    if current is not None:
        _engine(engine, "stop", "--time", "30", current.name)
    _prune(deployment, engine, keep, state_dir)
    return Switch(deployment, next(c for c in containers(deployment, engine=engine) if c.name == name), current)


@dataclass(frozen=True)
class Swap:
    """What a hot swap did: the container, and the version it served before and serves now."""

    deployment: str
    container: Container
    before: str
    after: str
    changed: bool


def _publish(dest: Path, text: str) -> None:
    """Write a small file the container's user can read, atomically (a reader sees old or new)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def history(state_dir: Path, deployment: str, container: Container) -> list[str]:
    """The versions swapped into `container`, oldest first, starting with its baked one ([] if none)."""
    try:
        found = json.loads((swap_dir(state_dir, deployment, container.name) / "history").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(ref) for ref in found] if isinstance(found, list) else []


def serving_ref(state_dir: Path | None, deployment: str, container: Container) -> str:
    """The version `container` serves: the one swapped in last, else its baked one."""
    swapped = history(state_dir, deployment, container) if state_dir is not None else []
    return swapped[-1] if swapped else container.baked_ref


def _ask_to_serve(container: Container, ref: str, secret: str, timeout_s: float) -> bool:
    """POST /-/deploy to the container's server; True if it swapped (False: it already served `ref`)."""
    request = urllib.request.Request(f"{container.url}/-/deploy", data=json.dumps({"ref": ref}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {secret}",
                                                             "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = str(json.loads(detail).get("error") or detail)
        except (ValueError, AttributeError):
            pass
        raise ConveyorError(f"container {container.name} refused to serve {ref} (HTTP {exc.code}): {detail}; "
                            "it keeps serving what it served") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConveyorError(f"cannot reach container {container.name} at {container.url}: {exc}") from None
    return bool(body.get("changed", True))


def hot_swap(deployment: str, app_dir: Path, ref: str, *, state_dir: Path, engine: str = "podman",
             timeout_s: float = 120.0) -> Swap:
    """Serve `ref` (NAME@VERSION, its image's `app/` directory at `app_dir`) in the running container.

    The caller checks that the version's image has the running one's `shared_layers_key`: the container
    already has every package the model needs. The model is re-hashed by the container before it
    is loaded; the old version answers until the new one is warm.
    """
    running = next((c for c in containers(deployment, engine=engine) if c.running), None)
    if running is None:
        raise ConveyorError(f"deployment '{deployment}' has no running container to swap a model into")
    mounted = swap_dir(state_dir, deployment, running.name)
    if not mounted.is_dir():
        raise ConveyorError(f"container {running.name} was not started by `conveyor deploy --target container` "
                            "(it mounts no swap directory); deploy its image again to replace it")
    before = serving_ref(state_dir, deployment, running)
    dest = mounted / ref
    if not (dest / Path(runtime.VERSION_FILE).name).is_file():
        staging = Path(tempfile.mkdtemp(dir=mounted, prefix=".tmp-"))
        try:
            copy_readable(app_dir / Path(runtime.MODEL_DIR).name, staging / "model")
            shutil.copy2(app_dir / Path(runtime.VERSION_FILE).name, staging / Path(runtime.VERSION_FILE).name)
            os.chmod(staging, 0o755)
            shutil.rmtree(dest, ignore_errors=True)  # a copy left incomplete by a crash
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    changed = _ask_to_serve(running, ref, token(state_dir, deployment), timeout_s)
    swapped = history(state_dir, deployment, running) or [running.baked_ref]
    if swapped[-1] != ref:
        swapped.append(ref)
    _publish(mounted / "history", json.dumps(swapped) + "\n")
    _publish(mounted / runtime.CURRENT_FILE, ref + "\n")
    return Swap(deployment, running, before, ref, changed)


def rollback(deployment: str, *, engine: str = "podman", timeout_s: float = 120.0,
             state_dir: Path | None = None) -> Switch | Swap:
    """Undo the last change: swap the running container back to the version it served before the
    last hot swap, else start the newest stopped container again and, once ready, stop the serving one."""
    if state_dir is not None:
        running = next((c for c in containers(deployment, engine=engine) if c.running), None)
        swapped = history(state_dir, deployment, running) if running is not None else []
        if running is not None and len(swapped) >= 2:
            previous = swapped[-2]
            changed = _ask_to_serve(running, previous, token(state_dir, deployment), timeout_s)
            mounted = swap_dir(state_dir, deployment, running.name)
            _publish(mounted / "history", json.dumps(swapped[:-1]) + "\n")
            _publish(mounted / runtime.CURRENT_FILE, previous + "\n")
            return Swap(deployment, running, swapped[-1], previous, changed)
    return _restart_previous(deployment, engine=engine, timeout_s=timeout_s)


def _restart_previous(deployment: str, *, engine: str, timeout_s: float) -> Switch:
    found = containers(deployment, engine=engine)
    current = next((c for c in found if c.running), None)
    previous = next((c for c in found if not c.running), None)
    if previous is None:
        raise ConveyorError(f"deployment '{deployment}' has no stopped container to roll back to")
    if current is not None and current.port == previous.port:
        raise ConveyorError(f"deployment '{deployment}': {previous.name} and {current.name} use the same port")
    _engine(engine, "start", previous.name)
    try:
        _wait_ready(deployment, previous, engine, timeout_s)
    except ConveyorError:
        _engine(engine, "stop", "--time", "10", previous.name, check=False)
        raise
    if current is not None:
        _engine(engine, "stop", "--time", "30", current.name)
    return Switch(deployment, previous, current)
