"""The automatic answer to a customer's mail: a greeting, an out-of-hours note, or nothing.

The assign stage calls :func:`answer_mail` for the first mail of a new
conversation and for every later incoming mail. Business hours are judged
in the inbox's zone at the mail's arrival (``mail_received_at`` of the
event), not at the moment this runs, so a mail that waited in Kafka is
judged by when it came. A note is requested at most once per conversation
and closed period: ``out_of_hours_notes`` records the period by the instant
it ends, and the request id is derived from it, so a redelivered event
cannot send a second note either.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from messagehub import business_hours, ids, outbox, topics
from services.assign import policy

log = logging.getLogger(__name__)


def arrival_of(event: dict[str, Any]) -> datetime:
    """Return when the event's mail arrived (IMAP INTERNALDATE or ingest's acceptance time)."""
    arrival = event.get("mail_received_at") or event["occurred_at"]
    assert isinstance(arrival, datetime)
    return arrival if arrival.tzinfo else arrival.replace(tzinfo=timezone.utc)


def schedule_of(inbox: dict[str, Any]) -> business_hours.Schedule | None:
    """Return the inbox's business hours, or None when it has none (or they are unusable)."""
    if not inbox.get("business_hours_enabled"):
        return None
    try:
        return business_hours.schedule_from_settings(
            inbox["time_zone"], inbox["business_hours"] or {}, inbox["holidays"] or ())
    except business_hours.BusinessHoursError as exc:
        # Settings are validated when written; this is a zone the tz
        # database dropped, or a row edited by hand. Mail must keep flowing.
        log.warning("assign: inbox %s: business hours ignored, invalid: %s", inbox["id"], exc)
        return None


async def answer_mail(conn: AsyncConnection[Any], inbox: dict[str, Any],
                      event: dict[str, Any], *, first_message: bool) -> str | None:
    """Request the automatic answer the mail behind ``event`` gets; return its kind or None."""
    arrival = arrival_of(event)
    schedule = schedule_of(inbox)
    hours_open = None if schedule is None else business_hours.is_open(schedule, arrival)
    replied = False
    if hours_open is False and not first_message:
        replied = await _agent_replied_since(conn, event["conversation_id"],
                                             arrival - policy.AGENT_REPLY_QUIET_PERIOD)

    kind = policy.automatic_answer(
        message_kind=event["message_kind"], contact_email=event["contact_email"],
        first_message=first_message, hours_open=hours_open,
        greeting_enabled=inbox["greeting_enabled"],
        out_of_hours_enabled=inbox["out_of_hours_enabled"], agent_replied_recently=replied)
    if kind == policy.GREETING:
        await _request_send(conn, event, kind, ids.derive_id(
            "outbound-request", event["conversation_id"], kind))
        return kind
    if kind == policy.OUT_OF_HOURS:
        assert schedule is not None
        return kind if await _request_note_once(conn, event, schedule, arrival) else None
    return None


async def _request_note_once(conn: AsyncConnection[Any], event: dict[str, Any],
                             schedule: business_hours.Schedule, arrival: datetime) -> bool:
    """Request the note unless this closed period already had one; return True if requested."""
    closed_until = business_hours.next_opening(schedule, arrival)
    period = closed_until.isoformat() if closed_until else "no-opening"
    request_id = ids.derive_id("outbound-request", event["conversation_id"],
                               policy.OUT_OF_HOURS, period)
    cursor = await conn.execute(
        "INSERT INTO out_of_hours_notes (conversation_id, closed_until, request_id, message_id) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (event["conversation_id"], closed_until, request_id, event["message_id"]))
    if cursor.rowcount == 0:
        log.info("assign: inbox %s conversation %s: out-of-hours note already sent for the "
                 "period closed until %s", event["inbox_id"], event["conversation_id"], period)
        return False
    await _request_send(conn, event, policy.OUT_OF_HOURS, request_id)
    return True


async def _agent_replied_since(conn: AsyncConnection[Any], conversation_id: str,
                               since: datetime) -> bool:
    cursor = await conn.execute(
        "SELECT 1 AS found FROM messages WHERE conversation_id = %s AND direction = 'outgoing' "
        "AND kind = 'agent' AND received_at >= %s LIMIT 1", (conversation_id, since))
    return await cursor.fetchone() is not None


async def _request_send(conn: AsyncConnection[Any], event: dict[str, Any], kind: str,
                        request_id: str) -> None:
    await outbox.add(conn, topics.OUTBOUND_REQUESTS, event["inbox_id"], "OutboundRequest", {
        "event_id": request_id,
        "occurred_at": datetime.now(timezone.utc),
        "inbox_id": event["inbox_id"],
        "conversation_id": event["conversation_id"],
        "request_id": request_id,
        "kind": kind,
        "agent_id": None,
        "text": None,
        "html": None,
    })
    log.info("assign: inbox %s conversation %s: %s requested, request %s",
             event["inbox_id"], event["conversation_id"], kind, request_id)
