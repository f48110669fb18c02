"""Remotes: a mirror of the artifact store at any fsspec URL (a directory, `file://`, `s3://`, …).

The remote holds large objects under the same layout as `.conveyor/cache`
(`objects/ab/cdef…`); small ones travel in packs (`packs/<digest>.pack`, the
objects end to end, and `packs/<digest>.idx`, their offsets, written after
the pack so a pack is only seen once it is whole): one request for thousands
of small files instead of one each. A listing of `objects/` plus the pack
indexes is the whole inventory, and only what the other side lacks moves. An upload never leaves a partial
object under a digest: object stores (S3, GCS, Azure) make a PUT visible only
once it is complete; on every other filesystem the bytes go to `tmp/` and
are renamed into place. Downloads are re-hashed before they enter the local
store, so a damaged remote object is reported, never used.

Stage results (the small entries of `.conveyor/stages/`, DVC's run-cache)
travel too, under `stages/<entry name>`: a push publishes only an entry whose
outputs are all on the remote, and a pull checks each one's shape and digests
before it is written, so a fresh clone runs its unchanged stages from cache.

Credentials come from the backend's usual environment and config files, or
from the URL (`s3://KEY:SECRET@bucket/prefix`); every error message passes
through `redact` so neither ever reaches a log or a terminal.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from conveyor.exceptions import ConveyorError, RemoteError
from conveyor.store import TREE_SUFFIX, ArtifactStore, atomic_write_text, check_digest, hash_bytes

# Filesystems on which a written object becomes visible only when complete.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_BATCH = 64
_PACK_OBJECT_MAX = 256 << 10  # smaller objects travel in packs
_PACK_BYTES = 16 << 20
_PACK_COUNT = 4096
_HEX = re.compile(r"[0-9a-f]{64}")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_RESULT_NAME = re.compile(r"(tests-)?[0-9a-f]{64}\.json")

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


@dataclass
class ResultsTransfer:
    """What a push or pull of stage results did, by entry name."""

    moved: int = 0
    present: int = 0
    invalid: list[str] = field(default_factory=list)  # malformed (never written or sent)
    held_back: list[str] = field(default_factory=list)  # push: outputs not all on the remote
    newest_outs: set[str] = field(default_factory=set)  # pull: outs of each stage's newest entry on the remote


@dataclass(frozen=True)
class _Result:
    stage: str | None  # None for a candidate-tests entry
    created_at: float
    digests: list[str]


def _parse_result(name: str, text: str) -> _Result:
    """Check a stage result as `StageCache.put` or `run_tests` writes it; ValueError when it is not one.

    Entries come from a remote anyone with write access can edit: only a
    well-formed one, whose digests can only name objects, is ever written.
    """
    if not _RESULT_NAME.fullmatch(name):
        raise ValueError("not a stage result's file name")
    entry = json.loads(text)
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    created = entry.get("created_at")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        raise ValueError("no created_at")
    if name.startswith("tests-"):
        passed = entry.get("passed")
        if "passed" not in entry or (passed is not None and (isinstance(passed, bool) or not isinstance(passed, int))):
            raise ValueError("passed is not a count")
        return _Result(None, float(created), [])
    stage, outs = entry.get("stage"), entry.get("outs")
    if not isinstance(stage, str) or not stage or not isinstance(outs, dict):
        raise ValueError("no stage or outs")
    for out, digest in outs.items():
        parts = out.split("/")
        if not out or out.startswith("/") or ".." in parts or not isinstance(digest, str):
            raise ValueError(f"bad out {out!r}")
        try:
            check_digest(digest)
        except ConveyorError:
            raise ValueError(f"bad digest for {out!r}") from None
    return _Result(stage, float(created), list(outs.values()))


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
        self._packed: dict[str, tuple[str, int, int]] = {}  # digest -> (pack, offset, length), from digests()
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
        """Hex digests of every object on the remote: one listing, plus the pack indexes."""
        with self._errors("list"):
            try:
                paths = self.fs.find(f"{self.base}/objects")
            except FileNotFoundError:
                paths = []
            self._packed = self._pack_index()
        found = set()
        for path in paths:
            shard, _, name = str(path).rstrip("/").rpartition("/")
            digest = shard[-2:] + name
            if _HEX.fullmatch(digest):
                found.add(digest)
        return found | set(self._packed)

    def _pack_index(self) -> dict[str, tuple[str, int, int]]:
        try:
            indexes = [str(p) for p in self.fs.find(f"{self.base}/packs") if str(p).endswith(".idx")]
        except FileNotFoundError:
            return {}
        if not indexes:
            return {}
        packed: dict[str, tuple[str, int, int]] = {}
        for path, data in self.fs.cat(indexes).items():
            pack = str(path).rpartition("/")[2].removesuffix(".idx")
            try:
                entries = json.loads(data)
                rows = [(str(d), int(o), int(n)) for d, (o, n) in entries.items()]
            except (ValueError, TypeError, AttributeError):
                continue  # a damaged index hides its pack: those objects count as missing
            if _HEX.fullmatch(pack):
                packed.update({d: (pack, o, n) for d, o, n in rows if _HEX.fullmatch(d)})
        return packed

    def _write(self, target: str, data: bytes) -> None:
        """Write whole bytes so that `target` is never seen half-written."""
        if self.atomic_put:
            self.fs.pipe_file(target, data)
            return
        self._via_temp(target, lambda tmp: self.fs.pipe_file(tmp, data))

    def _via_temp(self, target: str, put: Callable[[str], object]) -> None:
        """Have `put` write a temporary name, then rename it to `target`: never seen half-written."""
        tmp = f"{self.base}/tmp/{secrets.token_hex(8)}"
        self.fs.makedirs(f"{self.base}/tmp", exist_ok=True)
        self.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
        try:
            put(tmp)
            self.fs.mv(tmp, target)
        except BaseException:
            with suppress(Exception):  # best effort; tmp/ never counts as an object
                self.fs.rm_file(tmp)
            raise

    # -- transfers ------------------------------------------------------------------------
    def _upload_batch(self, store: ArtifactStore, digests: Sequence[str]) -> int:
        sources = [str(store.object_path(d)) for d in digests]
        targets = [self._object(d) for d in digests]
        if self.atomic_put:
            self.fs.put(sources, targets)
        else:
            for source, target in zip(sources, targets):
                self._via_temp(target, partial(self.fs.put_file, source))
        return sum(os.path.getsize(s) for s in sources)

    def _upload_pack(self, store: ArtifactStore, digests: Sequence[str]) -> int:
        """One pack of small objects, then its index (a pack without an index is never read)."""
        data = bytearray()
        index: dict[str, list[int]] = {}
        for digest in digests:
            content = store.object_path(digest).read_bytes()
            index[digest] = [len(data), len(content)]
            data += content
        name = hash_bytes(bytes(data))
        self._write(f"{self.base}/packs/{name}.pack", bytes(data))
        self._write(f"{self.base}/packs/{name}.idx", json.dumps(index, separators=(",", ":")).encode())
        return len(data)

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
        sizes = {d: store.object_path(d).stat().st_size for d in todo}
        large = [d for d in todo if sizes[d] >= _PACK_OBJECT_MAX]
        work: list[tuple[str, list[str]]] = [("loose", large[i:i + _BATCH]) for i in range(0, len(large), _BATCH)]
        pack: list[str] = []
        pack_bytes = 0
        for digest in (d for d in todo if sizes[d] < _PACK_OBJECT_MAX):
            if pack and (pack_bytes + sizes[digest] > _PACK_BYTES or len(pack) >= _PACK_COUNT):
                work.append(("pack", pack))
                pack, pack_bytes = [], 0
            pack.append(digest)
            pack_bytes += sizes[digest]
        if pack:
            work.append(("pack", pack))

        def upload(item: tuple[str, list[str]]) -> int:
            kind, batch = item
            return self._upload_pack(store, batch) if kind == "pack" else self._upload_batch(store, batch)

        with self._errors("write to"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for (_, batch), size in zip(work, pool.map(upload, work)):
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

    def _download_pack(self, store: ArtifactStore, pack: str, digests: Sequence[str]) -> tuple[list[str], int]:
        """Fetch one pack and keep the wanted objects in it that hash to their digests."""
        data = self.fs.cat_file(f"{self.base}/packs/{pack}.pack")
        corrupt, size = [], 0
        for digest in digests:
            _, offset, length = self._packed[digest]
            content = data[offset:offset + length]
            size += len(content)
            if len(content) != length or hash_bytes(content) != digest:
                corrupt.append(digest)
            else:
                store.put_bytes(content)
        return corrupt, size

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
            loose = [d for d in todo if d not in self._packed]
            work: list[tuple[str, list[str]]] = [("", loose[i:i + _BATCH]) for i in range(0, len(loose), _BATCH)]
            by_pack: dict[str, list[str]] = {}
            for digest in todo:
                if digest in self._packed:
                    by_pack.setdefault(self._packed[digest][0], []).append(digest)
            work += sorted(by_pack.items())

            def download(item: tuple[str, list[str]]) -> tuple[list[str], int]:
                pack, batch = item
                return self._download_pack(store, pack, batch) if pack else self._download_batch(store, batch)

            with self._errors("read from"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                for (_, batch), (corrupt, size) in zip(work, pool.map(download, work)):
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

        def corrupt_in_pack(item: tuple[str, list[str]]) -> list[str]:
            pack, batch = item
            data = self.fs.cat_file(f"{self.base}/packs/{pack}.pack")
            advance(len(batch))
            return [d for d in batch if hash_bytes(data[self._packed[d][1]:self._packed[d][1] + self._packed[d][2]]) != d]

        present = sorted(d for d in wanted & on_remote if d not in self._packed)
        by_pack: dict[str, list[str]] = {}
        for digest in sorted(wanted & set(self._packed)):
            by_pack.setdefault(self._packed[digest][0], []).append(digest)
        with self._errors("read from"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            flags = list(pool.map(corrupt, present))
            bad_packed = [d for found in pool.map(corrupt_in_pack, sorted(by_pack.items())) for d in found]
        return sorted([d for d, bad in zip(present, flags) if bad] + bad_packed), missing


    # -- stage results --------------------------------------------------------------------
    def _result_paths(self) -> dict[str, str]:
        """Every file under `stages/` on the remote: its name (its relative path when nested) → full path."""
        prefix = f"{self.base}/stages/"
        try:
            paths = [str(p) for p in self.fs.find(prefix.rstrip("/"))]
        except FileNotFoundError:
            paths = []
        return {p.removeprefix(prefix): p for p in paths if p.startswith(prefix)}

    def _fetchable(self, store: ArtifactStore, digests: Iterable[str], on_remote: set[str]) -> bool:
        """True when every object of these outs (a tree's files too, read from the local manifest) is on the remote."""
        for digest in digests:
            if digest.removesuffix(TREE_SUFFIX) not in on_remote:
                return False
            if digest.endswith(TREE_SUFFIX):
                try:
                    entries = store.tree_entries(digest)
                except ConveyorError:
                    return False  # the manifest cannot be read here, so its files cannot be vouched for
                if any(str(e["digest"]) not in on_remote for e in entries):
                    return False
        return True

    def push_results(self, store: ArtifactStore, stages_dir: Path, *, jobs: int = 8) -> ResultsTransfer:
        """Upload the stage results the remote lacks whose outputs it holds (call after pushing objects)."""
        result = ResultsTransfer()
        local = sorted(p for p in stages_dir.glob("*.json") if _RESULT_NAME.fullmatch(p.name))
        with self._errors("list"):
            on_remote_names = set(self._result_paths())
        todo = [p for p in local if p.name not in on_remote_names]
        result.present = len(local) - len(todo)
        if not todo:
            return result
        on_remote = self.digests()  # one listing, after the object push
        uploads: list[tuple[str, bytes]] = []
        for path in todo:
            try:
                data = path.read_bytes()
                parsed = _parse_result(path.name, data.decode("utf-8"))
            except (OSError, ValueError):
                result.invalid.append(path.name)
                continue
            if self._fetchable(store, parsed.digests, on_remote):
                uploads.append((f"{self.base}/stages/{path.name}", data))
            else:
                result.held_back.append(path.name)
        with self._errors("write to"), ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for _ in pool.map(lambda item: self._write(*item), uploads):
                result.moved += 1
        return result

    def pull_results(self, stages_dir: Path) -> ResultsTransfer:
        """Download the stage results missing from `stages_dir`; each is checked before it is written.

        `newest_outs` names the outs of each stage's newest entry on the remote,
        which a fresh clone of the latest commit needs to restore its stages.
        """
        result = ResultsTransfer()
        with self._errors("list"):
            paths = self._result_paths()
        result.invalid = sorted(n for n in paths if not _RESULT_NAME.fullmatch(n))
        valid = sorted(n for n in paths if _RESULT_NAME.fullmatch(n))
        todo = [n for n in valid if not (stages_dir / n).is_file()]
        result.present = len(valid) - len(todo)
        with self._errors("read from"):
            fetched = self.fs.cat([paths[n] for n in todo]) if todo else {}
        texts: dict[str, str] = {}
        for name in todo:
            data = fetched.get(paths[name], b"")
            try:
                text = data.decode("utf-8")
                _parse_result(name, text)
            except ValueError:
                result.invalid.append(name)
                continue
            atomic_write_text(stages_dir / name, text)
            texts[name] = text
            result.moved += 1
        for name in valid:
            if name not in texts and name not in result.invalid:
                with suppress(OSError):
                    texts[name] = (stages_dir / name).read_text(encoding="utf-8")
        newest: dict[str, _Result] = {}
        for name, text in texts.items():
            with suppress(ValueError):
                parsed = _parse_result(name, text)
                if parsed.stage is not None and (parsed.stage not in newest
                                                 or parsed.created_at > newest[parsed.stage].created_at):
                    newest[parsed.stage] = parsed
        result.newest_outs = {d for parsed in newest.values() for d in parsed.digests}
        result.invalid.sort()
        return result
