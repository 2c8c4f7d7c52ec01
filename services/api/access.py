"""Finding the inbox, conversation or agent a request names, within the caller's reach.

Route handlers call these with the ``{inbox}``, ``{conversation}`` or
``{agent}`` of the URL, which may be an id, an inbox name or an agent's
email. An agent token reaches only the inboxes its agent works in, and
their conversations. Anything else gets a 404, so that a token does not
reveal what exists beyond its reach.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from psycopg import AsyncConnection

from services.api.errors import ApiError, FieldError, not_found
from services.api.state import principal


async def inbox_for(conn: AsyncConnection[Any], request: web.Request, *,
                    lock: bool = False) -> dict[str, Any]:
    """Return the row of the URL's inbox (locked FOR NO KEY UPDATE when ``lock``)."""
    return await inbox_by_reference(conn, request, request.match_info["inbox"], lock=lock)


async def inbox_by_reference(conn: AsyncConnection[Any], request: web.Request, reference: str,
                             *, lock: bool = False) -> dict[str, Any]:
    """Return the row of the inbox with this name or id, within the caller's reach."""
    cursor = await conn.execute(
        "SELECT * FROM inboxes WHERE name = %s OR id::text = lower(%s)"
        + (" FOR NO KEY UPDATE" if lock else ""), (reference, reference))
    row: dict[str, Any] | None = await cursor.fetchone()
    if row is None or not await _may_see_inbox(conn, request, str(row["id"])):
        raise not_found("inbox", reference)
    return row


async def reload_inbox(conn: AsyncConnection[Any], inbox_id: str) -> dict[str, Any]:
    """Return the inbox row as it is now."""
    cursor = await conn.execute("SELECT * FROM inboxes WHERE id = %s", (inbox_id,))
    row: dict[str, Any] | None = await cursor.fetchone()
    assert row is not None
    return row


async def conversation_for(conn: AsyncConnection[Any], request: web.Request) -> dict[str, Any]:
    """Return the URL's conversation with its inbox name; 404 when out of reach."""
    reference = request.match_info["conversation"]
    cursor = await conn.execute(
        "SELECT c.*, i.name AS inbox_name FROM conversations c "
        "JOIN inboxes i ON i.id = c.inbox_id WHERE c.id::text = lower(%s)", (reference,))
    row: dict[str, Any] | None = await cursor.fetchone()
    if row is None or not await _may_see_inbox(conn, request, str(row["inbox_id"])):
        raise not_found("conversation", reference)
    return row


async def message_for(conn: AsyncConnection[Any], request: web.Request) -> dict[str, Any]:
    """Return the URL's message (id, inbox, attachments); 404 when out of reach."""
    reference = request.match_info["message"]
    cursor = await conn.execute(
        "SELECT id, inbox_id, attachments FROM messages WHERE id::text = lower(%s)",
        (reference,))
    row: dict[str, Any] | None = await cursor.fetchone()
    if row is None or not await _may_see_inbox(conn, request, str(row["inbox_id"])):
        raise not_found("message", reference)
    return row


async def find_agent(conn: AsyncConnection[Any], reference: str) -> dict[str, Any] | None:
    """Return the agent with this id or email, or None."""
    cursor = await conn.execute(
        "SELECT * FROM agents WHERE email = lower(%s) OR id::text = lower(%s)",
        (reference.strip(), reference.strip()))
    row: dict[str, Any] | None = await cursor.fetchone()
    return row


async def acting_agent(conn: AsyncConnection[Any], request: web.Request,
                       reference: str | None, *, field: str = "agent") -> str | None:
    """Return the id of the agent a conversation action is taken as.

    An agent token always acts as its own agent and may not name another.
    Admin and service tokens may name one, or none for an operator.
    """
    caller = principal(request)
    if caller.agent_id is not None:
        if reference and reference.strip().lower() not in await _agent_names(conn,
                                                                             caller.agent_id):
            raise ApiError(403, "forbidden", f"an agent token acts as its own agent: leave "
                           f"{field} out or name the token's agent")
        return caller.agent_id
    if not reference:
        return None
    agent = await find_agent(conn, reference)
    if agent is None:
        raise ApiError(422, "invalid_request", f"{field}: no agent has this id or email",
                       [FieldError(field, "no agent has this id or email")])
    return str(agent["id"])


async def _agent_names(conn: AsyncConnection[Any], agent_id: str) -> set[str]:
    cursor = await conn.execute("SELECT id::text AS id, email FROM agents WHERE id = %s",
                                (agent_id,))
    row = await cursor.fetchone()
    return {row["id"], row["email"]} if row else set()


async def _may_see_inbox(conn: AsyncConnection[Any], request: web.Request, inbox_id: str) -> bool:
    caller = principal(request)
    if caller.agent_id is None:
        return True
    cursor = await conn.execute("SELECT 1 FROM inbox_agents WHERE inbox_id = %s AND agent_id = %s",
                                (inbox_id, caller.agent_id))
    return await cursor.fetchone() is not None
