"""The assign stage: who works on a conversation, and which first answer goes out.

:class:`AssignStage` is applied by the shared batch loop to each record of
``conversation.events``. A new conversation gets its automatic greeting
requested (when the inbox has greetings on and the mail came from a person)
and is assigned round robin to an online collaborator of the inbox who is
below the inbox's limit of open conversations; when nobody is, it waits in
the inbox's queue (its open, unassigned conversations in arrival order)
until a conversation is resolved.

The capacity check and the assignment are one step under a lock on the
inbox row, so two assign replicas that briefly both hold the inbox's
partition during a rebalance still cannot push an agent over the limit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from messagehub import ids, outbox, topics
from messagehub.events import conversation_event
from services.assign.policy import may_send_automatic_mail

log = logging.getLogger(__name__)


class AssignStage:
    name = "assign"

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name != "ConversationEvent":
            return
        event_type = record["type"]
        if event_type == "CONVERSATION_CREATED":
            await self._on_created(conn, record)
        elif event_type == "STATUS_CHANGED" and record["status"] == "resolved":
            await self._drain_queue(conn, record["inbox_id"], trigger=record["event_id"])
        elif event_type == "UNASSIGNED":
            await self._drain_queue(conn, record["inbox_id"], trigger=record["event_id"])

    async def _on_created(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        inbox = await _lock_inbox(conn, record["inbox_id"])
        if inbox is None:
            log.warning("assign: inbox %s: conversation %s names an unknown inbox, skipped",
                        record["inbox_id"], record["conversation_id"])
            return

        if inbox["greeting_enabled"] and may_send_automatic_mail(record["message_kind"],
                                                                 record["contact_email"]):
            await _request_send(conn, record, kind="greeting")

        if inbox["auto_assign_enabled"]:
            await self._assign_or_queue(conn, inbox, record["conversation_id"],
                                        trigger=record["event_id"])

    async def _assign_or_queue(self, conn: AsyncConnection[Any], inbox: dict[str, Any],
                               conversation_id: str, *, trigger: str,
                               announce_queued: bool = True) -> bool:
        agent_id, reason = await _choose_agent(conn, inbox)
        if agent_id is None and not announce_queued:
            return False
        if agent_id is None:
            await _emit(conn, conversation_event(
                "QUEUED", fact=f"queued/{trigger}", inbox_id=str(inbox["id"]),
                conversation_id=conversation_id, reason=reason))
            log.info("assign: inbox %s conversation %s: queued, %s",
                     inbox["id"], conversation_id, reason)
            return False

        cursor = await conn.execute(
            "UPDATE conversations SET assignee_id = %s WHERE id = %s AND assignee_id IS NULL "
            "AND status = 'open'", (agent_id, conversation_id))
        if cursor.rowcount == 0:
            return True
        await conn.execute(
            "UPDATE inbox_agents SET last_assigned_at = clock_timestamp() "
            "WHERE inbox_id = %s AND agent_id = %s", (inbox["id"], agent_id))
        await _emit(conn, conversation_event(
            "ASSIGNED", fact=f"assigned/{agent_id}/{trigger}", inbox_id=str(inbox["id"]),
            conversation_id=conversation_id, assignee_id=str(agent_id), reason=reason))
        log.info("assign: inbox %s conversation %s: assigned to agent %s, %s",
                 inbox["id"], conversation_id, agent_id, reason)
        return True

    async def _drain_queue(self, conn: AsyncConnection[Any], inbox_id: str, *,
                           trigger: str) -> None:
        inbox = await _lock_inbox(conn, inbox_id)
        if inbox is None or not inbox["auto_assign_enabled"]:
            return

        cursor = await conn.execute(
            "SELECT id FROM conversations WHERE inbox_id = %s AND status = 'open' "
            "AND assignee_id IS NULL ORDER BY created_at, id", (inbox_id,))
        for row in await cursor.fetchall():
            if not await self._assign_or_queue(conn, inbox, str(row["id"]), trigger=trigger,
                                               announce_queued=False):
                return


async def _lock_inbox(conn: AsyncConnection[Any], inbox_id: str) -> dict[str, Any] | None:
    cursor = await conn.execute("SELECT * FROM inboxes WHERE id = %s FOR UPDATE", (inbox_id,))
    return await cursor.fetchone()


async def _choose_agent(conn: AsyncConnection[Any],
                        inbox: dict[str, Any]) -> tuple[str | None, str]:
    """Return the least recently assigned online agent below the limit, and why."""
    cursor = await conn.execute(
        "SELECT a.id, (SELECT count(*) FROM conversations c WHERE c.inbox_id = ia.inbox_id "
        "AND c.assignee_id = a.id AND c.status = 'open') AS open_count "
        "FROM inbox_agents ia JOIN agents a ON a.id = ia.agent_id "
        "WHERE ia.inbox_id = %s AND a.availability = 'online' "
        "ORDER BY ia.last_assigned_at NULLS FIRST, a.created_at, a.id", (inbox["id"],))
    candidates = await cursor.fetchall()
    if not candidates:
        return None, "no_agents_available"

    limit = inbox["auto_assign_limit"]
    for candidate in candidates:
        if limit is None or candidate["open_count"] < limit:
            return str(candidate["id"]), "round_robin"
    return None, "all_agents_at_limit"


async def _request_send(conn: AsyncConnection[Any], record: dict[str, Any], *, kind: str) -> None:
    request_id = ids.derive_id("outbound-request", record["conversation_id"], kind)
    await outbox.add(conn, topics.OUTBOUND_REQUESTS, record["inbox_id"], "OutboundRequest", {
        "event_id": request_id,
        "occurred_at": datetime.now(timezone.utc),
        "inbox_id": record["inbox_id"],
        "conversation_id": record["conversation_id"],
        "request_id": request_id,
        "kind": kind,
        "agent_id": None,
        "text": None,
        "html": None,
    })
    log.info("assign: inbox %s conversation %s: %s requested",
             record["inbox_id"], record["conversation_id"], kind)


async def _emit(conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
    await outbox.add(conn, topics.CONVERSATION_EVENTS, event["inbox_id"], "ConversationEvent",
                     event)
