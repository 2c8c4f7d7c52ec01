"""Inboxes and three of their tabs: Settings, Collaborators and Business hours.

Handlers of the ``/v1/inboxes`` routes (see :mod:`services.api.routes`).
Each change is one transaction on the ``inboxes`` row and its
``inbox_agents``; the services read those rows for every mail they handle,
so a change applies to the next mail without a restart. The Configuration
tab (forwarding, IMAP, SMTP) is in :mod:`services.api.mail_settings`.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from typing import Any

import psycopg
from aiohttp import web
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from messagehub import actions, business_hours, ids, inboxes
from services.api import access, mail_settings
from services.api.errors import FieldError, conflict, invalid
from services.api.state import json_body, json_response, pool, principal, state

log = logging.getLogger(__name__)

SETTINGS_COLUMNS = ("name", "email", "avatar_url", "greeting_enabled", "greeting_text",
                    "csat_enabled", "csat_text", "help_center_url", "sender_name_style",
                    "business_name", "locale")
# Placeholders each custom text may use; outbound fills them in.
_TEXT_PLACEHOLDERS = {
    "greeting_text": ("customer_name", "inbox_name", "help_center_url"),
    "csat_text": ("customer_name", "inbox_name", "help_center_url", "survey_url"),
    "out_of_hours_text": ("customer_name", "inbox_name", "help_center_url", "next_opening"),
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


async def list_inboxes(request: web.Request) -> web.Response:
    caller = principal(request)
    async with pool(request).connection() as conn:
        cursor = await conn.execute(
            "SELECT i.* FROM inboxes i WHERE %s::uuid IS NULL OR EXISTS (SELECT 1 FROM "
            "inbox_agents ia WHERE ia.inbox_id = i.id AND ia.agent_id = %s::uuid) "
            "ORDER BY i.name", (caller.agent_id, caller.agent_id))
        rows = await cursor.fetchall()
    return json_response({"inboxes": [_summary(row) for row in rows]})


async def create_inbox(request: web.Request) -> web.Response:
    body = await json_body(request, "InboxCreate")
    settings = state(request).settings
    async with pool(request).connection() as conn, conn.transaction():
        try:
            cursor = await conn.execute(
                "INSERT INTO inboxes (id, name, email, forwarding_address, locale) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING *",
                (ids.new_id(), body["name"].strip(), body["email"].strip(),
                 inboxes.forwarding_address(body["name"], settings.inbound_domain),
                 body.get("locale", "en")))
        except psycopg.errors.UniqueViolation:
            raise conflict(f"an inbox named {body['name'].strip()!r} already exists",
                           "name") from None
        row = await cursor.fetchone()
        assert row is not None
        result = await describe_inbox(conn, row)
    log.info("inbox %s: created %r by %s", row["id"], row["name"], principal(request).name)
    return json_response(result, status=201)


async def get_inbox(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
        return json_response(await describe_inbox(conn, row))


async def get_settings(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
    return json_response(settings_json(row))


async def patch_settings(request: web.Request) -> web.Response:
    body = await json_body(request, "InboxSettings")
    _check_texts(body)
    changes = {column: _clean(body[column]) for column in SETTINGS_COLUMNS if column in body}
    async with pool(request).connection() as conn, conn.transaction():
        row = await access.inbox_for(conn, request, lock=True)
        if changes:
            row = await _update_inbox(conn, row, changes)
    log.info("inbox %s: settings changed: %s", row["id"], ", ".join(sorted(changes)) or "none")
    return json_response(settings_json(row))


async def get_collaborators(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
        return json_response(await collaborators_json(conn, row))


async def patch_collaborators(request: web.Request) -> web.Response:
    body = await json_body(request, "Collaborators")
    async with pool(request).connection() as conn, conn.transaction():
        row = await access.inbox_for(conn, request, lock=True)
        if "agents" in body:
            agent_ids = await _resolve_agents(conn, body["agents"])
            await _replace_collaborators(conn, str(row["id"]), agent_ids)
        # Turning assignment on, raising the limit or adding an agent serves the queue.
        await actions.set_assignment(
            conn, str(row["id"]), enabled=body.get("auto_assign_enabled", actions.KEEP),
            limit=body.get("auto_assign_limit", actions.KEEP),
            chooser=body.get("assign_chooser", actions.KEEP))
        row = await access.reload_inbox(conn, str(row["id"]))
        result = await collaborators_json(conn, row)
    log.info("inbox %s: collaborators changed: %s", row["id"], ", ".join(sorted(body)) or "none")
    return json_response(result)


async def get_business_hours(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
    return json_response(business_hours_json(row))


async def patch_business_hours(request: web.Request) -> web.Response:
    body = await json_body(request, "BusinessHours")
    async with pool(request).connection() as conn, conn.transaction():
        row = await access.inbox_for(conn, request, lock=True)
        changes = _business_hours_changes(row, body)
        if changes:
            row = await _update_inbox(conn, row, changes)
    log.info("inbox %s: business hours changed: %s", row["id"], ", ".join(sorted(body)) or "none")
    return json_response(business_hours_json(row))


async def get_health(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
        return json_response(await mail_settings.health_json(conn, row))


async def forwarding_confirmations(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        row = await access.inbox_for(conn, request)
        cursor = await conn.execute(
            "SELECT id, subject, detail, created_at FROM notices WHERE inbox_id = %s "
            "AND kind = 'forwarding_confirmation' ORDER BY created_at DESC LIMIT 100",
            (row["id"],))
        notices = await cursor.fetchall()
    return json_response({"inbox": row["name"], "forwarding_address": row["forwarding_address"],
                          "confirmations": [_confirmation_json(n) for n in notices]})


# --- representations --------------------------------------------------------------


async def describe_inbox(conn: AsyncConnection[Any], row: dict[str, Any]) -> dict[str, Any]:
    """Return the inbox with every tab, as GET /v1/inboxes/{inbox} shows it."""
    return {
        **_summary(row),
        "settings": settings_json(row),
        "collaborators": await collaborators_json(conn, row),
        "business_hours": business_hours_json(row),
        "configuration": await mail_settings.configuration_json(conn, row),
    }


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "email": row["email"],
            "forwarding_address": row["forwarding_address"], "created_at": row["created_at"]}


def settings_json(row: dict[str, Any]) -> dict[str, Any]:
    """Return the Settings tab of an inbox row."""
    return {column: row.get(column) for column in SETTINGS_COLUMNS}


async def collaborators_json(conn: AsyncConnection[Any], row: dict[str, Any]) -> dict[str, Any]:
    """Return the Collaborators tab: the agents and the auto-assignment settings."""
    cursor = await conn.execute(
        "SELECT a.id, a.name, a.email, a.availability FROM inbox_agents ia "
        "JOIN agents a ON a.id = ia.agent_id WHERE ia.inbox_id = %s ORDER BY a.email",
        (row["id"],))
    agents = [{**agent, "id": str(agent["id"])} for agent in await cursor.fetchall()]
    return {"agents": agents, "auto_assign_enabled": row["auto_assign_enabled"],
            "auto_assign_limit": row["auto_assign_limit"],
            "assign_chooser": row.get("assign_chooser")}


def business_hours_json(row: dict[str, Any]) -> dict[str, Any]:
    """Return the Business hours tab; every weekday is listed, [] when closed."""
    hours = row.get("business_hours") or {}
    return {
        "enabled": row.get("business_hours_enabled"),
        "time_zone": row.get("time_zone"),
        "hours": {day: hours.get(day, []) for day in business_hours.WEEKDAYS},
        "holidays": [str(day) for day in row.get("holidays") or ()],
        "out_of_hours_enabled": row.get("out_of_hours_enabled"),
        "out_of_hours_text": row.get("out_of_hours_text"),
    }


def _confirmation_json(notice: dict[str, Any]) -> dict[str, Any]:
    detail = notice["detail"] or {}
    confirmation = detail.get("forwarding_confirmation") or {}
    return {"id": str(notice["id"]), "received_at": notice["created_at"],
            "subject": notice["subject"], "from": detail.get("from"),
            "provider": confirmation.get("provider"), "code": confirmation.get("code"),
            "link": confirmation.get("link")}


# --- changes -------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _check_texts(body: dict[str, Any]) -> None:
    errors = [error for column in _TEXT_PLACEHOLDERS if body.get(column)
              for error in _text_errors(column, body[column])]
    if errors:
        raise invalid(errors)


def _text_errors(column: str, text: str) -> list[FieldError]:
    allowed = _TEXT_PLACEHOLDERS[column]
    unknown = sorted({name for name in _PLACEHOLDER.findall(text) if name not in allowed})
    errors = [FieldError(column, f"unknown placeholder {{{name}}}: use "
                         + ", ".join("{" + a + "}" for a in allowed)) for name in unknown]
    if column == "csat_text" and "{survey_url}" not in text:
        errors.append(FieldError(column, "must contain {survey_url}, the link to the survey"))
    return errors


async def _update_inbox(conn: AsyncConnection[Any], row: dict[str, Any],
                        changes: dict[str, Any]) -> dict[str, Any]:
    assignments = ", ".join(f"{column} = %({column})s" for column in changes)
    values = {column: Jsonb(value) if isinstance(value, dict) else value
              for column, value in changes.items()}
    try:
        cursor = await conn.execute(f"UPDATE inboxes SET {assignments} WHERE id = %(id)s "
                                    "RETURNING *", {**values, "id": row["id"]})
    except psycopg.errors.UniqueViolation:
        raise conflict(f"an inbox named {changes.get('name')!r} already exists", "name") from None
    updated: dict[str, Any] | None = await cursor.fetchone()
    assert updated is not None
    return updated


async def _resolve_agents(conn: AsyncConnection[Any], references: list[str]) -> list[str]:
    found: list[str] = []
    errors: list[FieldError] = []
    for position, reference in enumerate(references):
        cursor = await conn.execute(
            "SELECT id FROM agents WHERE email = lower(%s) OR id::text = lower(%s)",
            (reference.strip(), reference.strip()))
        row = await cursor.fetchone()
        if row is None:
            errors.append(FieldError(f"agents.{position}", "no agent has this id or email: "
                                     "create the agent first (POST /v1/agents)"))
        else:
            found.append(str(row["id"]))
    if errors:
        raise invalid(errors)
    return found


async def _replace_collaborators(conn: AsyncConnection[Any], inbox_id: str,
                                 agent_ids: list[str]) -> None:
    await conn.execute("DELETE FROM inbox_agents WHERE inbox_id = %s AND NOT agent_id = ANY(%s)",
                       (inbox_id, agent_ids))
    for agent_id in agent_ids:
        await conn.execute("INSERT INTO inbox_agents (inbox_id, agent_id) VALUES (%s, %s) "
                           "ON CONFLICT DO NOTHING", (inbox_id, agent_id))


def _business_hours_changes(row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Return the columns to write, after checking the merged schedule; raise 422 per field."""
    errors: list[FieldError] = []
    zone = body.get("time_zone", row["time_zone"]).strip()
    try:
        business_hours.load_zone(zone)
    except business_hours.BusinessHoursError as exc:
        errors.append(FieldError("time_zone", str(exc)))

    hours = dict(row["business_hours"] or {})
    for weekday, pairs in (body.get("hours") or {}).items():
        try:
            parsed = [business_hours.parse_interval(opens, closes) for opens, closes in pairs]
        except business_hours.BusinessHoursError as exc:
            errors.append(FieldError(f"hours.{weekday}", str(exc)))
            continue
        hours[weekday] = [str(interval).split("-") for interval in parsed]
    if errors:
        raise invalid(errors)

    changes: dict[str, Any] = {"time_zone": zone, "business_hours": hours}
    for field, column in (("enabled", "business_hours_enabled"),
                          ("out_of_hours_enabled", "out_of_hours_enabled")):
        if field in body:
            changes[column] = body[field]
    if "holidays" in body:
        changes["holidays"] = sorted(date.fromisoformat(day) for day in body["holidays"])
    if "out_of_hours_text" in body:
        text = body["out_of_hours_text"]
        if text:
            _check_texts({"out_of_hours_text": text})
        changes["out_of_hours_text"] = text.strip() or None if text is not None else None
    return changes
