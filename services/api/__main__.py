"""Entry point of the API service: ``python -m services.api``.

The HTTP control plane. It answers ``/healthz`` without a token; every other
route needs ``Authorization: Bearer <MESSAGEHUB_API_TOKEN>``, and with no
token configured those routes are closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

import psycopg
from aiohttp import web

from messagehub import db, inboxes, logs, metrics
from messagehub import settings as settings_module
from messagehub.settings import Settings
from services.api import csat

log = logging.getLogger("services.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings) -> web.Application:
    """Return the aiohttp application of the API."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz" or csat.is_public_path(request.path):
            return await handler(request)
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not settings.api_token or not hmac.compare_digest(supplied, settings.api_token):
            return web.json_response({"error": "missing or invalid API token"}, status=401)
        return await handler(request)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def conversations(request: web.Request) -> web.Response:
        inbox = request.match_info["inbox"]
        try:
            result = await asyncio.to_thread(_query, settings, inboxes.list_conversations, inbox)
        except inboxes.InboxError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(result)

    async def conversation(request: web.Request) -> web.Response:
        try:
            result = await asyncio.to_thread(_query, settings, inboxes.show_conversation,
                                             request.match_info["conversation_id"])
        except inboxes.InboxError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(result)

    app = web.Application(middlewares=[require_token], client_max_size=1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/inboxes/{inbox}/conversations", conversations)
    app.router.add_get("/v1/conversations/{conversation_id}", conversation)
    csat.add_routes(app, settings)
    return app


def _query(settings: Settings, function: Callable[..., object], argument: str) -> object:
    with db.connect(settings.database_url) as conn:
        return function(conn, argument)


def main() -> None:
    settings = settings_module.load()
    logs.setup(settings.log_level)
    db.apply_schema(settings.database_url)
    metrics.serve(settings.metrics_host, settings.metrics_port)
    log.info("api: listening on %s:%d", settings.api_host, settings.api_port)
    try:
        web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port,
                    print=None, access_log=None)
    except psycopg.OperationalError as exc:
        log.error("api: database unavailable: %s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
