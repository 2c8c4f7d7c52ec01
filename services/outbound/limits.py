"""Limits on outgoing mail: loop checks and caps on automatic mail, and the per-inbox rate.

The outbound stage calls :func:`automatic_mail_suppression` before each
greeting, out-of-hours note and survey. Besides the rules of loops.py it
caps automatic mail per recipient: at most ``max_per_conversation`` in one
conversation, and at most ``max_per_hour`` from one inbox in any hour. It
also enforces a pause. A recipient who got a greeting or out-of-hours note
in one conversation gets none in another conversation for
``new_conversation_pause``. An autoresponder without auto-reply headers,
which replies to each of our mails with a fresh subject, opens a new
conversation every time, so it gets one mail from us instead of one per
reply. A person who writes about two things within the pause gets one
acknowledgement, and agents still see both conversations. All three rules
count the send ledger.

:func:`wait_for_send_slot` holds a send until the inbox is below its
limit of mails per minute, counted by :func:`count_send` in
``outbound_rate_windows``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection

from services.outbound.loops import automatic_mail_block, read_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutomaticMailCaps:
    max_per_conversation: int
    max_per_hour: int
    new_conversation_pause: timedelta = timedelta(minutes=10)


async def automatic_mail_suppression(conn: AsyncConnection[Any], record: dict[str, Any],
                                     context: dict[str, Any], caps: AutomaticMailCaps,
                                     own_domains: list[str]) -> str | None:
    """Return why this automatic mail must not go out, or None."""
    recipient = context["contact"]["email"].lower()
    inbox = context["inbox"]
    if recipient == inbox["email"].lower():
        return f"recipient {recipient} is the inbox's own address"

    if record["kind"] == "csat":
        reason = automatic_mail_block(recipient, answered_kind=None, answered_headers=None,
                                      own_domains=own_domains)
        reason = reason or await _automated_contact_reason(conn, inbox["id"], recipient)
    else:
        kind, raw = await _answered_mail(conn, record["conversation_id"])
        reason = automatic_mail_block(
            recipient, answered_kind=kind, answered_headers=read_headers(raw) if raw else None,
            own_domains=own_domains)
    return reason or await _cap_reason(conn, record, recipient, caps)


async def _answered_mail(conn: AsyncConnection[Any],
                         conversation_id: str) -> tuple[str | None, bytes | None]:
    """Return the kind and raw bytes of the customer's latest mail in the conversation."""
    cursor = await conn.execute(
        "SELECT m.kind, r.content FROM messages m LEFT JOIN raw_mails r ON r.sha256 = m.raw_sha256 "
        "WHERE m.conversation_id = %s AND m.direction = 'incoming' "
        "ORDER BY m.received_at DESC, m.id DESC LIMIT 1", (conversation_id,))
    row = await cursor.fetchone()
    if row is None:
        return None, None
    return row["kind"], bytes(row["content"]) if row["content"] is not None else None


async def _automated_contact_reason(conn: AsyncConnection[Any], inbox_id: str,
                                    address: str) -> str | None:
    # A contact that never wrote as a person (only bounces, autoresponses or
    # list posts) is automated, however its address looks.
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE kind = 'customer') AS personal, count(*) AS total "
        "FROM messages WHERE inbox_id = %s AND direction = 'incoming' AND lower(from_email) = %s",
        (inbox_id, address))
    row = await cursor.fetchone()
    if row is not None and row["total"] > 0 and row["personal"] == 0:
        return f"recipient {address} has sent only automated or list mail"
    return None


async def _cap_reason(conn: AsyncConnection[Any], record: dict[str, Any], recipient: str,
                      caps: AutomaticMailCaps) -> str | None:
    conversation_id = record["conversation_id"]
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE conversation_id = %s) AS in_conversation, "
        "count(*) FILTER (WHERE finished_at > now() - interval '1 hour') AS last_hour, "
        "max(finished_at) FILTER (WHERE conversation_id <> %s AND kind <> 'csat') "
        "> now() - %s AS paused "
        "FROM send_ledger WHERE inbox_id = %s AND automatic AND status = 'sent' "
        "AND %s = ANY(recipients)",
        (conversation_id, conversation_id, caps.new_conversation_pause, record["inbox_id"],
         recipient))
    counts = await cursor.fetchone()
    assert counts is not None
    if counts["in_conversation"] >= caps.max_per_conversation:
        return (f"recipient {recipient} already got {counts['in_conversation']} automatic mails "
                f"in this conversation (cap {caps.max_per_conversation})")
    if counts["last_hour"] >= caps.max_per_hour:
        return (f"recipient {recipient} already got {counts['last_hour']} automatic mails from "
                f"this inbox in the last hour (cap {caps.max_per_hour})")
    if record["kind"] != "csat" and counts["paused"]:
        minutes = caps.new_conversation_pause.total_seconds() / 60
        return (f"recipient {recipient} got an automatic mail in another conversation less "
                f"than {minutes:g} minutes ago; a fresh conversation this soon looks like "
                "an autoresponder answering us")
    return None


async def wait_for_send_slot(conn: AsyncConnection[Any], inbox_id: str, max_per_minute: int,
                             *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> float:
    """Wait until the inbox has sent fewer than ``max_per_minute`` mails this minute.

    Returns the seconds waited. The send itself is counted by
    :func:`count_send` in the transaction that records it; one consumer
    sends an inbox's mail at a time, so the check and the count do not race.
    """
    waited = 0.0
    while True:
        cursor = await conn.execute(
            "SELECT sends, extract(epoch FROM date_trunc('minute', clock_timestamp()) "
            "+ interval '1 minute' - clock_timestamp()) AS rest FROM outbound_rate_windows "
            "WHERE inbox_id = %s AND window_start = date_trunc('minute', clock_timestamp())",
            (inbox_id,))
        window = await cursor.fetchone()
        if window is None or window["sends"] < max_per_minute:
            return waited

        pause = float(window["rest"]) + 0.05
        log.info("outbound: inbox %s: %d mails sent this minute, the limit; next send in %.1fs",
                 inbox_id, window["sends"], pause)
        await sleep(pause)
        waited += pause


async def count_send(conn: AsyncConnection[Any], inbox_id: str) -> None:
    """Count one send in the inbox's current minute, inside the caller's transaction."""
    cursor = await conn.execute(
        "INSERT INTO outbound_rate_windows (inbox_id, window_start, sends) "
        "VALUES (%s, date_trunc('minute', clock_timestamp()), 1) "
        "ON CONFLICT (inbox_id, window_start) DO UPDATE "
        "SET sends = outbound_rate_windows.sends + 1 RETURNING sends", (inbox_id,))
    counted = await cursor.fetchone()
    if counted is not None and counted["sends"] == 1:
        await conn.execute("DELETE FROM outbound_rate_windows WHERE inbox_id = %s "
                           "AND window_start < clock_timestamp() - interval '1 hour'", (inbox_id,))
