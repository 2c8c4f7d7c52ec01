"""Agents: creating them, listing them and setting their availability.

Handlers of ``/v1/agents``. Availability goes through
:func:`messagehub.actions.set_availability`, which serves the assignment
queues at once when an agent comes online, under the assign service's
rules.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from aiohttp import web
from psycopg import AsyncConnection

from messagehub import actions, ids
from services.api import access
from services.api.errors import ApiError, FieldError, conflict, invalid, not_found
from services.api.state import json_body, json_response, pool, principal, state

log = logging.getLogger(__name__)


async def list_agents(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        cursor = await conn.execute("SELECT * FROM agents ORDER BY email")
        agents = [await agent_json(conn, row) for row in await cursor.fetchall()]
    return json_response({"agents": agents})


async def create_agent(request: web.Request) -> web.Response:
    body = await json_body(request, "AgentCreate")
    async with pool(request).connection() as conn, conn.transaction():
        inbox_ids = await _resolve_inboxes(conn, body.get("inboxes", []))
        try:
            cursor = await conn.execute(
                "INSERT INTO agents (id, name, email, availability) VALUES (%s, %s, %s, %s) "
                "RETURNING *", (ids.new_id(), body["name"].strip(), body["email"].strip().lower(),
                                body.get("availability", "online")))
        except psycopg.errors.UniqueViolation:
            raise conflict(f"an agent with email {body['email'].strip().lower()!r} already "
                           "exists", "email") from None
        agent = await cursor.fetchone()
        assert agent is not None
        for inbox_id in inbox_ids:
            await conn.execute("INSERT INTO inbox_agents (inbox_id, agent_id) VALUES (%s, %s)",
                               (inbox_id, agent["id"]))
        result = await agent_json(conn, agent)
    log.info("agent %s: created %s by %s", agent["id"], agent["email"], principal(request).name)
    return json_response(result, status=201)


async def get_agent(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        agent = await access.find_agent(conn, request.match_info["agent"])
        if agent is None:
            raise not_found("agent", request.match_info["agent"])
        return json_response(await agent_json(conn, agent))


async def set_availability(request: web.Request) -> web.Response:
    body = await json_body(request, "Availability")
    reference = request.match_info["agent"]
    async with pool(request).connection() as conn:
        agent = await access.find_agent(conn, reference)
    caller = principal(request)
    if agent is None:
        raise not_found("agent", reference)
    if caller.agent_id is not None and caller.agent_id != str(agent["id"]):
        raise ApiError(403, "forbidden", "an agent token may set only its own agent's "
                       "availability")
    try:
        result = await actions.run(state(request).settings.database_url,
                                   actions.set_availability, str(agent["id"]),
                                   body["availability"])
    except actions.NotFound:
        raise not_found("agent", reference) from None
    return json_response(result)


async def agent_json(conn: AsyncConnection[Any], row: dict[str, Any]) -> dict[str, Any]:
    """Return an agent with the names of the inboxes it works in."""
    cursor = await conn.execute(
        "SELECT i.name FROM inbox_agents ia JOIN inboxes i ON i.id = ia.inbox_id "
        "WHERE ia.agent_id = %s ORDER BY i.name", (row["id"],))
    return {"id": str(row["id"]), "name": row["name"], "email": row["email"],
            "availability": row["availability"], "created_at": row["created_at"],
            "inboxes": [inbox["name"] for inbox in await cursor.fetchall()]}


async def _resolve_inboxes(conn: AsyncConnection[Any], references: list[str]) -> list[str]:
    found: list[str] = []
    errors: list[FieldError] = []
    for position, reference in enumerate(references):
        cursor = await conn.execute("SELECT id FROM inboxes WHERE name = %s OR id::text = %s",
                                    (reference, reference.lower()))
        row = await cursor.fetchone()
        if row is None:
            errors.append(FieldError(f"inboxes.{position}", "no inbox has this name or id"))
        elif str(row["id"]) not in found:
            found.append(str(row["id"]))
    if errors:
        raise invalid(errors)
    return found
