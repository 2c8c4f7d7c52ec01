"""The aiohttp application of the API: routes, token checks and error responses.

:func:`create_app` is called by ``python -m services.api`` and by tests. Two
middlewares wrap every request:

- ``answer_errors`` turns :class:`~services.api.errors.ApiError`, aiohttp's
  own 404/405/413 and a database outage into the JSON error body; anything
  else is logged and answered 500, which a test treats as a bug;
- ``check_token`` authenticates the bearer token and checks the scopes the
  route admits. Only ``/healthz`` (which shows nothing) and the CSAT survey
  (which has its own per-conversation token) pass without one, and a route
  that is not in :data:`services.api.routes.ROUTES` admits no scope.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from messagehub.settings import Settings
from services.api import auth, csat, dead_letters, openapi, routes
from services.api.errors import ApiError
from services.api.state import PRINCIPAL_KEY, STATE, ApiState, DictPool, json_response, pool

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 1024 * 1024
OPENAPI_PATH = "/v1/openapi.json"
_UNGUARDED = ("/healthz",)
_ROUTE_TABLE = web.AppKey("api_routes", dict)


def create_app(settings: Settings) -> web.Application:
    """Return the API application; its database pool opens when the app starts."""
    app = web.Application(middlewares=[answer_errors, check_token],
                          client_max_size=MAX_BODY_BYTES)
    app[STATE] = ApiState(settings=settings)
    app[_ROUTE_TABLE] = routes.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(OPENAPI_PATH, serve_openapi)
    app.cleanup_ctx.append(_pool_context)
    csat.add_routes(app, settings)
    return app


async def _pool_context(app: web.Application) -> AsyncIterator[None]:
    opened: DictPool = AsyncConnectionPool(
        app[STATE].settings.database_url, min_size=1, max_size=8, open=False,
        connection_class=AsyncConnection[DictRow], kwargs={"row_factory": dict_row})
    await opened.open(wait=True, timeout=30)
    app[STATE].pool = opened
    yield
    await opened.close()


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve_openapi(_request: web.Request) -> web.Response:
    return json_response(openapi.document())


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(exc.status, _http_code(exc.status), exc.reason)
    except psycopg.DataError:
        # A value from the request that PostgreSQL cannot take, such as a
        # NUL in a path segment. The client can correct it.
        error = ApiError(400, "invalid_request", "a value in the path, query or body cannot be "
                         "used: remove control characters and check the ids")
    except (psycopg.OperationalError, dead_letters.DeadLetterReadError) as exc:
        log.warning("api: %s %s: backing service unavailable: %s", request.method,
                    request.raw_path, exc)
        return ApiError(503, "unavailable", "a backing service (PostgreSQL or Kafka) is not "
                        "available; try again shortly").response()
    except Exception:
        log.exception("api: %s %s: unexpected error", request.method, request.raw_path)
        return ApiError(500, "internal_error", "unexpected error; the API's log has the "
                        "details").response()
    # Messages never carry a password, but only the code is logged: it is enough to search by.
    # The raw path, still percent-encoded, cannot forge a log line with a CR or LF.
    log.info("api: %s %s: %d %s", request.method, request.raw_path, error.status, error.code)
    return error.response()


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        status, "http_error")


@web.middleware
async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _UNGUARDED or csat.is_public_path(request.path):
        return await handler(request)

    settings = request.app[STATE].settings
    async with pool(request).connection() as conn, conn.transaction():
        principal = await auth.authenticate(conn, request.headers.get("Authorization", ""),
                                            settings.api_token)
    request[PRINCIPAL_KEY] = principal

    route = _route_of(request)
    if route is not None:
        auth.require_scope(principal, route.scopes)
    elif request.path != OPENAPI_PATH and request.match_info.http_exception is None:
        # Registered outside the table: no scope may call it.
        raise ApiError(403, "forbidden", "this route admits no token")
    return await handler(request)


def _route_of(request: web.Request) -> routes.Route | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    table: dict[tuple[str, str], routes.Route] = request.app[_ROUTE_TABLE]
    return table.get((request.method, resource.canonical))
