"""Data tracking: large files and directories kept in the store, a small pointer kept in git.

`conveyor data add PATH` stores the content (hard-linked into the store, no
copy, unless asked) and writes `PATH.conveyor`, a few lines of JSON to commit,
plus a `.gitignore` entry for PATH. A directory becomes a manifest object,
byte-for-byte the one `store.hash_path` builds, so a stage dep on tracked data
has the same digest whether it is hashed or read from the pointer.

Status must be cheap on an unchanged tree of 100,000 files. Per tracked path,
a stat index maps each file's (inode, size, mtime_ns, mode) to its digest, so
unchanged files are never read. On top of it, the whole tree's stat listing
comes from one `find -printf` (C speed, run as argv, never through a shell)
and its blake3 is compared with the one recorded last time: when equal, the
tree is what it was and nothing is parsed at all.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from conveyor import defaults
from conveyor.exceptions import ConveyorError
from conveyor.store import TREE_SUFFIX, ArtifactStore, atomic_write_text, check_digest, hash_bytes

POINTER_SUFFIX = ".conveyor"
DVC_SUFFIX = ".dvc"
_BIG = 16 << 20  # files above this are hashed with every core


@dataclass(frozen=True)
class Pointer:
    """What `PATH.conveyor` says: the tracked path (relative to the project) and its content digest."""

    path: str
    digest: str
    size: int
    files: int

    def dumps(self) -> str:
        return json.dumps({"path": Path(self.path).name, "digest": self.digest, "size": self.size,
                           "files": self.files}, indent=2) + "\n"


@dataclass(frozen=True)
class DataState:
    """The state of one tracked path: unchanged, modified, missing (for DVC files also: present)."""

    path: str
    state: str
    kind: str = "conveyor"  # conveyor | dvc
    digest: str = ""


def read_pointer(root: Path, pointer_file: Path) -> Pointer:
    """Parse a `.conveyor` pointer; a damaged one is an error naming the file."""
    rel = pointer_file.relative_to(root).as_posix()
    try:
        data = json.loads(pointer_file.read_text(encoding="utf-8"))
        name, digest = str(data["path"]), str(data["digest"])
        check_digest(digest)
        size, files = int(data.get("size", 0)), int(data.get("files", 1))
    except (OSError, ValueError, KeyError, TypeError, ConveyorError) as exc:
        raise ConveyorError(f"{rel}: not a valid pointer file ({exc}); restore it from git") from None
    if "/" in name or name in ("", ".", ".."):
        raise ConveyorError(f"{rel}: path '{name}' must be the name of the file or directory beside it")
    return Pointer(path=(pointer_file.parent / name).relative_to(root).as_posix(), digest=digest, size=size,
                   files=files)


def pointer_files(root: Path, suffix: str = POINTER_SUFFIX) -> list[Path]:
    """Pointer files in the working tree; git lists them (ignored data dirs are never walked)."""
    found = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                            f"*{suffix}"], cwd=root, capture_output=True, check=False)
    if found.returncode == 0:
        names = [n for n in found.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
        return sorted({root / n for n in names if (root / n).is_file()})
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        tracked = {f.removesuffix(suffix) for f in filenames if f.endswith(suffix)}
        dirnames[:] = [d for d in dirnames if d not in tracked and d not in (".git", defaults.STATE_DIR)]
        files += [Path(dirpath) / f for f in filenames if f.endswith(suffix)]
    return sorted(files)


# -- listing and the stat index -----------------------------------------------------------
def _listing(path: Path) -> bytes:
    """`inode size mtime mode relpath\\0` for every file under `path` (or for the file itself)."""
    if not path.is_dir():
        st = path.stat()
        return f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {stat.S_IMODE(st.st_mode):o} \0".encode()
    try:
        found = subprocess.run(["find", str(path), "-name", "__pycache__", "-prune", "-o", "-type", "f",
                                "-printf", "%i %s %T@ %m %P\\0"], capture_output=True, check=False)
        if found.returncode == 0:
            return found.stdout
    except OSError:
        pass  # no GNU find here: list in Python, same format
    parts = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                parts.append(f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {stat.S_IMODE(st.st_mode):o} {rel}\0")
    return "".join(parts).encode("utf-8", "surrogateescape")


def _mtime_ns(text: str) -> int:
    """find's `%T@` (seconds.fraction) or an integer of nanoseconds, as nanoseconds."""
    seconds, dot, fraction = text.partition(".")
    if not dot:
        return int(seconds)
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _parse(listing: bytes) -> dict[str, tuple[int, int, int, int]]:
    """relpath -> (inode, size, mtime_ns, mode)."""
    files = {}
    for record in listing.decode("utf-8", "surrogateescape").split("\0"):
        if not record:
            continue
        ino, size, mtime, mode, rel = record.split(" ", 4)
        files[rel] = (int(ino), int(size), _mtime_ns(mtime), int(mode, 8))
    return files


def _walk_key(rel: str) -> list[tuple[int, str]]:
    """Sort key giving `os.walk` order (a directory's files before its subdirectories), as in the store."""
    parts = rel.split("/")
    return [(1, p) for p in parts[:-1]] + [(0, parts[-1])]


def hash_large(path: Path) -> str:
    """blake3 of a file, on every core for big files (memory-mapped)."""
    size = path.stat().st_size
    if size >= _BIG:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return hasher.hexdigest()
    hasher = blake3.blake3()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


class _Index:
    """The stat index and listing digest of one tracked path, under `.conveyor/data/`."""

    def __init__(self, state_dir: Path, rel: str) -> None:
        key = hash_bytes(rel.encode())[:32]
        self.dir = state_dir / "data"
        self.fast = self.dir / f"{key}.fast"
        self.full = self.dir / f"{key}.json"

    def fast_digest(self, listing_hash: str) -> str | None:
        """The content digest recorded for exactly this listing, if any."""
        try:
            recorded, digest = self.fast.read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            return None
        return digest if recorded == listing_hash else None

    def entries(self) -> dict[str, list[object]]:
        try:
            data = json.loads(self.full.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # a missing or corrupt index only costs a re-hash

    def save(self, listing_hash: str, digest: str, entries: dict[str, list[object]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.full, json.dumps(entries, separators=(",", ":")))
        atomic_write_text(self.fast, f"{listing_hash} {digest}\n")


@dataclass
class _Scan:
    digest: str
    files: dict[str, tuple[str, bool, int]]  # relpath -> (digest, executable, size)
    listing_hash: str

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.files.values())


def _scan(root: Path, rel: str, *, jobs: int = 4) -> _Scan:
    """Digest of a tracked path from its stat listing, hashing only files the index does not know."""
    path = root / rel
    index = _Index(root / defaults.STATE_DIR, rel)
    listing = _listing(path)
    listing_hash = blake3.blake3(listing).hexdigest()
    known = index.entries()
    stats = _parse(listing)
    todo = [name for name, st in stats.items() if known.get(name, [None])[:4] != list(st)]
    chunks = [todo[i:i + 256] for i in range(0, len(todo), 256)]  # one task per file costs more than a small hash

    def hash_chunk(names: list[str]) -> list[str]:
        return [hash_large(path / name if name else path) for name in names]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        fresh = {name: digest for names, digests in zip(chunks, pool.map(hash_chunk, chunks))
                 for name, digest in zip(names, digests)}
    files: dict[str, tuple[str, bool, int]] = {}
    entries: dict[str, list[object]] = {}
    for name, st in stats.items():
        digest = fresh[name] if name in fresh else str(known[name][4])
        files[name] = (digest, bool(st[3] & stat.S_IXUSR), st[1])
        entries[name] = [*st, digest]
    digest = _digest_of(path, files)
    index.save(listing_hash, digest, entries)
    return _Scan(digest, files, listing_hash)


def _manifest(files: dict[str, tuple[str, bool, int]]) -> bytes:
    rows = [{"path": name, "digest": files[name][0], "exec": files[name][1]} for name in sorted(files, key=_walk_key)]
    return json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()


def _digest_of(path: Path, files: dict[str, tuple[str, bool, int]]) -> str:
    if not path.is_dir():
        return files[""][0]
    return hash_bytes(_manifest(files)) + TREE_SUFFIX


def current_digest(root: Path, rel: str) -> str:
    """The digest of the tracked path as it is now: from the listing alone when nothing changed."""
    index = _Index(root / defaults.STATE_DIR, rel)
    listing = _listing(root / rel)
    recorded = index.fast_digest(blake3.blake3(listing).hexdigest())
    return recorded if recorded is not None else _scan(root, rel).digest


# -- add / status / checkout --------------------------------------------------------------
def _relative(root: Path, path: Path) -> str:
    full = (root / path).absolute() if not path.is_absolute() else path
    try:
        rel = Path(os.path.normpath(full)).relative_to(root).as_posix()
    except ValueError:
        raise ConveyorError(f"'{path}' is outside the project at {root}; only files inside it can be tracked") from None
    first = rel.split("/")[0]
    if rel in ("", ".") or first in (".git", defaults.STATE_DIR):
        raise ConveyorError(f"'{path}' cannot be tracked: name a file or directory inside the project")
    return rel


def _ignore(root: Path, rel: str) -> None:
    """Add `/name` to the .gitignore beside the tracked path, once."""
    target = root / rel
    gitignore = target.parent / ".gitignore"
    line = f"/{target.name}"
    existing = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
    if line in existing.splitlines():
        return
    sep = "" if not existing or existing.endswith("\n") else "\n"
    gitignore.write_text(f"{existing}{sep}{line}\n", encoding="utf-8")


def add(root: Path, store: ArtifactStore, path: Path, *, copy: bool = False) -> Pointer:
    """Track a file or directory: store its content, write `PATH.conveyor` and ignore PATH in git."""
    rel = _relative(root, path)
    full = root / rel
    if not full.exists():
        raise ConveyorError(f"'{rel}' does not exist; nothing to track")
    if full.is_symlink():
        raise ConveyorError(f"'{rel}' is a symbolic link; track the file or directory it points to")
    scan = _scan(root, rel)
    for name, (digest, _executable, _size) in scan.files.items():
        store.adopt(full / name if name else full, digest, link=not copy)
    if full.is_dir():
        store.put_bytes(_manifest(scan.files))
    if not copy:  # linking made the files read-only: a new listing, same content
        listing = _listing(full)
        stats = _parse(listing)
        _Index(root / defaults.STATE_DIR, rel).save(
            blake3.blake3(listing).hexdigest(), scan.digest,
            {name: [*st, scan.files[name][0]] for name, st in stats.items() if name in scan.files})
    pointer = Pointer(path=rel, digest=scan.digest, size=scan.size, files=len(scan.files))
    atomic_write_text(full.with_name(full.name + POINTER_SUFFIX), pointer.dumps())
    _ignore(root, rel)
    return pointer


def tracked(root: Path) -> list[Pointer]:
    """Every `.conveyor` pointer in the working tree."""
    return [read_pointer(root, f) for f in pointer_files(root)]


def pointer_for(root: Path, rel: str) -> Pointer | None:
    """The pointer tracking exactly `rel`, if there is one."""
    candidate = root / (rel.rstrip("/") + POINTER_SUFFIX)
    return read_pointer(root, candidate) if candidate.is_file() else None


def state_of(root: Path, pointer: Pointer) -> DataState:
    """Compare the working tree with one pointer."""
    if not (root / pointer.path).exists():
        return DataState(pointer.path, "missing", digest=pointer.digest)
    now = current_digest(root, pointer.path)
    return DataState(pointer.path, "unchanged" if now == pointer.digest else "modified", digest=now)


def status(root: Path) -> list[DataState]:
    """The state of every tracked path, Conveyor's pointers and DVC's `.dvc` files alike."""
    states = [state_of(root, p) for p in tracked(root)]
    dvc_files = pointer_files(root, DVC_SUFFIX)
    if dvc_files:
        from conveyor.dvc import dvc_state

        states += [dvc_state(root, f) for f in dvc_files]
    return states


def checkout(root: Path, store: ArtifactStore, paths: list[str] | None = None) -> list[str]:
    """Put each tracked path (all, or those named) back to its pointer's version; returns those restored.

    Every byte is verified on the way out, so a corrupt object is never
    restored; a missing one is an error that says to pull.
    """
    wanted = {_relative(root, Path(p)) for p in paths} if paths else None
    restored = []
    for pointer in tracked(root):
        if wanted is not None and pointer.path not in wanted:
            continue
        if state_of(root, pointer).state == "unchanged":
            continue
        restore(root, store, pointer)
        restored.append(pointer.path)
    if wanted:
        unknown = wanted - {p.path for p in tracked(root)}
        if unknown:
            raise ConveyorError(f"not tracked: {', '.join(sorted(unknown))}; `conveyor data add` tracks a path")
    return restored


def restore(root: Path, store: ArtifactStore, pointer: Pointer) -> None:
    """Materialise one pointer's content and record its stat index (no re-hash on the next status)."""
    full = root / pointer.path
    try:
        store.restore(pointer.digest, full)
    except ConveyorError as exc:
        raise ConveyorError(f"cannot restore {pointer.path}: {exc}; `conveyor pull` fetches it from the remote") from None
    digests = ({str(e["path"]): str(e["digest"]) for e in store.tree_entries(pointer.digest)}
               if pointer.digest.endswith(TREE_SUFFIX) else {"": pointer.digest})
    listing = _listing(full)
    stats = _parse(listing)
    _Index(root / defaults.STATE_DIR, pointer.path).save(
        blake3.blake3(listing).hexdigest(), pointer.digest,
        {name: [*st, digests[name]] for name, st in stats.items() if name in digests})


def dep_digest(root: Path, store: ArtifactStore | None, dep: str) -> str | None:
    """The digest of a stage dep that is tracked data (restored first when missing); None otherwise."""
    pointer = pointer_for(root, dep)
    if pointer is None:
        from conveyor.dvc import pull_if_missing

        pull_if_missing(root, dep)
        return None
    if not (root / pointer.path).exists():
        if store is None:
            raise ConveyorError(f"tracked data '{dep}' is missing; run `conveyor data checkout`")
        restore(root, store, pointer)
        return pointer.digest
    return current_digest(root, pointer.path)


def iter_pointer_digests(root: Path) -> Iterator[tuple[str, str]]:
    """(digest, path) for every tracked pointer; for gc, verify, push and pull."""
    for pointer in tracked(root):
        yield pointer.digest, pointer.path

