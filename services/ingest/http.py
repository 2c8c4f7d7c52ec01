"""HTTP upload of raw MIME: for providers' inbound webhooks and for tests.

``POST /v1/inboxes/{inbox_id}/mail`` takes one raw RFC 5322 message as the
request body for that inbox. ``POST /v1/mail`` takes one for whichever
inboxes it names: the ``recipient`` query parameters (the webhook's envelope,
repeatable) and, when none of them is a forwarding address, the
Delivered-To, X-Forwarded-To, X-Original-To, To and Cc headers.

The guarantees are those of the SMTP receiver: 202 only after the bytes are
stored and Kafka acknowledged ``mail.received``; 503 with Retry-After when
the store or Kafka is unavailable; 413 over the size limit; 404 when no
inbox matches. Every route but ``/healthz`` needs
``Authorization: Bearer <MESSAGEHUB_INGEST_HTTP_TOKEN>``; with no token
configured the upload routes are closed.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from services.ingest.intake import IntakeUnavailable, MailIntake
from services.ingest.receiver import IngestSensor
from services.ingest.routing import header_addresses, normalize_address

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_SECONDS = 30


class UploadDirectory(Protocol):
    """What the upload needs from the inbox directory."""

    async def inboxes_for_addresses(self, addresses: list[str]) -> dict[str, str]: ...

    async def inbox_exists(self, inbox_id: str) -> bool: ...


def create_app(*, intake: MailIntake, directory: UploadDirectory, sensor: IngestSensor,
               token: str, max_message_bytes: int) -> web.Application:
    """Return the aiohttp application of the upload endpoint."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(supplied.encode(), token.encode()):
            return _error(401, "missing or invalid bearer token")
        return await handler(request)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def upload_for_inbox(request: web.Request) -> web.Response:
        inbox_id = request.match_info["inbox_id"]
        if not await directory.inbox_exists(inbox_id):
            return _error(404, f"inbox not found: {inbox_id!r}")
        return await _accept(request, {inbox_id: []})

    async def upload(request: web.Request) -> web.Response:
        raw = await request.read()
        recipients = [normalize_address(value) for value in request.query.getall("recipient", [])]
        found = await directory.inboxes_for_addresses(recipients)
        inboxes: dict[str, list[str]] = {}
        for address in recipients:
            if address in found:
                inboxes.setdefault(found[address], []).append(address)
        if not inboxes:
            by_header = await directory.inboxes_for_addresses(header_addresses(raw))
            inboxes = {inbox_id: [] for inbox_id in by_header.values()}
        if not inboxes:
            return _error(404, "no messagehub forwarding address in the recipient parameters or "
                               "in the Delivered-To, X-Forwarded-To, X-Original-To, To and Cc "
                               "headers")
        return await _accept(request, inboxes)

    async def _accept(request: web.Request, inboxes: dict[str, list[str]]) -> web.Response:
        started = time.perf_counter()
        raw = await request.read()
        if not raw.strip():
            return _error(400, "the request body is empty: send the raw message as the body")

        try:
            accepted = await intake.accept(raw, list(inboxes), source="http",
                                           envelope_recipients=inboxes)
        except IntakeUnavailable as exc:
            sensor.on_rejected("http", "temporary_failure")
            log.warning("peer %s: upload of %d bytes failed, answered 503: %s",
                        request.remote, len(raw), exc)
            return _error(503, "storing the mail failed for now; retry later",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

        sensor.on_accepted("http", time.perf_counter() - started)
        log.info("Message-ID %s sha256 %s: accepted over HTTP for inbox(es) %s",
                 accepted.summary.message_id, accepted.sha256[:16], ",".join(inboxes))
        return web.json_response({"sha256": accepted.sha256, "event_ids": accepted.event_ids},
                                 status=202)

    app = web.Application(middlewares=[require_token], client_max_size=max_message_bytes)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/inboxes/{inbox_id}/mail", upload_for_inbox)
    app.router.add_post("/v1/mail", upload)
    return app


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
