"""The context of every API handler: the settings, the database pool, the caller.

:mod:`services.api.app` stores an :class:`ApiState` in the application and
the caller's :class:`~services.api.auth.Principal` in each request; the
route modules read them through the helpers here.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from messagehub.settings import Settings
from services.api import validation
from services.api.auth import Principal
from services.api.errors import ApiError


DictPool = AsyncConnectionPool[AsyncConnection[DictRow]]


@dataclass
class ApiState:
    """The settings of the API process and its database pool (open while serving)."""

    settings: Settings
    pool: DictPool | None = None


STATE = web.AppKey("api_state", ApiState)
PRINCIPAL_KEY = "messagehub_principal"


def state(request: web.Request) -> ApiState:
    """Return the application's state."""
    return request.app[STATE]


def pool(request: web.Request) -> DictPool:
    """Return the database pool."""
    opened = request.app[STATE].pool
    assert opened is not None, "the pool opens before the first request"
    return opened


def principal(request: web.Request) -> Principal:
    """Return who made the request; the auth middleware set it."""
    found: Principal = request[PRINCIPAL_KEY]
    return found


async def json_body(request: web.Request, schema: str, *,
                    optional: bool = False) -> dict[str, Any]:
    """Return the request's JSON object after checking it against ``schema``.

    An empty body counts as ``{}`` when ``optional``.
    """
    text = await request.text()
    if not text.strip():
        if optional:
            return validation.validate(schema, {})
        raise ApiError(400, "invalid_json", "the request needs a JSON object as its body")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc.msg} "
                       f"at line {exc.lineno} column {exc.colno}") from None
    return validation.validate(schema, body)


def json_response(value: Any, status: int = 200) -> web.Response:
    """Return ``value`` as JSON; times become ISO 8601 strings, UUIDs strings."""
    return web.json_response(value, status=status,
                             dumps=lambda v: json.dumps(v, ensure_ascii=False, default=_plain))


def _plain(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)
