"""Bearer tokens for Conveyor's HTTP endpoints: where a token comes from and how it is checked.

One scheme for every endpoint that needs protecting (the dashboard now, the
model server's management endpoints next): `Authorization: Bearer <token>`,
compared in constant time so the answer's timing says nothing about how much
of a guess was right. A token kept on disk is a file only its owner can read,
created on first use, so a user never has to invent one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from conveyor.exceptions import ConveyorError

TOKEN_BYTES = 32
"""Random bytes in a generated token (base64url: 43 characters)."""


def generate_token() -> str:
    """A new random token, safe to put in a header or a file."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def load_or_create_token(path: Path, *, tighten: bool = False) -> str:
    """The token stored at `path`; on first use a new one is written there with mode 0600.

    The file is created with O_EXCL, so two processes starting at once agree on
    one token (the loser reads the winner's). A file others can read is refused,
    since anyone who can read it could use it; with `tighten`, its mode is set
    back to 0600 instead (a server restarted by a line must not stop at that).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(generate_token() + "\n")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077 and tighten:
        os.chmod(path, 0o600)
    elif mode & 0o077:
        raise ConveyorError(
            f"the token file {path} can be read by other users (mode {mode:o}); "
            f"run `chmod 600 {path}` or delete it to get a new token"
        )
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConveyorError(f"the token file {path} is empty; delete it to get a new token")
    return token


def bearer(header: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header value, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def matches(given: str | None, expected: str) -> bool:
    """Whether `given` is `expected`, compared in constant time (False for None)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def session_value(token: str, purpose: str) -> str:
    """A cookie value derived from the token: it proves a login without being the token itself,
    so a leaked cookie is not a token that works with `Authorization` or on another endpoint."""
    return hmac.new(token.encode("utf-8"), purpose.encode("utf-8"), hashlib.sha256).hexdigest()
