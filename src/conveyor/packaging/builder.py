"""Image builders: podman, buildah or docker, driven through their command lines.

Each is asked for the same things: build a context into an image id, list an
image's layer digests, tag, and push (returning the pushed manifest digest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from conveyor.exceptions import ConveyorError

BUILDERS = ("podman", "buildah", "docker")
"""Builders in the order `--builder auto` tries them."""


class BuildError(ConveyorError):
    """A builder command failed; the message ends with the tail of its output."""

    def __init__(self, what: str, command: list[str], output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-8:])
        super().__init__(f"{what} failed ({' '.join(command[:3])} …):\n{tail}")


def _docker_works() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def detect(preferred: str = "auto") -> str | None:
    """The builder to use: `preferred` when installed, else the first of BUILDERS that is; None when none is."""
    if preferred != "auto":
        if shutil.which(preferred) is None:
            raise ConveyorError(f"builder '{preferred}' is not installed; install it, or pass --builder auto "
                                "(or --no-build to only write the build context)")
        return preferred
    for name in BUILDERS:
        if shutil.which(name) and (name != "docker" or _docker_works()):
            return name
    return None


def _run(what: str, command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(what, command, done.stdout + done.stderr)
    return done.stdout


def build(builder: str, context: Path, tag: str, *, use_cache: bool = True, dockerfile: str = "Dockerfile",
          intermediate: bool = True) -> str:
    """Build `context` (its Dockerfile) as `tag`; return the image id (sha256:…).

    `use_cache=False` rebuilds every layer (what a first build costs; the benchmark's baseline).
    `intermediate=False` commits only the final image, not one per instruction (podman, buildah):
    for a Dockerfile adding one layer, the same image, made faster."""
    with tempfile.TemporaryDirectory(prefix="conveyor-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        if builder == "docker":
            command = ["docker", "build", "--iidfile", str(iidfile), "-t", tag, "-f", str(context / dockerfile),
                       str(context)]
        else:
            # docker format: the OCI image format has no HEALTHCHECK.
            verb = ["build", f"--layers={'true' if intermediate else 'false'}"]
            command = [builder, *verb, "--format", "docker", "--iidfile", str(iidfile), "-t", tag,
                       "-f", str(context / dockerfile), str(context)]
        if not use_cache:
            command.insert(2, "--no-cache")
        _run(f"building {tag} with {builder}", command)
        image_id = iidfile.read_text().strip()
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def exists(builder: str, image: str) -> bool:
    """Whether the builder's store has `image`."""
    tool = "podman" if builder == "buildah" and shutil.which("podman") else builder
    command = [tool, "image", "inspect", image] if tool != "buildah" else ["buildah", "inspect", "--type", "image", image]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def inspect(builder: str, image: str) -> dict[str, object]:
    """The image's inspect document (podman/buildah/docker agree on the keys read here)."""
    tool = "podman" if builder == "buildah" and shutil.which("podman") else builder
    command = [tool, "image", "inspect", image] if tool != "buildah" else ["buildah", "inspect", "--type", "image", image]
    found = json.loads(_run(f"inspecting {image}", command))
    document = found[0] if isinstance(found, list) else found
    return document if isinstance(document, dict) else {}


def layers(builder: str, image: str) -> list[str]:
    """The image's layer digests, base first."""
    rootfs = inspect(builder, image).get("RootFS")
    found = rootfs.get("Layers") if isinstance(rootfs, dict) else None
    return [str(layer) for layer in found] if isinstance(found, list) else []


def tag(builder: str, image: str, reference: str) -> None:
    _run(f"tagging {image} as {reference}", [builder, "tag", image, reference])


def push(builder: str, reference: str, *, tls_verify: bool = True) -> str:
    """Push `reference`; return the manifest digest the registry now holds it under."""
    if builder == "docker":
        _run(f"pushing {reference}", ["docker", "push", reference])
        digests = inspect(builder, reference).get("RepoDigests")
        name = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
        for item in digests if isinstance(digests, list) else []:
            if str(item).startswith(f"{name}@"):
                return str(item).split("@", 1)[1]
        raise ConveyorError(f"pushed {reference} but docker reports no digest for it")
    with tempfile.TemporaryDirectory(prefix="conveyor-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        _run(f"pushing {reference}", [builder, "push", f"--tls-verify={'true' if tls_verify else 'false'}",
                                      "--digestfile", str(digestfile), reference])
        return digestfile.read_text().strip()
