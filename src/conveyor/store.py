"""Content-addressed artifact store: blake3 digests, atomic writes, verified reads.

A file is stored once under `objects/ab/cdef…` (its blake3 hex digest). A
directory is stored as a manifest (sorted relative paths, digests and modes,
as JSON) that is itself an object; its digest carries a `.dir` suffix, as in
DVC. Every write goes to a temporary file that is renamed into place, so a
crash never leaves a partial object under a digest; every read re-hashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import blake3

from conveyor.exceptions import BadDigest, IntegrityError, ObjectMissing

TREE_SUFFIX = ".dir"
_CHUNK = 1 << 20
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """Return `digest` if it is a blake3 hex digest (optionally a tree's), else raise `BadDigest`.

    Object names come from pointer files and remotes that anyone can edit; only
    64 hex digits can never name a path outside `objects/`.
    """
    if not _HEX_DIGEST.fullmatch(digest.removesuffix(TREE_SUFFIX)):
        raise BadDigest(digest)
    return digest


def hash_file(path: Path) -> str:
    """blake3 hex digest of a file's content."""
    hasher = blake3.blake3()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def hash_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _manifest(root: Path) -> bytes:
    entries = []
    for file in _walk_files(root):
        mode = file.stat().st_mode
        entries.append({
            "path": file.relative_to(root).as_posix(),
            "digest": hash_file(file),
            "exec": bool(mode & stat.S_IXUSR),
        })
    return json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()


def hash_path(path: Path) -> str:
    """Digest of a file, or of a directory's manifest (with the `.dir` suffix)."""
    if path.is_dir():
        return hash_bytes(_manifest(path)) + TREE_SUFFIX
    return hash_file(path)


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(dest: Path, text: str) -> None:
    """Write a text file so readers see the old or the new content, never a mix.

    No fsync: the rename makes this safe against a killed process; after a
    power cut, digests and "a corrupt entry is a miss" catch a torn file.
    """
    _atomic_write_bytes(dest, text.encode("utf-8"))


def swap_in_dir(staging: Path, dest: Path) -> None:
    """Put the complete directory `staging` at `dest` (replacing what is there) with renames,
    so `dest` is at every moment either the old content or the new."""
    if dest.is_dir() and not dest.is_symlink():
        retired = dest.with_name(f".old-{dest.name}-{os.getpid()}")
        os.replace(dest, retired)
        os.replace(staging, dest)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        dest.unlink(missing_ok=True)
        os.replace(staging, dest)


class ArtifactStore:
    """Objects under `root` (normally `.conveyor/cache`), addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def object_path(self, digest: str) -> Path:
        hexdigest = check_digest(digest).removesuffix(TREE_SUFFIX)
        return self.root / "objects" / hexdigest[:2] / hexdigest[2:]

    def _intact(self, digest: str) -> bool:
        """True when the object exists and still hashes to its digest; a corrupt one is removed."""
        path = self.object_path(digest)
        if not path.is_file():
            return False
        if hash_file(path) == digest.removesuffix(TREE_SUFFIX):
            return True
        self.discard(digest)
        return False

    def discard(self, digest: str) -> None:
        """Remove a (corrupt) object so that the next write of its content replaces it."""
        self.object_path(digest).unlink(missing_ok=True)

    def _put_object(self, source: Path) -> str:
        digest = hash_file(source)
        dest = self.object_path(digest)
        if not self._intact(digest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                if hash_file(Path(tmp)) != digest:  # the source changed while we copied it
                    raise IntegrityError(str(source), digest, hash_file(Path(tmp)))
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def put(self, path: Path) -> str:
        """Store a file or a directory tree; return its digest."""
        if not path.is_dir():
            return self._put_object(path)
        manifest = _manifest(path)
        for entry in json.loads(manifest):
            self._put_object(path / entry["path"])
        digest = hash_bytes(manifest)
        if not self._intact(digest):
            _atomic_write_bytes(self.object_path(digest), manifest)
        return digest + TREE_SUFFIX

    def read_bytes(self, digest: str) -> bytes:
        """An object's content, verified against its digest."""
        path = self.object_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(digest) from None
        actual = hash_bytes(data)
        if actual != digest.removesuffix(TREE_SUFFIX):
            self.discard(digest)
            raise IntegrityError(f"object {digest}", digest, actual)
        return data

    def _copy_verified(self, digest: str, dest: Path, executable: bool) -> None:
        source = self.object_path(digest)
        if not source.is_file():
            raise ObjectMissing(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            actual = hash_file(Path(tmp))
            if actual != digest:
                self.discard(digest)  # never restored again; the next write of this content repairs it
                raise IntegrityError(f"object {digest}", digest, actual)
            os.chmod(tmp, 0o755 if executable else 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, digest: str, dest: Path) -> None:
        """Materialise a file or tree at `dest`, verifying every byte.

        A tree is assembled beside `dest` and swapped in, so `dest` is either
        the old content or the complete new one.
        """
        if not digest.endswith(TREE_SUFFIX):
            if dest.is_dir():
                shutil.rmtree(dest)
            self._copy_verified(digest, dest, executable=False)
            return
        entries = json.loads(self.read_bytes(digest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
        try:
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would outlive the swap
            for entry in entries:
                self._copy_verified(entry["digest"], staging / entry["path"], entry["exec"])
            swap_in_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def tree_entries(self, digest: str) -> list[dict[str, object]]:
        """The manifest of a stored tree: path, digest and exec flag of each file."""
        entries: list[dict[str, object]] = json.loads(self.read_bytes(digest))
        return entries

    def has(self, digest: str) -> bool:
        """True when an object is stored under `digest` (not re-hashed: `verify` does that)."""
        return self.object_path(digest).is_file()

    def digests(self) -> Iterator[str]:
        """The hex digest of every stored object (trees without their suffix), in no set order."""
        objects = self.root / "objects"
        if not objects.is_dir():
            return
        with os.scandir(objects) as shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir():
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        name = shard.name + entry.name
                        if _HEX_DIGEST.fullmatch(name):
                            yield name

    def adopt(self, source: Path, digest: str, *, link: bool = True) -> None:
        """Make the file `source`, already hashed to `digest`, the object for it.

        With `link`, the object is a hard link to `source` (no copy, no second
        read) made read-only, so an editor that writes in place fails loudly
        instead of corrupting the store; a copy is made across devices.
        """
        dest = self.object_path(digest)
        if link:
            # A link is whole the moment it exists, so it can take the final name directly.
            for attempt in range(2):
                try:
                    os.link(source, dest)
                except FileExistsError:
                    return
                except FileNotFoundError:
                    if attempt == 0 and source.exists():
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        continue
                    raise
                except OSError:
                    break  # another device, or no hard links here: copy instead
                os.chmod(dest, 0o555 if os.stat(dest).st_mode & stat.S_IXUSR else 0o444)
                return
        if dest.is_file():
            return
        self._put_object(source)

    def add_verified(self, tmp: Path, digest: str) -> bool:
        """Move the downloaded file `tmp` into place if it hashes to `digest`; else delete it, False."""
        check_digest(digest)
        if hash_file(tmp) != digest.removesuffix(TREE_SUFFIX):
            tmp.unlink(missing_ok=True)
            return False
        dest = self.object_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        return True

    def put_bytes(self, data: bytes) -> str:
        """Store `data` (a manifest, say) as an object; return its hex digest."""
        digest = hash_bytes(data)
        if not self._intact(digest):
            _atomic_write_bytes(self.object_path(digest), data)
        return digest
