"""Every route of the API: method, path, handler, the scopes it admits, and its documentation.

:mod:`services.api.app` registers :data:`ROUTES` and its middleware checks
each request against the route's scopes, so a route cannot exist without
naming who may call it. :mod:`services.api.openapi` builds the published
document from the same table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from services.api import (
    admin_routes,
    agent_routes,
    attachment_routes,
    connection_tests,
    conversation_routes,
    inbox_routes,
    mail_settings,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADMIN = ("admin",)
ALL = ("admin", "agent", "service")
OPERATORS = ("admin", "service")


@dataclass(frozen=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    handler: Handler
    scopes: tuple[str, ...]
    summary: str
    tag: str
    request: str | None = None
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()


def _inbox(method: str, suffix: str, handler: Handler, scopes: tuple[str, ...], summary: str,
           **extra: object) -> Route:
    return Route(method, "/v1/inboxes/{inbox}" + suffix, handler, scopes, summary, "inboxes",
                 **extra)  # type: ignore[arg-type]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/inboxes", inbox_routes.list_inboxes, ALL,
          "List inboxes (an agent token sees the inboxes its agent works in)", "inboxes"),
    Route("POST", "/v1/inboxes", inbox_routes.create_inbox, ADMIN,
          "Create an inbox; the answer has its generated forwarding address", "inboxes",
          request="InboxCreate", status=201),
    _inbox("GET", "", inbox_routes.get_inbox, ALL, "Read an inbox with all four tabs"),
    _inbox("GET", "/settings", inbox_routes.get_settings, ALL, "Read the Settings tab"),
    _inbox("PATCH", "/settings", inbox_routes.patch_settings, ADMIN,
           "Change the Settings tab: name, avatar, greeting, CSAT, help center, sender name, "
           "locale", request="InboxSettings"),
    _inbox("GET", "/collaborators", inbox_routes.get_collaborators, ALL,
           "Read the Collaborators tab"),
    _inbox("PATCH", "/collaborators", inbox_routes.patch_collaborators, ADMIN,
           "Change the collaborators and auto-assignment", request="Collaborators"),
    _inbox("GET", "/business-hours", inbox_routes.get_business_hours, ALL,
           "Read the Business hours tab"),
    _inbox("PATCH", "/business-hours", inbox_routes.patch_business_hours, ADMIN,
           "Change business hours, holidays and the out-of-hours message",
           request="BusinessHours"),
    _inbox("GET", "/imap", mail_settings.get_imap, ADMIN, "Read the IMAP settings"),
    _inbox("PATCH", "/imap", mail_settings.patch_imap, ADMIN,
           "Change the IMAP settings; ingest reconnects with them at once",
           request="ImapSettings"),
    _inbox("DELETE", "/imap", mail_settings.delete_imap, ADMIN,
           "Remove the IMAP settings (refused while SMTP is on)", status=204),
    _inbox("POST", "/imap/test", connection_tests.check_imap, ADMIN,
           "Test the IMAP settings, stored or given in the body", request="ImapSettings"),
    _inbox("GET", "/smtp", mail_settings.get_smtp, ADMIN, "Read the SMTP settings"),
    _inbox("PATCH", "/smtp", mail_settings.patch_smtp, ADMIN,
           "Change the SMTP settings (refused until IMAP is set up)", request="SmtpSettings"),
    _inbox("DELETE", "/smtp", mail_settings.delete_smtp, ADMIN,
           "Remove the SMTP settings; mail goes through the relay again", status=204),
    _inbox("POST", "/smtp/test", connection_tests.check_smtp, ADMIN,
           "Test the SMTP settings, stored or given in the body", request="SmtpSettings"),
    _inbox("GET", "/health", inbox_routes.get_health, OPERATORS,
           "Inbox health: last sync, last error and since when"),
    _inbox("GET", "/forwarding-confirmations", inbox_routes.forwarding_confirmations, ADMIN,
           "Provider confirmation mails for the forwarding address, with codes and links"),
    _inbox("GET", "/conversations", conversation_routes.list_conversations, ALL,
           "List the inbox's conversations",
           query=(("status", "open or resolved"),
                  ("assignee", "agent id or email, or none for unassigned"),
                  ("limit", "1 to 500, default 50"), ("offset", "default 0"))),
    Route("GET", "/v1/agents", agent_routes.list_agents, ALL, "List agents", "agents"),
    Route("POST", "/v1/agents", agent_routes.create_agent, ADMIN,
          "Create an agent, optionally in inboxes", "agents", request="AgentCreate", status=201),
    Route("GET", "/v1/agents/{agent}", agent_routes.get_agent, ALL, "Read an agent", "agents"),
    Route("PUT", "/v1/agents/{agent}/availability", agent_routes.set_availability, ALL,
          "Set an agent online, busy or offline (an agent token: only its own)", "agents",
          request="Availability"),
    Route("GET", "/v1/conversations", conversation_routes.list_conversations, ALL,
          "List and filter conversations", "conversations",
          query=(("inbox", "inbox name or id"), ("status", "open or resolved"),
                 ("assignee", "agent id or email, or none for unassigned"),
                 ("limit", "1 to 500, default 50"), ("offset", "default 0"))),
    Route("GET", "/v1/conversations/{conversation}", conversation_routes.get_conversation, ALL,
          "Read a conversation and its messages", "conversations"),
    Route("POST", "/v1/conversations/{conversation}/reply", conversation_routes.reply, ALL,
          "Reply as an agent; sent once per request id (Idempotency-Key header)",
          "conversations", request="Reply", status=202),
    Route("POST", "/v1/conversations/{conversation}/resolve", conversation_routes.resolve, ALL,
          "Resolve a conversation", "conversations", request="Empty"),
    Route("POST", "/v1/conversations/{conversation}/reopen", conversation_routes.reopen, ALL,
          "Reopen a conversation", "conversations", request="Empty"),
    Route("POST", "/v1/conversations/{conversation}/assign", conversation_routes.assign, ALL,
          "Assign a conversation to an agent", "conversations", request="Assign"),
    Route("POST", "/v1/conversations/{conversation}/unassign", conversation_routes.unassign,
          ALL, "Take a conversation from its agent", "conversations", request="Unassign"),
    Route("GET", "/v1/messages/{message}/attachments/{sha256}", attachment_routes.get_attachment,
          ALL, "Download an attachment of a message; raster images inline, anything else as "
          "a file", "conversations"),
    Route("GET", "/v1/tokens", admin_routes.list_tokens, ADMIN, "List API tokens", "admin"),
    Route("POST", "/v1/tokens", admin_routes.create_token, ADMIN,
          "Create an API token; the answer is the only time it is shown", "admin",
          request="TokenCreate", status=201),
    Route("DELETE", "/v1/tokens/{token_id}", admin_routes.revoke_token, ADMIN,
          "Revoke an API token", "admin", status=204),
    Route("GET", "/v1/dead-letters", admin_routes.list_dead_letters, ADMIN,
          "List the records the stages gave up on, newest first", "admin",
          query=(("stage", "router, assign or outbound"), ("limit", "1 to 1000, default 100"))),
    Route("POST", "/v1/dead-letters/{dead_letter_id}/retry", admin_routes.retry_dead_letter,
          ADMIN, "Send a dead letter's record back to its source topic, once", "admin",
          status=202),
    Route("POST", "/v1/encryption/rotate", admin_routes.rotate_encryption, ADMIN,
          "Encrypt every stored password again with the newest key", "admin"),
)


def add_routes(app: web.Application) -> dict[tuple[str, str], Route]:
    """Register :data:`ROUTES` on ``app``; return them by (method, path) for the middleware."""
    table: dict[tuple[str, str], Route] = {}
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
        table[(route.method, route.path)] = route
    return table
