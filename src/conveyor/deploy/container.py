"""The container target: run a model image beside the one serving, switch only when it is ready.

Blue/green on two host ports (`port` and `port + 1`): the new container starts
on the port the serving one does not use and must answer `/readyz` before the
old one is stopped. Stopped containers are kept (the newest `keep` of them), so
a rollback is `start` + the same readiness check, with no pull and no build.
Containers are found by the label `io.conveyor.deployment=NAME`; podman or docker.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from conveyor.exceptions import ConveyorError

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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Switch:
    """What a deploy or rollback did: the container now serving, and the one it replaced."""

    deployment: str
    serving: Container
    replaced: Container | None


def _engine(engine: str, *args: str, check: bool = True) -> str:
    done = subprocess.run([engine, *args], capture_output=True, text=True, check=False, timeout=300)
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
                               created=str(info.get("Created"))))
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


def _prune(deployment: str, engine: str, keep: int) -> None:
    stopped = [c for c in containers(deployment, engine=engine) if not c.running]
    for old in stopped[keep:]:
        _engine(engine, "rm", "--force", old.name, check=False)


def deploy(image: str, *, deployment: str, port: int, engine: str = "podman", timeout_s: float = 120.0,
           keep: int = 2) -> Switch:
    """Run `image` as the deployment's new container; stop the old one only once the new is ready."""
    current = next((c for c in containers(deployment, engine=engine) if c.running), None)
    new_port = port + 1 if current is not None and current.port == port else port
    name = f"{deployment}-{uuid.uuid4().hex[:8]}"
    _engine(engine, "run", "-d", "--init", "--name", name, "--label", f"{LABEL}={deployment}",
            "--label", f"{_PORT_LABEL}={new_port}", "-p", f"127.0.0.1:{new_port}:8080", image)
    started = Container(name, image, new_port, True, "")
    try:
        _wait_ready(deployment, started, engine, timeout_s)
    except ConveyorError:
        _engine(engine, "rm", "--force", name, check=False)
        raise
    if current is not None:
        _engine(engine, "stop", "--time", "30", current.name)
    _prune(deployment, engine, keep)
    return Switch(deployment, next(c for c in containers(deployment, engine=engine) if c.name == name), current)


def rollback(deployment: str, *, engine: str = "podman", timeout_s: float = 120.0) -> Switch:
    """Start the newest stopped container again and, once ready, stop the serving one."""
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
