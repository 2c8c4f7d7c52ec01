"""Assignment of conversations to agents under the inbox's limit, for every writer.

The assign service calls this module when a conversation is created, is
reopened or frees capacity; :mod:`messagehub.actions` calls it for what
people do (assign, unassign, resolve, availability, the limit). Both kinds
of writer follow the same rules because they share this code.

Every function runs inside the caller's transaction, after
:func:`lock_inbox` has locked the inbox row. The transaction with that lock
is the only writer of the inbox's assignments until it commits, so counting
an agent's open conversations and assigning one more is one atomic step.
That is true when two assign replicas both process an inbox's partition for
a moment during a rebalance, and when a person acts through the API at the
same time. The lock is ``FOR NO KEY UPDATE``, which does not block the
router's inserts of new conversations (they only take a key-share lock).

Each decision is written as rows (``conversations.assignee_id``,
``assignment_queue``, ``assignment_log``) and as a ConversationEvent
(ASSIGNED, UNASSIGNED or QUEUED, with the reason) through the outbox, in
the caller's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection

from messagehub import outbox, topics
from messagehub.events import conversation_event

log = logging.getLogger(__name__)

CHOOSERS = ("round_robin", "balanced")
AVAILABILITIES = ("online", "busy", "offline")
# Only online agents get conversations automatically. Busy and offline
# agents keep their conversations, and a person may still assign to them.
ASSIGNABLE_AVAILABILITY = "online"

# Reasons written on the events and in assignment_log.
NO_AGENTS_AVAILABLE = "no_agents_available"
ALL_AGENTS_AT_LIMIT = "all_agents_at_limit"
MANUAL = "manual"
MANUAL_OVER_LIMIT = "manual_over_limit"
AGENT_UNAVAILABLE = "agent_unavailable"
AGENT_AT_LIMIT = "agent_at_limit"
NOT_A_COLLABORATOR = "not_a_collaborator"
REQUEUED = "requeued"


@dataclass(frozen=True)
class Candidate:
    """A collaborator of the inbox, with the facts the chooser needs."""

    agent_id: str
    availability: str
    open_count: int
    last_assigned_at: datetime | None
    joined_at: datetime


@dataclass(frozen=True)
class Trigger:
    """The cause of a decision: a unique fact (an event id or an action id) and who acted.

    ``fact`` goes into the ids of the events the decision emits, so the same
    cause handled twice emits the same ids. ``agent_id`` is the agent behind
    a person's action, or None when messagehub decided on its own.
    """

    fact: str
    agent_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """One assignment decision, as the caller may count or report it."""

    kind: str
    conversation_id: str
    agent_id: str | None
    reason: str
    queued_at: datetime | None = None


# --- the rules, without IO -----------------------------------------------------


def is_under_limit(open_count: int, limit: int | None) -> bool:
    """Return True when one more open conversation keeps an agent within ``limit``."""
    return limit is None or open_count < limit


def choose_agent(candidates: Sequence[Candidate], *, chooser: str,
                 limit: int | None) -> tuple[Candidate | None, str]:
    """Return the agent who gets the next conversation, or None, and the reason.

    Eligible are online collaborators below ``limit``. round_robin picks
    the one assigned least recently (never assigned first); balanced picks
    the one with the fewest open conversations and breaks ties like
    round_robin. The reason is the chooser's name, or why no agent was eligible.
    """
    if chooser not in CHOOSERS:
        raise ValueError(f"invalid chooser {chooser!r}: expected one of {', '.join(CHOOSERS)}")

    online = [c for c in candidates if c.availability == ASSIGNABLE_AVAILABILITY]
    if not online:
        return None, NO_AGENTS_AVAILABLE
    eligible = [c for c in online if is_under_limit(c.open_count, limit)]
    if not eligible:
        return None, ALL_AGENTS_AT_LIMIT

    def round_robin_order(c: Candidate) -> tuple[Any, ...]:
        return (c.last_assigned_at is not None, c.last_assigned_at or c.joined_at,
                c.joined_at, c.agent_id)

    if chooser == "balanced":
        return min(eligible, key=lambda c: (c.open_count, *round_robin_order(c))), chooser
    return min(eligible, key=round_robin_order), chooser


# --- reading under the lock ---------------------------------------------------------


async def lock_inbox(conn: AsyncConnection[Any], inbox_id: str) -> dict[str, Any] | None:
    """Lock the inbox row until the transaction ends and return it, or None if unknown."""
    cursor = await conn.execute(
        "SELECT * FROM inboxes WHERE id = %s FOR NO KEY UPDATE", (inbox_id,))
    return await cursor.fetchone()


async def load_conversation(conn: AsyncConnection[Any],
                            conversation_id: str) -> dict[str, Any] | None:
    """Return the conversation's current row (call after lock_inbox), or None."""
    cursor = await conn.execute(
        "SELECT id, inbox_id, status, assignee_id, created_at FROM conversations "
        "WHERE id = %s FOR UPDATE", (conversation_id,))
    return await cursor.fetchone()


async def load_candidates(conn: AsyncConnection[Any], inbox_id: str) -> list[Candidate]:
    """Return the inbox's collaborators with their open conversations in this inbox."""
    cursor = await conn.execute(
        "SELECT a.id, a.availability, a.created_at, ia.last_assigned_at, "
        "(SELECT count(*) FROM conversations c WHERE c.inbox_id = ia.inbox_id "
        " AND c.assignee_id = a.id AND c.status = 'open') AS open_count "
        "FROM inbox_agents ia JOIN agents a ON a.id = ia.agent_id WHERE ia.inbox_id = %s",
        (inbox_id,))
    return [Candidate(agent_id=str(row["id"]), availability=row["availability"],
                      open_count=row["open_count"], last_assigned_at=row["last_assigned_at"],
                      joined_at=row["created_at"])
            for row in await cursor.fetchall()]


async def count_open(conn: AsyncConnection[Any], inbox_id: str, agent_id: str) -> int:
    """Return the agent's open conversations in the inbox."""
    cursor = await conn.execute(
        "SELECT count(*) AS open_count FROM conversations WHERE inbox_id = %s "
        "AND assignee_id = %s AND status = 'open'", (inbox_id, agent_id))
    row = await cursor.fetchone()
    assert row is not None
    return int(row["open_count"])


async def is_collaborator(conn: AsyncConnection[Any], inbox_id: str, agent_id: str) -> bool:
    cursor = await conn.execute(
        "SELECT 1 AS found FROM inbox_agents WHERE inbox_id = %s AND agent_id = %s",
        (inbox_id, agent_id))
    return await cursor.fetchone() is not None


async def is_queued(conn: AsyncConnection[Any], conversation_id: str) -> bool:
    cursor = await conn.execute(
        "SELECT 1 AS found FROM assignment_queue WHERE conversation_id = %s", (conversation_id,))
    return await cursor.fetchone() is not None


# --- decisions ------------------------------------------------------------------------


async def assign_or_queue(conn: AsyncConnection[Any], inbox: dict[str, Any],
                          conversation: dict[str, Any], *, trigger: Trigger,
                          queued_at: datetime) -> list[Decision]:
    """Assign an open, unassigned conversation to the chosen agent, or queue it.

    Conversations already waiting go first: when the queue is not empty it
    is served before the new conversation may take what capacity is left,
    so a newcomer never overtakes them. Returns no decision when there is
    nothing to decide: auto-assignment is off, or the conversation is
    resolved, assigned or already queued.
    """
    if not inbox["auto_assign_enabled"] or conversation["status"] != "open":
        return []
    if conversation["assignee_id"] is not None:
        return []
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM assignment_queue WHERE conversation_id = %s) AS queued, "
        "EXISTS (SELECT 1 FROM assignment_queue WHERE inbox_id = %s) AS waiting",
        (conversation["id"], inbox["id"]))
    queue = await cursor.fetchone()
    assert queue is not None
    if queue["queued"]:
        return []

    decisions = []
    if queue["waiting"]:
        decisions += await drain_queue(conn, inbox, trigger=trigger)
    candidate, reason = choose_agent(await load_candidates(conn, str(inbox["id"])),
                                     chooser=inbox["assign_chooser"],
                                     limit=inbox["auto_assign_limit"])
    if candidate is None:
        queued = await enqueue(conn, inbox, conversation, reason=reason, trigger=trigger,
                               queued_at=queued_at)
        return decisions + ([queued] if queued else [])
    return decisions + [await assign_to(conn, inbox, conversation, candidate.agent_id,
                                        reason=reason, trigger=trigger)]


async def drain_queue(conn: AsyncConnection[Any], inbox: dict[str, Any], *,
                      trigger: Trigger) -> list[Decision]:
    """Assign queued conversations in queue order while someone is eligible.

    Entries of conversations that were resolved or assigned meanwhile are
    dropped. Stops at the first conversation that no agent can take,
    because the queue is served in order and a later one must not overtake it.
    """
    if not inbox["auto_assign_enabled"]:
        return []
    cursor = await conn.execute(
        "SELECT q.conversation_id, q.queued_at, c.status, c.assignee_id "
        "FROM assignment_queue q JOIN conversations c ON c.id = q.conversation_id "
        "WHERE q.inbox_id = %s ORDER BY q.queued_at, q.position", (inbox["id"],))
    decisions = []
    for entry in await cursor.fetchall():
        conversation_id = str(entry["conversation_id"])
        if entry["status"] != "open" or entry["assignee_id"] is not None:
            await _dequeue(conn, conversation_id)
            continue

        candidate, reason = choose_agent(await load_candidates(conn, str(inbox["id"])),
                                         chooser=inbox["assign_chooser"],
                                         limit=inbox["auto_assign_limit"])
        if candidate is None:
            break
        conversation = await load_conversation(conn, conversation_id)
        assert conversation is not None
        decision = await assign_to(conn, inbox, conversation, candidate.agent_id,
                                   reason=reason, trigger=trigger)
        decisions.append(Decision(decision.kind, decision.conversation_id, decision.agent_id,
                                  decision.reason, queued_at=entry["queued_at"]))
    return decisions


async def settle_reopened(conn: AsyncConnection[Any], inbox: dict[str, Any],
                          conversation: dict[str, Any], *, trigger: Trigger) -> list[Decision]:
    """Keep a reopened conversation with its assignee if still eligible, else reassign it.

    Eligible means what it means for a new conversation: a collaborator,
    online, and within the limit with this conversation counted. Calling it
    again changes nothing, so the assign service and an action may both run
    it for one reopening.
    """
    if conversation["status"] != "open":
        return []
    conversation_id, inbox_id = str(conversation["id"]), str(inbox["id"])
    assignee = str(conversation["assignee_id"]) if conversation["assignee_id"] else None

    decisions: list[Decision] = []
    if assignee is not None:
        reason = await _reason_to_unassign(conn, inbox, assignee)
        if reason is None:
            log.info("assign: inbox %s conversation %s: reopened, stays with agent %s",
                     inbox_id, conversation_id, assignee)
            return []
        decisions.append(await unassign(conn, inbox, conversation, reason=reason,
                                        trigger=trigger))
        conversation = {**conversation, "assignee_id": None}

    if await is_queued(conn, conversation_id):
        return decisions + await drain_queue(conn, inbox, trigger=trigger)
    return decisions + await assign_or_queue(conn, inbox, conversation, trigger=trigger,
                                             queued_at=datetime.now(timezone.utc))


async def _reason_to_unassign(conn: AsyncConnection[Any], inbox: dict[str, Any],
                              agent_id: str) -> str | None:
    inbox_id = str(inbox["id"])
    if not await is_collaborator(conn, inbox_id, agent_id):
        return NOT_A_COLLABORATOR
    cursor = await conn.execute("SELECT availability FROM agents WHERE id = %s", (agent_id,))
    agent = await cursor.fetchone()
    if agent is None or agent["availability"] != ASSIGNABLE_AVAILABILITY:
        return AGENT_UNAVAILABLE
    # The reopened conversation already counts among the open ones.
    limit = inbox["auto_assign_limit"]
    if limit is not None and await count_open(conn, inbox_id, agent_id) > limit:
        return AGENT_AT_LIMIT
    return None


# --- writing one decision ------------------------------------------------------------------


async def assign_to(conn: AsyncConnection[Any], inbox: dict[str, Any],
                    conversation: dict[str, Any], agent_id: str, *, reason: str,
                    trigger: Trigger, over_limit: bool = False) -> Decision:
    """Assign the conversation to ``agent_id`` and emit ASSIGNED; the caller checked the rules."""
    conversation_id, inbox_id = str(conversation["id"]), str(inbox["id"])
    previous = str(conversation["assignee_id"]) if conversation["assignee_id"] else None
    event = conversation_event(
        "ASSIGNED", fact=f"assigned/{agent_id}/{trigger.fact}", inbox_id=inbox_id,
        conversation_id=conversation_id, assignee_id=agent_id, previous_assignee_id=previous,
        reason=reason, agent_id=trigger.agent_id)

    # One statement, because this runs for every new conversation. The
    # statement's own update is not visible to its count, hence the sum.
    await conn.execute(
        "WITH moved AS (UPDATE conversations SET assignee_id = %(agent)s "
        "  WHERE id = %(conversation)s RETURNING status), "
        "touched AS (UPDATE inbox_agents SET last_assigned_at = clock_timestamp() "
        "  WHERE inbox_id = %(inbox)s AND agent_id = %(agent)s), "
        "dequeued AS (DELETE FROM assignment_queue WHERE conversation_id = %(conversation)s) "
        "INSERT INTO assignment_log (inbox_id, conversation_id, decision, agent_id, reason, "
        "open_count, assign_limit, over_limit, event_id) "
        "SELECT %(inbox)s, %(conversation)s, 'assigned', %(agent)s, %(reason)s, "
        "(SELECT count(*) FROM conversations c WHERE c.inbox_id = %(inbox)s "
        "  AND c.assignee_id = %(agent)s AND c.status = 'open' AND c.id <> %(conversation)s) "
        "+ (SELECT count(*) FROM moved WHERE status = 'open'), "
        "%(limit)s, %(over_limit)s, %(event_id)s",
        {"agent": agent_id, "conversation": conversation_id, "inbox": inbox_id,
         "reason": reason, "limit": inbox["auto_assign_limit"], "over_limit": over_limit,
         "event_id": event["event_id"]})
    await outbox.add(conn, topics.CONVERSATION_EVENTS, inbox_id, "ConversationEvent", event)
    log.info("assign: inbox %s conversation %s: assigned to agent %s, %s",
             inbox_id, conversation_id, agent_id, reason)
    return Decision("assigned", conversation_id, agent_id, reason)


async def unassign(conn: AsyncConnection[Any], inbox: dict[str, Any],
                   conversation: dict[str, Any], *, reason: str, trigger: Trigger) -> Decision:
    """Take the conversation from its assignee and emit UNASSIGNED."""
    conversation_id, inbox_id = str(conversation["id"]), str(inbox["id"])
    previous = str(conversation["assignee_id"])
    await conn.execute("UPDATE conversations SET assignee_id = NULL WHERE id = %s",
                       (conversation_id,))

    event = conversation_event(
        "UNASSIGNED", fact=f"unassigned/{trigger.fact}", inbox_id=inbox_id,
        conversation_id=conversation_id, previous_assignee_id=previous, reason=reason,
        agent_id=trigger.agent_id)
    await _record(conn, inbox, event, "unassigned", previous)
    log.info("assign: inbox %s conversation %s: unassigned from agent %s, %s",
             inbox_id, conversation_id, previous, reason)
    return Decision("unassigned", conversation_id, previous, reason)


async def enqueue(conn: AsyncConnection[Any], inbox: dict[str, Any],
                  conversation: dict[str, Any], *, reason: str, trigger: Trigger,
                  queued_at: datetime) -> Decision | None:
    """Put the conversation in the inbox's queue and emit QUEUED; None if it already waits."""
    conversation_id, inbox_id = str(conversation["id"]), str(inbox["id"])
    cursor = await conn.execute(
        "INSERT INTO assignment_queue (conversation_id, inbox_id, queued_at, reason) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (conversation_id) DO NOTHING",
        (conversation_id, inbox_id, queued_at, reason))
    if cursor.rowcount == 0:
        return None

    event = conversation_event(
        "QUEUED", fact=f"queued/{trigger.fact}", inbox_id=inbox_id,
        conversation_id=conversation_id, reason=reason, agent_id=trigger.agent_id)
    await _record(conn, inbox, event, "queued", None)
    log.info("assign: inbox %s conversation %s: queued, %s", inbox_id, conversation_id, reason)
    return Decision("queued", conversation_id, None, reason, queued_at=queued_at)


async def _dequeue(conn: AsyncConnection[Any], conversation_id: str) -> None:
    await conn.execute("DELETE FROM assignment_queue WHERE conversation_id = %s",
                       (conversation_id,))


async def _record(conn: AsyncConnection[Any], inbox: dict[str, Any], event: dict[str, Any],
                  decision: str, agent_id: str | None, *, over_limit: bool = False) -> None:
    """Write the decision to assignment_log and its event to the outbox."""
    open_count = (await count_open(conn, str(inbox["id"]), agent_id)
                  if agent_id is not None else None)
    await conn.execute(
        "INSERT INTO assignment_log (inbox_id, conversation_id, decision, agent_id, reason, "
        "open_count, assign_limit, over_limit, event_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (inbox["id"], event["conversation_id"], decision, agent_id, event["reason"], open_count,
         inbox["auto_assign_limit"], over_limit, event["event_id"]))
    await outbox.add(conn, topics.CONVERSATION_EVENTS, str(inbox["id"]), "ConversationEvent",
                     event)
