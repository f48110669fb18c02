"""A throwaway PostgreSQL cluster for the tests, from the binaries of Debian's `postgresql` package.

`Cluster.start()` runs `initdb` into a fresh temp dir and starts the server on
a free loopback port, with its unix socket in that dir and durability off
(the data dies with the test session). PostgreSQL refuses to run as root, so
under root the server runs as the `postgres` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from itertools import count
from pathlib import Path

SUPERUSER = "conveyor"
"""The cluster's superuser; it logs in without a password (trust), on loopback only."""

_RUN_AS = "postgres"
"""The system user the server runs as when the tests run as root."""

_START_TRIES = 3
"""Free ports tried: another process may take the one picked before the server binds it."""


class Unavailable(Exception):
    """PostgreSQL is not installed here (as opposed to installed but broken, which is a failure)."""


def find_bindir() -> Path | None:
    """The newest `/usr/lib/postgresql/<major>/bin` that has `initdb` and `pg_ctl`, if any."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").is_file()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A running PostgreSQL server that only the tests use; `stop()` removes every trace of it."""

    def __init__(self, bindir: Path, root: Path, port: int, owner: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self._owner = owner  # the unprivileged user the server runs as, when we are root
        self._databases = count(1)

    @classmethod
    def start(cls) -> Cluster:
        """initdb and start a cluster; `Unavailable` if PostgreSQL or psycopg is not installed."""
        bindir = find_bindir()
        if bindir is None:
            raise Unavailable(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); "
                "install it with `apt-get install -y postgresql` (.ci/run does)"
            )
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg is not installed; pip install -e '.[dev]'") from None
        owner: pwd.struct_passwd | None = None
        root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(_RUN_AS)
            except KeyError:
                shutil.rmtree(root)
                raise RuntimeError(
                    f"running as root, and PostgreSQL refuses to run as root, but there is no "
                    f"'{_RUN_AS}' user to run it as; reinstall the postgresql package, which creates it"
                ) from None
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = cls(bindir, root, 0, owner)
        try:
            cluster._run("initdb", "-D", "data", "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                         "--no-locale", "--no-sync")
            (root / "sock").mkdir()
            if owner is not None:
                os.chown(root / "sock", owner.pw_uid, owner.pw_gid)
            for attempt in range(1, _START_TRIES + 1):
                cluster.port = _free_port()
                try:
                    cluster._run(
                        "pg_ctl", "-D", "data", "-l", "server.log", "-w", "-t", "60", "start", "-o",
                        f"-p {cluster.port} -k {root / 'sock'} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                    )
                    break
                except RuntimeError:
                    if attempt == _START_TRIES or "could not bind" not in cluster.log():
                        raise
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        as_owner = {} if self._owner is None else {
            "user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": self._owner.pw_dir, "USER": self._owner.pw_name},
        }
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120,
                              **as_owner)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n"
                f"server log:\n{self.log()}"
            )

    def log(self) -> str:
        """What the server wrote to its log so far."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str = "postgres") -> str:
        """A `postgresql://` URL for `database` on this cluster."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and delete its directory."""
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
