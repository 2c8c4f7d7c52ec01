"""Assignment rules and people's actions on the real PostgreSQL, and their events on Kafka.

These tests insert conversation rows themselves and call messagehub.assignment
and messagehub.actions directly, so each rule is checked without mail. The
assign service of the stack still consumes the events they emit and applies
the same rules under the same lock, which the expected results allow for.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from messagehub import actions, assignment
from messagehub.assignment import Trigger
from messagehub.events import conversation_event
from tests.assign.helpers import (assignee_of, create_inbox, decision_log, in_transaction,
                                  insert_conversation, open_counts, query, queued, run_async,
                                  wait_for_events)

pytestmark = pytest.mark.stack

T0 = datetime(2024, 3, 11, 9, 0, tzinfo=timezone.utc)


async def decide_concurrently(database_url: str, inbox_id: str,
                              conversation_ids: list[str]) -> list[Any]:
    """Run assign_or_queue for each conversation in its own transaction, all at once."""
    async def decide(conversation_id: str, arrival: datetime) -> Any:
        async with await psycopg.AsyncConnection.connect(database_url,
                                                         row_factory=dict_row) as conn:
            async with conn.transaction():
                inbox = await assignment.lock_inbox(conn, inbox_id)
                conversation = await assignment.load_conversation(conn, conversation_id)
                assert inbox is not None and conversation is not None
                # Widen the window between the capacity check and the commit.
                await asyncio.sleep(0.02)
                return await assignment.assign_or_queue(
                    conn, inbox, conversation, trigger=Trigger(f"test/{conversation_id}"),
                    queued_at=arrival)

    return await asyncio.gather(*(decide(conversation_id, T0 + timedelta(seconds=n))
                                  for n, conversation_id in enumerate(conversation_ids)))


def assign_all(stack: dict[str, Any], inbox: dict[str, Any], conversation_ids: list[str]) -> None:
    """Decide each conversation in turn, in list order, as the assign service would."""
    for n, conversation_id in enumerate(conversation_ids):
        run_async(in_transaction, stack["database_url"], _decide_one, inbox["id"],
                  conversation_id, T0 + timedelta(seconds=n))


def test_concurrent_writers__limit_holds(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee", "Sato"], limit=4)
    conversation_ids = [insert_conversation(stack, inbox) for _ in range(13)]

    run_async(decide_concurrently, stack["database_url"], inbox["id"], conversation_ids)

    assert open_counts(stack, inbox) == {"Kim": 4, "Lee": 4, "Sato": 4}
    assert len(queued(stack, inbox)) == 1
    log = decision_log(stack, inbox)
    assert max(row["open_count"] for row in log if row["decision"] == "assigned") == 4
    assert [row["reason"] for row in log if row["decision"] == "queued"] == [
        "all_agents_at_limit"]


def test_decisions__each_one_is_an_event(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    conversation_ids = [insert_conversation(stack, inbox) for _ in range(2)]
    assign_all(stack, inbox, conversation_ids)

    log = decision_log(stack, inbox)
    events = wait_for_events(stack, inbox["id"], {row["event_id"] for row in log})

    assert sorted(row["decision"] for row in log) == ["assigned", "queued"]
    for row in log:
        event = events[row["event_id"]]
        assert event["type"] == row["decision"].upper()
        assert event["reason"] == row["reason"]
        assert event["conversation_id"] == str(row["conversation_id"])
    [assigned] = [events[row["event_id"]] for row in log if row["decision"] == "assigned"]
    assert assigned["assignee_id"] == inbox["agents"]["Kim"]["id"]
    assert assigned["reason"] == "round_robin"


def test_resolve__queued_goes_to_freed_agent(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=1)
    first, second, waiting = (insert_conversation(stack, inbox) for _ in range(3))
    assign_all(stack, inbox, [first, second, waiting])
    assert queued(stack, inbox) == [waiting]
    holder = assignee_of(stack, first)

    result = run_async(actions.run, stack["database_url"], actions.resolve, first)

    assert result["status"] == "resolved"
    assert assignee_of(stack, waiting) == holder
    assert queued(stack, inbox) == []
    assert open_counts(stack, inbox) == {"Kim": 1, "Lee": 1}


def test_queue__served_in_arrival_order(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    kim = inbox["agents"]["Kim"]["email"]
    run_async(actions.run, stack["database_url"], actions.set_availability, kim, "offline")
    conversation_ids = [insert_conversation(stack, inbox) for _ in range(4)]
    # Decided out of order; queued_at is the arrival, so the queue is 0, 1, 2, 3.
    for index in (2, 0, 3, 1):
        run_async(in_transaction, stack["database_url"], _decide_one, inbox["id"],
                  conversation_ids[index], T0 + timedelta(minutes=index))
    assert queued(stack, inbox) == conversation_ids

    served = []
    result = run_async(actions.run, stack["database_url"], actions.set_availability, kim,
                       "online")
    assert result["assigned_from_queue"] == 1
    for _ in range(4):
        [current] = [c for c in conversation_ids if assignee_of(stack, c) == "Kim"
                     and c not in served]
        served.append(current)
        run_async(actions.run, stack["database_url"], actions.resolve, current)

    assert served == conversation_ids


def test_queue__same_arrival_keeps_queueing_order(stack: dict[str, Any]) -> None:
    # Arrival times are milliseconds, so one burst can share one.
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    holder = insert_conversation(stack, inbox)
    assign_all(stack, inbox, [holder])
    conversation_ids = [insert_conversation(stack, inbox) for _ in range(5)]
    for conversation_id in conversation_ids:
        run_async(in_transaction, stack["database_url"], _decide_one, inbox["id"],
                  conversation_id, T0)

    assert queued(stack, inbox) == conversation_ids


def test_new_conversation__never_overtakes_queue(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    holder, waiting, newcomer = (insert_conversation(stack, inbox) for _ in range(3))
    assign_all(stack, inbox, [holder, waiting])
    # Resolved by a writer that leaves serving the queue to the assign service.
    query(stack, "UPDATE conversations SET status = 'resolved' WHERE id = %s RETURNING id",
          (holder,))

    run_async(in_transaction, stack["database_url"], _decide_one, inbox["id"], newcomer,
              T0 + timedelta(minutes=5))

    assert assignee_of(stack, waiting) == "Kim"
    assert queued(stack, inbox) == [newcomer]


async def _decide_one(conn: Any, inbox_id: str, conversation_id: str,
                      arrival: datetime) -> Any:
    inbox = await assignment.lock_inbox(conn, inbox_id)
    conversation = await assignment.load_conversation(conn, conversation_id)
    assert inbox is not None and conversation is not None
    return await assignment.assign_or_queue(conn, inbox, conversation,
                                            trigger=Trigger(f"test/{conversation_id}"),
                                            queued_at=arrival)


def test_manual_assign__limit_needs_exceed_flag(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=1)
    kim = inbox["agents"]["Kim"]["email"]
    first, second = (insert_conversation(stack, inbox) for _ in range(2))
    run_async(actions.run, stack["database_url"], actions.assign, first, kim)

    with pytest.raises(actions.AgentAtLimit, match="already has 1 open conversations"):
        run_async(actions.run, stack["database_url"], actions.assign, second, kim)
    assert assignee_of(stack, second) is None

    result = run_async(actions.run, stack["database_url"], actions.assign, second, kim,
                       exceed_limit=True)
    assert result["assignee"] == kim
    assert open_counts(stack, inbox)["Kim"] == 2
    [over] = [row for row in decision_log(stack, inbox) if row["over_limit"]]
    assert over["reason"] == "manual_over_limit"
    assert str(over["conversation_id"]) == second


def test_manual_assign__not_a_collaborator(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"])
    other = create_inbox(stack, agents=["Nora"])
    conversation = insert_conversation(stack, inbox)

    with pytest.raises(actions.NotACollaborator, match="does not work in inbox"):
        run_async(actions.run, stack["database_url"], actions.assign, conversation,
                  other["agents"]["Nora"]["email"])


def test_manual_reassign__frees_capacity_for_queue(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=1)
    lee = inbox["agents"]["Lee"]["email"]
    run_async(actions.run, stack["database_url"], actions.set_availability, lee, "offline")
    first, waiting = (insert_conversation(stack, inbox) for _ in range(2))
    assign_all(stack, inbox, [first, waiting])
    assert queued(stack, inbox) == [waiting]

    run_async(actions.run, stack["database_url"], actions.assign, first, lee)

    assert assignee_of(stack, first) == "Lee"
    assert assignee_of(stack, waiting) == "Kim"


def test_reopen__keeps_eligible_assignee(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=2)
    conversation = insert_conversation(stack, inbox)
    run_async(actions.run, stack["database_url"], actions.assign, conversation,
              inbox["agents"]["Kim"]["email"])
    run_async(actions.run, stack["database_url"], actions.resolve, conversation)

    result = run_async(actions.run, stack["database_url"], actions.reopen, conversation)

    assert result["status"] == "open"
    assert result["assignee"] == inbox["agents"]["Kim"]["email"]
    assert [row["decision"] for row in decision_log(stack, inbox)] == ["assigned"]


def test_reopen__offline_assignee_replaced(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=2)
    conversation = insert_conversation(stack, inbox)
    run_async(actions.run, stack["database_url"], actions.assign, conversation,
              inbox["agents"]["Kim"]["email"])
    run_async(actions.run, stack["database_url"], actions.resolve, conversation)
    run_async(actions.run, stack["database_url"], actions.set_availability,
              inbox["agents"]["Kim"]["email"], "offline")

    result = run_async(actions.run, stack["database_url"], actions.reopen, conversation)

    assert result["assignee"] == inbox["agents"]["Lee"]["email"]
    log = decision_log(stack, inbox)
    assert [(row["decision"], row["reason"]) for row in log[1:]] == [
        ("unassigned", "agent_unavailable"), ("assigned", "round_robin")]


def test_reopen__assignee_at_limit_replaced(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=1)
    kim = inbox["agents"]["Kim"]["email"]
    old, new = (insert_conversation(stack, inbox) for _ in range(2))
    run_async(actions.run, stack["database_url"], actions.assign, old, kim)
    run_async(actions.run, stack["database_url"], actions.resolve, old)
    run_async(actions.run, stack["database_url"], actions.assign, new, kim)

    result = run_async(actions.run, stack["database_url"], actions.reopen, old)

    assert result["assignee"] == inbox["agents"]["Lee"]["email"]
    assert [row["reason"] for row in decision_log(stack, inbox)
            if row["decision"] == "unassigned"] == ["agent_at_limit"]
    assert open_counts(stack, inbox) == {"Kim": 1, "Lee": 1}


def test_limit_raised__serves_queue(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    conversation_ids = [insert_conversation(stack, inbox) for _ in range(3)]
    assign_all(stack, inbox, conversation_ids)
    assert len(queued(stack, inbox)) == 2

    result = run_async(actions.run, stack["database_url"], actions.set_assignment, inbox["name"],
                       limit=3)

    assert result["assigned_from_queue"] == 2
    assert open_counts(stack, inbox) == {"Kim": 3}


def test_limit_lowered__takes_nothing_away(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=3)
    assign_all(stack, inbox, [insert_conversation(stack, inbox) for _ in range(3)])

    run_async(actions.run, stack["database_url"], actions.set_assignment, inbox["name"], limit=1)
    assign_all(stack, inbox, [insert_conversation(stack, inbox)])

    assert open_counts(stack, inbox) == {"Kim": 3}
    assert len(queued(stack, inbox)) == 1


def test_busy_agent__gets_no_new_conversation(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"])
    run_async(actions.run, stack["database_url"], actions.set_availability,
              inbox["agents"]["Kim"]["email"], "busy")

    assign_all(stack, inbox, [insert_conversation(stack, inbox) for _ in range(3)])

    assert open_counts(stack, inbox) == {"Kim": 0, "Lee": 3}


def test_balanced_chooser__fills_emptiest_agent(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], chooser="balanced")
    kim = inbox["agents"]["Kim"]["email"]
    for conversation in [insert_conversation(stack, inbox) for _ in range(3)]:
        run_async(actions.run, stack["database_url"], actions.assign, conversation, kim)

    assign_all(stack, inbox, [insert_conversation(stack, inbox) for _ in range(3)])

    assert open_counts(stack, inbox) == {"Kim": 3, "Lee": 3}


def test_unassign__requeue_goes_to_back(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    first, waiting = (insert_conversation(stack, inbox) for _ in range(2))
    assign_all(stack, inbox, [first, waiting])

    result = run_async(actions.run, stack["database_url"], actions.unassign, first, requeue=True)

    assert result["queued"] is True
    assert assignee_of(stack, waiting) == "Kim"
    assert queued(stack, inbox) == [first]
    unassigned = [row for row in decision_log(stack, inbox) if row["decision"] == "unassigned"]
    assert [row["reason"] for row in unassigned] == ["manual"]


def test_unassign__without_requeue_stays_unassigned(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], limit=1)
    conversation = insert_conversation(stack, inbox)
    assign_all(stack, inbox, [conversation])

    result = run_async(actions.run, stack["database_url"], actions.unassign, conversation)

    assert result == {"id": conversation, "status": "open", "assignee": None,
                      "assignee_id": None, "queued": False}


def test_actions__unknown_conversation(stack: dict[str, Any]) -> None:
    with pytest.raises(actions.NotFound, match="conversation not found: 'nope'"):
        run_async(actions.run, stack["database_url"], actions.resolve, "nope")


def test_availability__invalid_value(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"])

    with pytest.raises(actions.ActionError, match="invalid availability 'away'"):
        run_async(actions.run, stack["database_url"], actions.set_availability,
                  inbox["agents"]["Kim"]["email"], "away")


def test_status_events__resolve_and_reopen(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"])
    conversation = insert_conversation(stack, inbox)
    run_async(actions.run, stack["database_url"], actions.resolve, conversation,
              action_id="resolve-1")
    run_async(actions.run, stack["database_url"], actions.reopen, conversation,
              action_id="reopen-1")

    rows = query(stack, "SELECT 1 FROM conversations WHERE id = %s AND status = 'open'",
                 (conversation,))
    assert len(rows) == 1
    expected = {conversation_event(event_type, fact=fact, inbox_id=inbox["id"],
                                   conversation_id=conversation)["event_id"]: (status, previous)
                for event_type, fact, status, previous in (
                    ("STATUS_CHANGED", "resolved/resolve-1", "resolved", "open"),
                    ("STATUS_CHANGED", "open/reopen-1", "open", "resolved"))}
    events = wait_for_events(stack, inbox["id"], set(expected))
    for event_id, (status, previous) in expected.items():
        assert events[event_id]["status"] == status
        assert events[event_id]["previous_status"] == previous
        assert events[event_id]["reason"] == "manual"
