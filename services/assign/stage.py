"""The assign stage: who works on a conversation, and which first answer goes out.

:class:`AssignStage` is applied by the shared batch loop to each record of
``conversation.events``:

- CONVERSATION_CREATED: the first mail gets its automatic answer (greeting,
  or the out-of-hours note outside business hours, see ``answers.py``), and
  a conversation that a customer opened is assigned by the inbox's chooser
  to an online collaborator below the limit, or queued;
- MESSAGE_ADDED of a later incoming mail: the out-of-hours note, once per
  closed period;
- STATUS_CHANGED to resolved, and UNASSIGNED: the freed capacity goes to
  the queue, in arrival order;
- STATUS_CHANGED to open (a reopening): the conversation keeps its agent if
  still eligible, else it is reassigned or queued.

Every assignment decision goes through :mod:`messagehub.assignment` under
a lock on the inbox row, so the limit holds with several replicas, during
rebalances and beside people's actions from the API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from messagehub import assignment
from messagehub.assignment import Decision, Trigger
from services.assign import answers, policy
from services.assign.metrics import AssignMetrics

log = logging.getLogger(__name__)

Handler = Callable[[AsyncConnection[Any], dict[str, Any]], Awaitable[None]]


class AssignStage:
    name = "assign"
    # apply() writes only through the connection it is given (worker.py).
    all_or_nothing = True

    def __init__(self, sensor: AssignMetrics | None = None) -> None:
        self._sensor = sensor or AssignMetrics()
        self._handlers: dict[str, Handler] = {
            "CONVERSATION_CREATED": self._on_created,
            "MESSAGE_ADDED": self._on_message_added,
            "STATUS_CHANGED": self._on_status_changed,
            "UNASSIGNED": self._on_unassigned,
        }

    def wants(self, record_name: str, record: dict[str, Any]) -> bool:
        """Tell the batch loop which records :meth:`apply` acts on: the rest skip the database."""
        if record_name != "ConversationEvent" or record["type"] not in self._handlers:
            return False
        return bool(record["type"] != "MESSAGE_ADDED" or record["direction"] == "incoming")

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name != "ConversationEvent":
            return
        handler = self._handlers.get(record["type"])
        if handler is not None:
            await handler(conn, record)

    async def _on_created(self, conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
        inbox, conversation = await _lock(conn, event)
        if inbox is None or conversation is None:
            return

        kind = await answers.answer_mail(conn, inbox, event, first_message=True)
        if kind is not None:
            self._sensor.on_automatic_answer(kind)

        if not policy.is_assignable(event["message_kind"]):
            log.info("assign: inbox %s conversation %s: opened by %s mail, not assigned",
                     inbox["id"], conversation["id"], event["message_kind"])
            return
        decisions = await assignment.assign_or_queue(
            conn, inbox, conversation, trigger=Trigger(event["event_id"]),
            queued_at=answers.arrival_of(event))
        self._observe(decisions)
        if any(d.kind == "assigned" and d.conversation_id == str(conversation["id"])
               for d in decisions):
            self._sensor.on_assigned_new(
                (datetime.now(timezone.utc) - event["occurred_at"]).total_seconds())

    async def _on_message_added(self, conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
        if event["direction"] != "incoming":
            return
        cursor = await conn.execute("SELECT * FROM inboxes WHERE id = %s", (event["inbox_id"],))
        inbox = await cursor.fetchone()
        if inbox is None:
            return
        # The first message is answered on CONVERSATION_CREATED; for it this
        # finds the same closed period and requests nothing.
        kind = await answers.answer_mail(conn, inbox, event, first_message=False)
        if kind is not None:
            self._sensor.on_automatic_answer(kind)

    async def _on_status_changed(self, conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
        inbox, conversation = await _lock(conn, event)
        if inbox is None or conversation is None:
            return

        trigger = Trigger(event["event_id"])
        if conversation["status"] == "resolved":
            await conn.execute("DELETE FROM assignment_queue WHERE conversation_id = %s",
                               (conversation["id"],))
            self._observe(await assignment.drain_queue(conn, inbox, trigger=trigger))
        else:
            # NOTE: the router reopens a conversation without the inbox lock, so
            # until this runs its agent may have one open conversation more
            # than the limit; settle_reopened moves it on if so.
            self._observe(await assignment.settle_reopened(conn, inbox, conversation,
                                                           trigger=trigger))

    async def _on_unassigned(self, conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
        inbox = await assignment.lock_inbox(conn, event["inbox_id"])
        if inbox is not None:
            self._observe(await assignment.drain_queue(conn, inbox,
                                                       trigger=Trigger(event["event_id"])))

    def _observe(self, decisions: list[Decision]) -> None:
        now = datetime.now(timezone.utc)
        for decision in decisions:
            self._sensor.on_decision(decision.kind, decision.reason)
            if decision.kind == "assigned" and decision.queued_at is not None:
                self._sensor.on_assigned_from_queue((now - decision.queued_at).total_seconds())


async def _lock(conn: AsyncConnection[Any], event: dict[str, Any],
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Lock the event's inbox and return it with the conversation's current row."""
    inbox = await assignment.lock_inbox(conn, event["inbox_id"])
    if inbox is None:
        log.warning("assign: inbox %s: event %s names an unknown inbox, skipped",
                    event["inbox_id"], event["event_id"])
        return None, None
    conversation = await assignment.load_conversation(conn, event["conversation_id"])
    if conversation is None:
        log.warning("assign: inbox %s conversation %s: not in the database, event %s skipped",
                    event["inbox_id"], event["conversation_id"], event["event_id"])
    return inbox, conversation
