"""Conversation and agent actions that people take, under the rules the assign service follows.

The ``messagehub`` command and ``services/api`` call these coroutines:
resolve, reopen, assign (over the limit only when asked), unassign, an
agent's availability, and an inbox's assignment settings. Each takes an open
connection and works in one transaction. It locks the inbox row as the
assign service does (see :mod:`messagehub.assignment`), writes its rows and
the ConversationEvents they imply through :func:`messagehub.outbox.add`, and
hands freed capacity to the queue at once. No action talks to Kafka: every
stage's outbox relay sweeps the outbox table every 2 s and publishes them.

:func:`run` opens a connection for one action and retries it when
PostgreSQL breaks a deadlock, which can happen when an action locks
several inboxes while the assign service locks them in another order.
Invalid requests raise :class:`ActionError` with a message for the person
who made them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from messagehub import assignment, ids, outbox, topics
from messagehub.assignment import Trigger
from messagehub.events import conversation_event
from messagehub.inboxes import InboxError

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 5

T = TypeVar("T")


class ActionError(InboxError):
    """A request cannot be carried out. The message states why and what to do instead."""


class NotFound(ActionError):
    """The conversation, agent or inbox named in a request does not exist."""


class AgentAtLimit(ActionError):
    """The agent already has the inbox's limit of open conversations."""


class NotACollaborator(ActionError):
    """The agent does not work in the conversation's inbox."""


class _Keep:
    """The value of an optional setting that a request leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


async def run(database_url: str, action: Callable[..., Awaitable[T]], *args: Any,
              **kwargs: Any) -> T:
    """Run ``action(conn, *args, **kwargs)`` in one transaction of a new connection.

    A transaction that PostgreSQL aborts to break a deadlock did nothing,
    so it is run again, up to DEADLOCK_RETRIES times.
    """
    async with await psycopg.AsyncConnection.connect(database_url,
                                                     row_factory=dict_row) as conn:
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                async with conn.transaction():
                    return await action(conn, *args, **kwargs)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                if attempt == DEADLOCK_RETRIES:
                    raise
                log.warning("action %s: %s, attempt %d of %d, retrying", action.__name__,
                            type(exc).__name__, attempt, DEADLOCK_RETRIES)
                await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


# --- conversations ---------------------------------------------------------------


async def resolve(conn: AsyncConnection[Any], conversation_id: str, *,
                  actor_id: str | None = None, action_id: str | None = None) -> dict[str, Any]:
    """Resolve an open conversation; its agent's capacity goes to the queue at once."""
    inbox, conversation = await _lock(conn, conversation_id)
    conversation_id = str(conversation["id"])
    trigger = Trigger(action_id or ids.new_id(), actor_id)
    if conversation["status"] == "resolved":
        return await describe(conn, conversation_id)

    await conn.execute("UPDATE conversations SET status = 'resolved' WHERE id = %s",
                       (conversation_id,))
    await conn.execute("DELETE FROM assignment_queue WHERE conversation_id = %s",
                       (conversation_id,))
    await _emit_status(conn, conversation, status="resolved", previous="open", trigger=trigger)
    await assignment.drain_queue(conn, inbox, trigger=trigger)
    return await describe(conn, conversation_id)


async def reopen(conn: AsyncConnection[Any], conversation_id: str, *,
                 actor_id: str | None = None, action_id: str | None = None) -> dict[str, Any]:
    """Reopen a resolved conversation; it keeps its agent if still eligible."""
    inbox, conversation = await _lock(conn, conversation_id)
    conversation_id = str(conversation["id"])
    trigger = Trigger(action_id or ids.new_id(), actor_id)
    if conversation["status"] == "open":
        return await describe(conn, conversation_id)

    await conn.execute("UPDATE conversations SET status = 'open' WHERE id = %s",
                       (conversation_id,))
    await _emit_status(conn, conversation, status="open", previous="resolved", trigger=trigger)
    await assignment.settle_reopened(conn, inbox, {**conversation, "status": "open"},
                                     trigger=trigger)
    return await describe(conn, conversation_id)


async def assign(conn: AsyncConnection[Any], conversation_id: str, agent: str, *,
                 exceed_limit: bool = False, actor_id: str | None = None,
                 action_id: str | None = None) -> dict[str, Any]:
    """Assign a conversation to an agent of its inbox.

    The agent may be busy or offline, because a person chose them. The
    inbox's limit applies unless ``exceed_limit`` is true, and then the log
    and the event record the override. The previous assignee's capacity
    goes to the queue.
    """
    inbox, conversation = await _lock(conn, conversation_id)
    conversation_id = str(conversation["id"])
    target = await _find_agent(conn, agent)
    agent_id, inbox_id = str(target["id"]), str(inbox["id"])
    if not await assignment.is_collaborator(conn, inbox_id, agent_id):
        raise NotACollaborator(f"agent {target['email']} does not work in inbox "
                               f"{inbox['name']!r}: add them with `messagehub agent add` first")
    if conversation["assignee_id"] is not None and str(conversation["assignee_id"]) == agent_id:
        return await describe(conn, conversation_id)

    over_limit = False
    open_count = 0
    limit = inbox["auto_assign_limit"]
    if conversation["status"] == "open":
        open_count = await assignment.count_open(conn, inbox_id, agent_id)
        over_limit = not assignment.is_under_limit(open_count, limit)
    if over_limit and not exceed_limit:
        raise AgentAtLimit(
            f"agent {target['email']} already has {open_count} open conversations in inbox "
            f"{inbox['name']!r}, the limit is {limit}: choose another agent, or assign "
            "with exceed_limit (--exceed-limit) to go over it")

    trigger = Trigger(action_id or ids.new_id(), actor_id)
    await assignment.assign_to(conn, inbox, conversation, agent_id,
                               reason=assignment.MANUAL_OVER_LIMIT if over_limit
                               else assignment.MANUAL, trigger=trigger, over_limit=over_limit)
    if conversation["assignee_id"] is not None:
        await assignment.drain_queue(conn, inbox, trigger=trigger)
    return await describe(conn, conversation_id)


async def unassign(conn: AsyncConnection[Any], conversation_id: str, *, requeue: bool = False,
                   actor_id: str | None = None, action_id: str | None = None) -> dict[str, Any]:
    """Take a conversation from its agent; with ``requeue``, it joins the back of the queue.

    Without ``requeue`` it stays unassigned until a person assigns it (or
    it is reopened), as a person chose.
    """
    inbox, conversation = await _lock(conn, conversation_id)
    conversation_id = str(conversation["id"])
    if conversation["assignee_id"] is None and not requeue:
        return await describe(conn, conversation_id)

    trigger = Trigger(action_id or ids.new_id(), actor_id)
    if conversation["assignee_id"] is not None:
        await assignment.unassign(conn, inbox, conversation, reason=assignment.MANUAL,
                                  trigger=trigger)
    if requeue and conversation["status"] == "open":
        await assignment.enqueue(conn, inbox, {**conversation, "assignee_id": None},
                                 reason=assignment.REQUEUED, trigger=trigger,
                                 queued_at=datetime.now(timezone.utc))
    await assignment.drain_queue(conn, inbox, trigger=trigger)
    return await describe(conn, conversation_id)


async def describe(conn: AsyncConnection[Any], conversation_id: str) -> dict[str, Any]:
    """Return the conversation's status, assignee and whether it waits in the queue."""
    cursor = await conn.execute(
        "SELECT c.id, c.status, c.assignee_id, a.email AS assignee, "
        "q.queued_at IS NOT NULL AS queued FROM conversations c "
        "LEFT JOIN agents a ON a.id = c.assignee_id "
        "LEFT JOIN assignment_queue q ON q.conversation_id = c.id WHERE c.id = %s",
        (conversation_id,))
    row = await cursor.fetchone()
    assert row is not None
    return {"id": str(row["id"]), "status": row["status"], "assignee": row["assignee"],
            "assignee_id": str(row["assignee_id"]) if row["assignee_id"] else None,
            "queued": row["queued"]}


# --- agents and inboxes ------------------------------------------------------------------


async def set_availability(conn: AsyncConnection[Any], agent: str,
                           availability: str) -> dict[str, Any]:
    """Set an agent online, busy or offline; coming online serves the queues at once.

    Busy and offline agents keep their conversations and get no new ones.
    """
    if availability not in assignment.AVAILABILITIES:
        raise ActionError(f"invalid availability {availability!r}: expected one of "
                          f"{', '.join(assignment.AVAILABILITIES)}")
    target = await _find_agent(conn, agent)
    cursor = await conn.execute(
        "SELECT inbox_id FROM inbox_agents WHERE agent_id = %s ORDER BY inbox_id",
        (target["id"],))
    inbox_ids = [str(row["inbox_id"]) for row in await cursor.fetchall()]

    # Lock the inboxes first, in one order, so that no other writer decides
    # with the new availability before this transaction serves the queues.
    inboxes = [await assignment.lock_inbox(conn, inbox_id) for inbox_id in inbox_ids]
    await conn.execute("UPDATE agents SET availability = %s WHERE id = %s",
                       (availability, target["id"]))
    log.info("agent %s: availability %s -> %s", target["email"], target["availability"],
             availability)

    assigned = 0
    if availability == assignment.ASSIGNABLE_AVAILABILITY:
        trigger = Trigger(ids.new_id(), str(target["id"]))
        for inbox in inboxes:
            if inbox is not None:
                assigned += len(await assignment.drain_queue(conn, inbox, trigger=trigger))
    return {"id": str(target["id"]), "email": target["email"], "availability": availability,
            "assigned_from_queue": assigned}


async def set_assignment(conn: AsyncConnection[Any], inbox: str, *, enabled: Any = KEEP,
                         limit: Any = KEEP, chooser: Any = KEEP) -> dict[str, Any]:
    """Change an inbox's auto-assignment: on or off, the per-agent limit, the chooser.

    ``limit`` None means no limit. Arguments left at KEEP stay as they are.
    Raising the limit or turning assignment on serves the queue at once;
    lowering the limit takes no conversation from anyone.
    """
    current = await _find_inbox(conn, inbox)
    locked = await assignment.lock_inbox(conn, str(current["id"]))
    assert locked is not None
    enabled = locked["auto_assign_enabled"] if enabled is KEEP else bool(enabled)
    limit = locked["auto_assign_limit"] if limit is KEEP else limit
    chooser = locked["assign_chooser"] if chooser is KEEP else chooser
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ActionError(f"invalid limit {limit!r}: expected a whole number of at least 1, "
                          "or none for no limit")
    if chooser not in assignment.CHOOSERS:
        raise ActionError(f"invalid chooser {chooser!r}: expected one of "
                          f"{', '.join(assignment.CHOOSERS)}")

    cursor = await conn.execute(
        "UPDATE inboxes SET auto_assign_enabled = %s, auto_assign_limit = %s, "
        "assign_chooser = %s WHERE id = %s RETURNING *", (enabled, limit, chooser, locked["id"]))
    updated = await cursor.fetchone()
    assert updated is not None
    log.info("inbox %s: auto-assignment %s, limit %s, chooser %s", updated["id"],
             "on" if enabled else "off", limit, chooser)

    decisions = await assignment.drain_queue(conn, updated, trigger=Trigger(ids.new_id()))
    return {"inbox": updated["name"], "auto_assign_enabled": enabled,
            "auto_assign_limit": limit, "assign_chooser": chooser,
            "assigned_from_queue": len(decisions)}


# --- helpers --------------------------------------------------------------------------------


async def _lock(conn: AsyncConnection[Any],
                conversation_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lock the conversation's inbox, then return the inbox and the conversation's fresh row."""
    cursor = await conn.execute(
        "SELECT id, inbox_id FROM conversations WHERE id::text = lower(%s)", (conversation_id,))
    row = await cursor.fetchone()
    if row is None:
        raise NotFound(f"conversation not found: {conversation_id!r}")
    inbox = await assignment.lock_inbox(conn, str(row["inbox_id"]))
    conversation = await assignment.load_conversation(conn, str(row["id"]))
    assert inbox is not None and conversation is not None
    return inbox, conversation


async def _find_agent(conn: AsyncConnection[Any], agent: str) -> dict[str, Any]:
    cursor = await conn.execute(
        "SELECT * FROM agents WHERE email = lower(%s) OR id::text = %s", (agent.strip(), agent))
    row: dict[str, Any] | None = await cursor.fetchone()
    if row is None:
        raise NotFound(f"agent not found: {agent!r}: give the agent's email address or id")
    return row


async def _find_inbox(conn: AsyncConnection[Any], inbox: str) -> dict[str, Any]:
    cursor = await conn.execute("SELECT * FROM inboxes WHERE name = %s OR id::text = %s",
                                (inbox, inbox))
    row: dict[str, Any] | None = await cursor.fetchone()
    if row is None:
        raise NotFound(f"inbox not found: {inbox!r}")
    return row


async def _emit_status(conn: AsyncConnection[Any], conversation: dict[str, Any], *,
                       status: str, previous: str, trigger: Trigger) -> None:
    cursor = await conn.execute(
        "SELECT ct.id, ct.email FROM conversations c JOIN contacts ct ON ct.id = c.contact_id "
        "WHERE c.id = %s", (conversation["id"],))
    contact = await cursor.fetchone()
    event = conversation_event(
        "STATUS_CHANGED", fact=f"{status}/{trigger.fact}", inbox_id=str(conversation["inbox_id"]),
        conversation_id=str(conversation["id"]), status=status, previous_status=previous,
        reason=assignment.MANUAL, agent_id=trigger.agent_id,
        contact_id=str(contact["id"]) if contact else None,
        contact_email=contact["email"] if contact else None)
    await outbox.add(conn, topics.CONVERSATION_EVENTS, event["inbox_id"], "ConversationEvent",
                     event)
    log.info("inbox %s conversation %s: %s -> %s by %s", event["inbox_id"],
             event["conversation_id"], previous, status, trigger.agent_id or "an operator")
