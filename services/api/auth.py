"""Scoped API tokens: creating them, and finding who a request's bearer token belongs to.

Every route of the API names the scopes it admits (see
:mod:`services.api.routes`), and the middleware of :mod:`services.api.app`
calls :func:`authenticate` for each request. Scopes:

- ``admin``: everything, including settings, tokens and dead letters;
- ``agent``: reads inboxes and acts on the conversations of the inboxes
  the token's agent works in, as that agent;
- ``service``: another system that reads and acts on conversations.

A token is ``mh_`` and 43 url-safe characters (256 random bits). It is
shown once, at creation; the database keeps only its SHA-256, so a leaked
database does not leak usable tokens. ``MESSAGEHUB_API_TOKEN``, when set, is
the bootstrap admin token with which an operator creates the others.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from services.api.errors import ApiError

TOKEN_PREFIX = "mh_"
BOOTSTRAP_NAME = "bootstrap (MESSAGEHUB_API_TOKEN)"


@dataclass(frozen=True)
class Principal:
    """The caller of a request: the token's scope, and its agent for agent tokens."""

    scope: str
    name: str
    token_id: str | None = None
    agent_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def new_token() -> str:
    """Return a new random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Return the stored form of a token: its SHA-256 in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str) -> str | None:
    """Return the token of an ``Authorization: Bearer …`` header, or None."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(conn: AsyncConnection[Any], authorization: str,
                       bootstrap_token: str) -> Principal:
    """Return the principal of the request's token; raise 401 when there is none or it is unknown."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthenticated",
                       "missing API token: send Authorization: Bearer <token>")
    if bootstrap_token and hmac.compare_digest(token.encode(), bootstrap_token.encode()):
        return Principal(scope="admin", name=BOOTSTRAP_NAME)

    cursor = await conn.execute(
        "UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = %s "
        "AND revoked_at IS NULL RETURNING id, name, scope, agent_id", (token_digest(token),))
    row = await cursor.fetchone()
    if row is None:
        raise ApiError(401, "unauthenticated", "invalid API token: it is unknown or revoked")
    return Principal(scope=row["scope"], name=row["name"], token_id=str(row["id"]),
                     agent_id=str(row["agent_id"]) if row["agent_id"] else None)


def require_scope(principal: Principal, scopes: tuple[str, ...]) -> None:
    """Raise 403 unless the principal's scope is one of ``scopes``."""
    if principal.scope not in scopes:
        raise ApiError(403, "forbidden",
                       f"a token with scope {principal.scope} may not do this: it needs "
                       f"scope {' or '.join(scopes)}")
