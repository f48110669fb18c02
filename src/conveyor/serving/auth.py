"""Bearer tokens for the server's management endpoints, checked with the project's one token scheme.

A request without the right token is answered 401 before anything is changed;
`conveyor.auth` compares in constant time.
"""

from __future__ import annotations

from starlette.requests import Request

from conveyor.auth import bearer, matches


def authorized(request: Request, token: bytes) -> bool:
    """Whether `request` carries `Authorization: Bearer <token>`."""
    return matches(bearer(request.headers.get("authorization")), token.decode())


UNAUTHORIZED = "send the server's token as 'Authorization: Bearer <token>'"
"""The error of a management request without the right token."""
