"""Inboxes, agents and conversations as the operator sees them.

The ``messagehub`` command and ``services/api`` call these functions; they
take an open connection and return plain dicts ready for JSON.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from messagehub import business_hours, ids

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class InboxError(ValueError):
    """A request about inboxes or agents is invalid; the message says which field."""


def _require_address(field: str, value: str) -> str:
    value = value.strip()
    if not _ADDRESS.match(value):
        raise InboxError(f"{field} is not a valid email address: {value!r}")
    return value


def forwarding_address(inbox_name: str, inbound_domain: str) -> str:
    """Return a new, unguessable forwarding address for an inbox.

    The readable prefix helps people recognise it in their provider's
    forwarding settings; the random part makes it impossible to guess.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", inbox_name.lower()).strip("-")[:24] or "inbox"
    return f"{slug}-{secrets.token_hex(8)}@{inbound_domain}"


def _require_one_line(field: str, value: str) -> str:
    # Names become display names in the From of every mail we send; a line
    # break there would start a header of the sender's choosing.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InboxError(f"{field} must be one line without control characters: {value!r}")
    return value


def create_inbox(conn: psycopg.Connection[Any], *, name: str, email: str, inbound_domain: str,
                 greeting_text: str | None = None, greeting_enabled: bool = False,
                 auto_assign_limit: int | None = None, locale: str = "en") -> dict[str, Any]:
    """Create an inbox; return it with its generated forwarding address."""
    name = _require_one_line("name", name.strip())
    if not name:
        raise InboxError("name must not be empty")
    email = _require_address("email", email)
    if auto_assign_limit is not None and auto_assign_limit < 1:
        raise InboxError(f"auto-assign limit must be at least 1: {auto_assign_limit}")
    if locale not in ("en", "ja"):
        raise InboxError(f"locale must be en or ja: {locale!r}")

    try:
        cursor = conn.execute(
            "INSERT INTO inboxes (id, name, email, forwarding_address, greeting_enabled, "
            "greeting_text, auto_assign_limit, locale) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING *",
            (ids.new_id(), name, email, forwarding_address(name, inbound_domain),
             greeting_enabled or greeting_text is not None, greeting_text, auto_assign_limit,
             locale))
    except psycopg.errors.UniqueViolation:
        raise InboxError(f"an inbox named {name!r} already exists") from None
    inbox = cursor.fetchone()
    assert inbox is not None
    return _inbox_json(inbox)


def find_inbox(conn: psycopg.Connection[Any], name_or_id: str) -> dict[str, Any]:
    """Return the inbox with this name (or id); raise InboxError when there is none."""
    cursor = conn.execute("SELECT * FROM inboxes WHERE name = %s OR id::text = %s",
                          (name_or_id, name_or_id))
    inbox = cursor.fetchone()
    if inbox is None:
        raise InboxError(f"inbox not found: {name_or_id!r}")
    return _inbox_json(inbox)


def add_agent(conn: psycopg.Connection[Any], *, inbox: str, name: str,
              email: str) -> dict[str, Any]:
    """Create the agent (or reuse the one with this email) and add it to the inbox."""
    target = find_inbox(conn, inbox)
    email = _require_address("email", email).lower()
    if not _require_one_line("agent name", name).strip():
        raise InboxError("agent name must not be empty")

    cursor = conn.execute(
        "INSERT INTO agents (id, name, email) VALUES (%s, %s, %s) "
        "ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING *",
        (ids.new_id(), name.strip(), email))
    agent = cursor.fetchone()
    assert agent is not None
    conn.execute("INSERT INTO inbox_agents (inbox_id, agent_id) VALUES (%s, %s) "
                 "ON CONFLICT DO NOTHING", (target["id"], agent["id"]))
    return {"id": str(agent["id"]), "name": agent["name"], "email": agent["email"],
            "availability": agent["availability"], "inbox": target["name"]}


def list_conversations(conn: psycopg.Connection[Any], inbox: str) -> list[dict[str, Any]]:
    """Return the inbox's conversations, oldest first, with their Message-IDs in order."""
    target = find_inbox(conn, inbox)
    cursor = conn.execute(
        "SELECT c.id, c.status, c.subject, c.created_at, a.name AS assignee, "
        "a.id AS assignee_id, ct.email AS contact, "
        "coalesce(array_agg(m.rfc_message_id ORDER BY m.received_at, m.id) "
        "FILTER (WHERE m.id IS NOT NULL), '{}') AS message_ids, "
        "count(m.id) AS messages, "
        "count(m.id) FILTER (WHERE m.kind = 'greeting') AS greetings_sent, "
        "EXISTS (SELECT 1 FROM assignment_queue q WHERE q.conversation_id = c.id) AS queued "
        "FROM conversations c LEFT JOIN agents a ON a.id = c.assignee_id "
        "LEFT JOIN contacts ct ON ct.id = c.contact_id "
        "LEFT JOIN messages m ON m.conversation_id = c.id "
        "WHERE c.inbox_id = %s GROUP BY c.id, a.id, ct.email ORDER BY c.created_at, c.id",
        (target["id"],))
    return [{
        "id": str(row["id"]),
        "status": row["status"],
        "assignee": row["assignee"],
        "assignee_id": str(row["assignee_id"]) if row["assignee_id"] else None,
        "queued": row["queued"],
        "subject": row["subject"],
        "contact": row["contact"],
        "messages": row["messages"],
        "greetings_sent": row["greetings_sent"],
        "message_ids": list(row["message_ids"]),
        "created_at": row["created_at"].isoformat(),
    } for row in cursor.fetchall()]


def assignee_label(conversation: dict[str, Any]) -> str:
    """Return who a listed conversation is with: an agent, "(queued)" or "(unassigned)".

    Unassigned is not always queued: list mail and autoresponses are kept
    without assignment, and a conversation waits in the queue only while
    every agent is at the limit or away.
    """
    if conversation["assignee"]:
        return str(conversation["assignee"])
    return "(queued)" if conversation["queued"] else "(unassigned)"


def show_conversation(conn: psycopg.Connection[Any], conversation_id: str) -> dict[str, Any]:
    """Return one conversation and each of its messages, decoded."""
    cursor = conn.execute(
        "SELECT c.*, i.name AS inbox, a.name AS assignee, ct.email AS contact "
        "FROM conversations c JOIN inboxes i ON i.id = c.inbox_id "
        "LEFT JOIN agents a ON a.id = c.assignee_id "
        "LEFT JOIN contacts ct ON ct.id = c.contact_id WHERE c.id::text = %s",
        (conversation_id,))
    conversation = cursor.fetchone()
    if conversation is None:
        raise InboxError(f"conversation not found: {conversation_id!r}")

    cursor = conn.execute(
        "SELECT * FROM messages WHERE conversation_id = %s ORDER BY received_at, id",
        (conversation["id"],))
    return {
        "id": str(conversation["id"]),
        "inbox": conversation["inbox"],
        "status": conversation["status"],
        "assignee": conversation["assignee"],
        "subject": conversation["subject"],
        "contact": conversation["contact"],
        "messages": [_message_json(row) for row in cursor.fetchall()],
    }


def _message_json(row: dict[str, Any]) -> dict[str, Any]:
    def addresses(items: list[dict[str, str]]) -> list[str]:
        return [f"{a['name']} <{a['email']}>" if a.get("name") else a["email"] for a in items]

    return {
        "id": str(row["id"]),
        "direction": row["direction"],
        "kind": row["kind"],
        "message_id": row["rfc_message_id"],
        "from": (f"{row['from_name']} <{row['from_email']}>" if row["from_name"]
                 else row["from_email"]),
        "to": addresses(row["to_addresses"]),
        "cc": addresses(row["cc_addresses"]),
        "subject": row["subject"],
        "text": row["text_body"],
        "attachments": [{"name": a["filename"], "size": a["size"],
                         "content_type": a["content_type"], "inline": a["inline"]}
                        for a in row["attachments"]],
        "received_at": row["received_at"].isoformat(),
    }


def _inbox_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "email": row["email"],
        "forwarding_address": row["forwarding_address"],
        "greeting_enabled": row["greeting_enabled"],
        "greeting_text": row["greeting_text"],
        "auto_assign_enabled": row["auto_assign_enabled"],
        "auto_assign_limit": row["auto_assign_limit"],
        "assign_chooser": row.get("assign_chooser"),
        "locale": row["locale"],
        "business_hours": _business_hours_json(row),
    }


def _business_hours_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "enabled": row.get("business_hours_enabled"),
        "time_zone": row.get("time_zone"),
        "hours": row.get("business_hours"),
        "holidays": [str(day) for day in row.get("holidays") or ()],
        "out_of_hours_enabled": row.get("out_of_hours_enabled"),
        "out_of_hours_text": row.get("out_of_hours_text"),
    }


def set_business_hours(conn: psycopg.Connection[Any], inbox: str, *,
                       enabled: bool | None = None, time_zone: str | None = None,
                       days: Mapping[str, str] | None = None,
                       holidays: Sequence[str] | None = None,
                       out_of_hours_enabled: bool | None = None,
                       out_of_hours_text: str | None = None) -> dict[str, Any]:
    """Change an inbox's business hours and out-of-hours note; return the new settings.

    ``days`` maps weekdays ("mon" … "sun") to what messagehub.business_hours.parse_day_hours
    reads ("09:00-12:00,13:00-17:00", "all-day", "closed"); weekdays not named keep
    their hours. ``holidays`` replaces the list of closed dates. An empty
    ``out_of_hours_text`` goes back to the default text. None leaves a setting as it is.
    """
    target = find_inbox(conn, inbox)
    cursor = conn.execute("SELECT * FROM inboxes WHERE id = %s FOR NO KEY UPDATE",
                          (target["id"],))
    row = cursor.fetchone()
    assert row is not None

    hours = dict(row["business_hours"] or {})
    zone = row["time_zone"] if time_zone is None else time_zone.strip()
    closed_dates = [str(day) for day in row["holidays"]] if holidays is None else list(holidays)
    try:
        for weekday, spec in (days or {}).items():
            if weekday not in business_hours.WEEKDAYS:
                raise business_hours.BusinessHoursError(
                    f"unknown weekday {weekday!r}: use {', '.join(business_hours.WEEKDAYS)}")
            parsed = business_hours.parse_day_hours(spec)
            hours[weekday] = [str(interval).split("-") for interval in parsed]
        schedule = business_hours.schedule_from_settings(zone, hours, closed_dates)
    except business_hours.BusinessHoursError as exc:
        raise InboxError(str(exc)) from None

    cursor = conn.execute(
        "UPDATE inboxes SET business_hours_enabled = coalesce(%s, business_hours_enabled), "
        "time_zone = %s, business_hours = %s, holidays = %s, "
        "out_of_hours_enabled = coalesce(%s, out_of_hours_enabled), "
        "out_of_hours_text = CASE WHEN %s::text IS NULL THEN out_of_hours_text "
        "ELSE nullif(%s::text, '') END WHERE id = %s RETURNING *",
        (enabled, zone, Jsonb(hours), sorted(schedule.holidays),
         out_of_hours_enabled, out_of_hours_text, out_of_hours_text, row["id"]))
    updated = cursor.fetchone()
    assert updated is not None
    return {"inbox": updated["name"], **_business_hours_json(updated)}
