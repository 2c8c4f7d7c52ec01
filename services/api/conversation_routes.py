"""Conversations: listing and filtering, reading messages, replying and the agents' actions.

Handlers of ``/v1/conversations``. A reply is an ``OutboundRequest`` of kind
agent written to the outbox; the stage services' outbox relays publish it on
``outbound.requests`` and outbound sends it once per request id (an
``Idempotency-Key`` header makes the request id repeatable). Resolve,
reopen, assign and unassign are :mod:`messagehub.actions`, which apply the
assign service's rules and emit the ConversationEvents.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from messagehub import actions, assignment, ids, outbox, topics
from services.api import access
from services.api.errors import ApiError, FieldError, invalid
from services.api.schemas import STATUSES
from services.api.state import json_body, json_response, pool, principal, state

log = logging.getLogger(__name__)

MAX_PAGE = 500
DEFAULT_PAGE = 50


async def list_conversations(request: web.Request) -> web.Response:
    filters = _filters(request)
    caller = principal(request)
    async with pool(request).connection() as conn:
        if filters["inbox"] is not None:
            inbox = await access.inbox_by_reference(conn, request, filters["inbox"])
            filters["inbox_id"] = str(inbox["id"])
        if filters["assignee"] not in (None, "none"):
            agent = await access.find_agent(conn, filters["assignee"])
            if agent is None:
                raise invalid([FieldError("assignee", "no agent has this id or email")])
            filters["assignee_id"] = str(agent["id"])
        cursor = await conn.execute(_LIST_QUERY, {**filters, "agent": caller.agent_id})
        rows = await cursor.fetchall()
    return json_response({"conversations": [_summary(row) for row in rows],
                          "limit": filters["limit"], "offset": filters["offset"]})


_LIST_QUERY = """
SELECT c.id, c.inbox_id, i.name AS inbox, c.status, c.subject, c.created_at, c.last_message_at,
       c.assignee_id, a.email AS assignee, ct.email AS contact,
       (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages
FROM conversations c
JOIN inboxes i ON i.id = c.inbox_id
LEFT JOIN agents a ON a.id = c.assignee_id
LEFT JOIN contacts ct ON ct.id = c.contact_id
WHERE (%(inbox_id)s::uuid IS NULL OR c.inbox_id = %(inbox_id)s::uuid)
  AND (%(status)s::text IS NULL OR c.status = %(status)s::text)
  AND (%(assignee)s::text IS NULL
       OR (%(assignee)s::text = 'none' AND c.assignee_id IS NULL)
       OR c.assignee_id = %(assignee_id)s::uuid)
  AND (%(agent)s::uuid IS NULL OR EXISTS (SELECT 1 FROM inbox_agents ia
       WHERE ia.inbox_id = c.inbox_id AND ia.agent_id = %(agent)s::uuid))
ORDER BY c.last_message_at DESC, c.id
LIMIT %(limit)s OFFSET %(offset)s
"""


def _filters(request: web.Request) -> dict[str, Any]:
    """Return the list's filters from the query string; raise 422 per invalid parameter."""
    query = request.rel_url.query
    errors: list[FieldError] = []
    status = query.get("status")
    if status is not None and status not in STATUSES:
        errors.append(FieldError("status", f"must be one of: {', '.join(STATUSES)}"))
    numbers = {}
    for name, default, highest in (("limit", DEFAULT_PAGE, MAX_PAGE), ("offset", 0, 1_000_000)):
        text = query.get(name, str(default))
        if not text.isdigit() or int(text) > highest or (name == "limit" and int(text) < 1):
            errors.append(FieldError(name, f"must be a whole number from {int(name == 'limit')} "
                                     f"to {highest}"))
        else:
            numbers[name] = int(text)
    unknown = set(query) - {"inbox", "status", "assignee", "limit", "offset"}
    errors += [FieldError(name, "is not a parameter of this request") for name in sorted(unknown)]
    if errors:
        raise invalid(errors)
    return {"inbox": request.match_info.get("inbox") or query.get("inbox"), "inbox_id": None,
            "status": status, "assignee": query.get("assignee"), "assignee_id": None, **numbers}


async def get_conversation(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        conversation = await access.conversation_for(conn, request)
        cursor = await conn.execute(
            "SELECT * FROM messages WHERE conversation_id = %s ORDER BY received_at, id",
            (conversation["id"],))
        messages = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT ct.email, ct.name FROM contacts ct WHERE ct.id = %s",
            (conversation["contact_id"],))
        contact = await cursor.fetchone()
        described = await actions.describe(conn, str(conversation["id"]))
    return json_response({
        **_summary({**conversation, "inbox": conversation["inbox_name"],
                    "assignee": described["assignee"], "contact": contact and contact["email"],
                    "messages": len(messages)}),
        "queued": described["queued"],
        "messages": [_message_json(row) for row in messages],
    })


async def reply(request: web.Request) -> web.Response:
    body = await json_body(request, "Reply")
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()
    if len(idempotency_key) > 200:
        raise invalid([FieldError("Idempotency-Key", "must be at most 200 characters")])
    async with pool(request).connection() as conn, conn.transaction():
        conversation = await access.conversation_for(conn, request)
        conversation_id, inbox_id = str(conversation["id"]), str(conversation["inbox_id"])
        agent_id = await access.acting_agent(conn, request, body.get("agent"))
        if agent_id is not None and not await assignment.is_collaborator(conn, inbox_id,
                                                                         agent_id):
            raise invalid([FieldError("agent", "this agent does not work in the conversation's "
                                      "inbox: add them as a collaborator first")])
        request_id = (ids.derive_id("agent-reply", conversation_id, idempotency_key)
                      if idempotency_key else ids.new_id())
        await outbox.add(conn, topics.OUTBOUND_REQUESTS, inbox_id, "OutboundRequest", {
            "event_id": request_id, "occurred_at": datetime.now(timezone.utc),
            "inbox_id": inbox_id, "conversation_id": conversation_id, "schema_version": 1,
            "request_id": request_id, "kind": "agent", "agent_id": agent_id,
            "text": body["text"], "html": body.get("html")})
    log.info("inbox %s conversation %s: agent reply requested, request %s, agent %s",
             inbox_id, conversation_id, request_id, agent_id or "none")
    return json_response({"request_id": request_id, "conversation_id": conversation_id,
                          "status": "queued"}, status=202)


async def resolve(request: web.Request) -> web.Response:
    await json_body(request, "Empty", optional=True)
    return await _act(request, actions.resolve)


async def reopen(request: web.Request) -> web.Response:
    await json_body(request, "Empty", optional=True)
    return await _act(request, actions.reopen)


async def assign(request: web.Request) -> web.Response:
    body = await json_body(request, "Assign")
    async with pool(request).connection() as conn:
        target = await access.find_agent(conn, body["agent"])
    if target is None:
        raise invalid([FieldError("agent", "no agent has this id or email")])
    return await _act(request, actions.assign, str(target["id"]),
                      exceed_limit=body.get("exceed_limit", False))


async def unassign(request: web.Request) -> web.Response:
    body = await json_body(request, "Unassign", optional=True)
    return await _act(request, actions.unassign, requeue=body.get("requeue", False))


async def _act(request: web.Request, action: Any, *args: Any, **kwargs: Any) -> web.Response:
    """Run one conversation action as the caller's agent; map refusals to 4xx."""
    async with pool(request).connection() as conn:
        conversation = await access.conversation_for(conn, request)
        actor_id = await access.acting_agent(conn, request, None)
    try:
        result = await actions.run(state(request).settings.database_url, action,
                                   str(conversation["id"]), *args, actor_id=actor_id, **kwargs)
    except actions.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except actions.AgentAtLimit as exc:
        raise ApiError(409, "agent_at_limit", str(exc),
                       [FieldError("exceed_limit", "set true to assign over the limit")]) from None
    except actions.NotACollaborator as exc:
        raise invalid([FieldError("agent", str(exc))], str(exc)) from None
    except actions.ActionError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return json_response(result)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "inbox_id": str(row["inbox_id"]), "inbox": row["inbox"],
            "status": row["status"], "subject": row["subject"], "contact": row["contact"],
            "assignee": row["assignee"],
            "assignee_id": str(row["assignee_id"]) if row["assignee_id"] else None,
            "messages": row["messages"], "created_at": row["created_at"],
            "last_message_at": row["last_message_at"]}


def _message_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "direction": row["direction"], "kind": row["kind"],
        "message_id": row["rfc_message_id"],
        "from": {"name": row["from_name"], "email": row["from_email"]},
        "to": row["to_addresses"], "cc": row["cc_addresses"], "subject": row["subject"],
        "text": row["text_body"], "html": row["html_body"],
        "attachments": [_attachment_json(row["id"], a) for a in row["attachments"]],
        "received_at": row["received_at"], "sent_at": row["sent_at"],
    }


def _attachment_json(message_id: Any, attachment: dict[str, Any]) -> dict[str, Any]:
    digest = attachment.get("sha256")
    return {"name": attachment.get("filename"), "size": attachment.get("size"),
            "content_type": attachment.get("content_type"), "sha256": digest,
            "inline": bool(attachment.get("inline")),
            "url": ids.attachment_path(str(message_id), digest) if digest else None}
