"""Bearer tokens for the server's management endpoints.

The token is compared in constant time (`hmac.compare_digest`) so a caller
cannot guess it byte by byte from response times. A request without it is
answered 401 before anything is changed.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request


def authorized(request: Request, token: bytes) -> bool:
    """Whether `request` carries `Authorization: Bearer <token>`."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token)


UNAUTHORIZED = "send the server's token as 'Authorization: Bearer <token>'"
"""The error of a management request without the right token."""
