"""Remotes: a mirror of the artifact store at any fsspec URL (a directory, `file://`, `s3://`, …).

The remote holds objects under the same layout as `.conveyor/cache`
(`objects/ab/cdef…`), so a listing of `objects/` is the whole inventory and
only what the other side lacks moves. An upload never leaves a partial
object under a digest: object stores (S3, GCS, Azure) make a PUT visible only
once it is complete; on every other filesystem the bytes go to `tmp/` and
are renamed into place. Downloads are re-hashed before they enter the local
store, so a damaged remote object is reported, never used.

Credentials come from the backend's usual environment and config files, or
from the URL (`s3://KEY:SECRET@bucket/prefix`); every error message passes
through `redact` so neither ever reaches a log or a terminal.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from conveyor.exceptions import ConveyorError, RemoteError
from conveyor.store import TREE_SUFFIX, ArtifactStore, check_digest

# Filesystems on which a written object becomes visible only when complete.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_BATCH = 64
_HEX = re.compile(r"[0-9a-f]{64}")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")

Progress = Callable[[int], None]
"""Called with the number of objects just transferred."""


@dataclass
class Transfer:
    """What a push or pull did: objects moved, already there, and the ones that failed a check."""

    moved: int = 0
    present: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def _split_credentials(url: str) -> tuple[str, dict[str, Any], list[str]]:
    """The URL without `user:password@`, storage options carrying them, and the secrets to redact."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}, []
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    clean = urlunsplit(parts._replace(netloc=host))
    options: dict[str, Any] = {}
    if parts.scheme in ("s3", "s3a"):
        options = {"key": user, "secret": password}
    else:
        options = {"username": user, "password": password}
    return clean, options, [s for s in (userinfo, user, password) if s]


class Remote:
    """One remote, opened from its URL; nothing is contacted until a method needs it."""

    def __init__(self, url: str) -> None:
        if not url.strip():
            raise RemoteError("the remote URL is empty; set `remote:` in conveyor.yaml, CONVEYOR_REMOTE or --remote")
        self._secrets: list[str] = []
        clean, options, self._secrets = _split_credentials(url)
        self.url = clean
        parts = urlsplit(clean)
        try:
            import fsspec
        except ImportError:
            raise RemoteError("remotes need fsspec: pip install 'conveyor-ml[remote]' "
                              "(and 'conveyor-ml[s3]' for s3:// URLs)") from None
        with self._errors("open"):
            if parts.scheme in ("", "file"):
                local = Path(unquote(parts.path) if parts.scheme else clean).expanduser().resolve()
                self.fs: Any = fsspec.filesystem("file")
                self.base = local.as_posix()
            else:
                self.fs, self.base = fsspec.core.url_to_fs(clean, skip_instance_cache=True, **options)
                self.base = str(self.base).rstrip("/")
        protocol = self.fs.protocol
        protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        self.atomic_put = bool(protocols & _ATOMIC_PUT)

    # -- errors ---------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """`text` with this remote's credentials (and any `user:password@` in a URL) masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return _USERINFO.sub(r"\1***@", text)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn any backend failure into a one-line `RemoteError` with no credentials in it."""
        try:
            yield
        except ConveyorError:
            raise
        except ImportError as exc:
            raise RemoteError(f"cannot {doing} remote {self.redact(getattr(self, 'url', ''))}: {exc.name} is not "
                              "installed (for s3:// URLs: pip install 'conveyor-ml[s3]')") from None
        except Exception as exc:  # noqa: BLE001 - any backend error, reported without a traceback
            detail = self.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise RemoteError(f"cannot {doing} remote {self.redact(getattr(self, 'url', ''))}: {detail}") from None

    # -- layout ---------------------------------------------------------------------------
    def _object(self, digest: str) -> str:
        hexdigest = check_digest(digest).removesuffix(TREE_SUFFIX)
        return f"{self.base}/objects/{hexdigest[:2]}/{hexdigest[2:]}"

    def digests(self) -> set[str]:
        """Hex digests of every object on the remote (one listing)."""
        with self._errors("list"):
            try:
                paths = self.fs.find(f"{self.base}/objects")
            except FileNotFoundError:
                return set()
        found = set()
        for path in paths:
            shard, _, name = str(path).rstrip("/").rpartition("/")
            digest = shard[-2:] + name
            if _HEX.fullmatch(digest):
                found.add(digest)
        return found

    # -- transfers ------------------------------------------------------------------------
    def _upload_batch(self, store: ArtifactStore, digests: Sequence[str]) -> int:
        sources = [str(store.object_path(d)) for d in digests]
        targets = [self._object(d) for d in digests]
        if self.atomic_put:
            self.fs.put(sources, targets)
        else:
            for source, target in zip(sources, targets):
                tmp = f"{self.base}/tmp/{secrets.token_hex(8)}"
                self.fs.makedirs(f"{self.base}/tmp", exist_ok=True)
                self.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
                try:
                    self.fs.put_file(source, tmp)
                    self.fs.mv(tmp, target)
                except BaseException:
                    try:
                        self.fs.rm_file(tmp)
                    except Exception:  # noqa: BLE001 - best effort; tmp/ never counts as an object
                        pass
                    raise
        return sum(os.path.getsize(s) for s in sources)

    def push(self, store: ArtifactStore, digests: Iterable[str], *, jobs: int = 8,
             progress: Progress | None = None) -> Transfer:
        """Upload the objects named by `digests` that the remote lacks; `progress` counts each batch."""
        wanted = {check_digest(d).removesuffix(TREE_SUFFIX) for d in digests}
        result = Transfer()
        result.missing = sorted(d for d in wanted if not store.has(d))
        wanted -= set(result.missing)
        on_remote = self.digests()
        todo = sorted(wanted - on_remote)
        result.present = len(wanted) - len(todo)
        advance = progress or (lambda _n: None)
        advance(result.present)
        batches = [todo[i:i + _BATCH] for i in range(0, len(todo), _BATCH)]
        with self._errors("write to"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for batch, size in zip(batches, pool.map(lambda b: self._upload_batch(store, b), batches)):
                result.moved += len(batch)
                result.bytes += size
                advance(len(batch))
        return result

    def _download_batch(self, store: ArtifactStore, digests: Sequence[str]) -> tuple[list[str], int]:
        """Fetch into the store's tmp/, re-hash, move into place; returns the digests that failed the check."""
        tmp_dir = store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        locals_ = [tmp_dir / f"{d}.{secrets.token_hex(4)}" for d in digests]
        try:
            self.fs.get([self._object(d) for d in digests], [str(p) for p in locals_])
            corrupt, size = [], 0
            for digest, tmp in zip(digests, locals_):
                size += tmp.stat().st_size
                if not store.add_verified(tmp, digest):
                    corrupt.append(digest)
            return corrupt, size
        finally:
            for tmp in locals_:
                tmp.unlink(missing_ok=True)

    def pull(self, store: ArtifactStore, digests: Iterable[str] | None, *, jobs: int = 8,
             progress: Progress | None = None) -> Transfer:
        """Download the objects (all the remote has when `digests` is None) the local store lacks.

        A tree's manifest is fetched first and its files follow, so asking for
        `X.dir` brings the whole tree.
        """
        result = Transfer()
        on_remote = self.digests()
        advance = progress or (lambda _n: None)
        pending = set(on_remote) if digests is None else {check_digest(d) for d in digests}
        seen: set[str] = set()
        while pending:
            trees = {d for d in pending if d.endswith(TREE_SUFFIX)}
            hexes = {d.removesuffix(TREE_SUFFIX) for d in pending} - seen
            seen |= hexes
            absent = sorted(d for d in hexes if d not in on_remote and not store.has(d))
            result.missing += absent
            todo = sorted(d for d in hexes if d in on_remote and not store.has(d))
            result.present += len(hexes) - len(todo) - len(absent)
            advance(len(hexes) - len(todo))
            batches = [todo[i:i + _BATCH] for i in range(0, len(todo), _BATCH)]
            with self._errors("read from"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                for batch, (corrupt, size) in zip(batches, pool.map(lambda b: self._download_batch(store, b), batches)):
                    result.corrupt += corrupt
                    result.moved += len(batch) - len(corrupt)
                    result.bytes += size
                    advance(len(batch))
            pending = set()
            for tree in trees:
                if store.has(tree):
                    try:
                        entries = store.tree_entries(tree)
                    except ConveyorError:
                        continue  # a corrupt manifest was discarded by the read; reported by verify
                    pending |= {check_digest(str(e["digest"])) for e in entries}
            pending = {d for d in pending if d.removesuffix(TREE_SUFFIX) not in seen}
        return result

    def check(self, digests: Iterable[str] | None = None, *, jobs: int = 8,
              progress: Progress | None = None) -> tuple[list[str], list[str]]:
        """Re-hash remote objects by streaming them: (corrupt, missing) among `digests` (default: all)."""
        on_remote = self.digests()
        wanted = set(on_remote) if digests is None else {d.removesuffix(TREE_SUFFIX) for d in digests}
        missing = sorted(wanted - on_remote)
        advance = progress or (lambda _n: None)

        def corrupt(digest: str) -> bool:
            import blake3

            hasher = blake3.blake3()
            with self.fs.open(self._object(digest), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
            advance(1)
            return bool(hasher.hexdigest() != digest)

        present = sorted(wanted & on_remote)
        with self._errors("read from"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            flags = list(pool.map(corrupt, present))
        return [d for d, bad in zip(present, flags) if bad], missing

