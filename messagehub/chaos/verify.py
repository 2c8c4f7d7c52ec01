"""The end checks of a chaos run: what the database, the topics and the sink hold.

:mod:`messagehub.chaos.harness` calls :func:`wait_until_settled` once the import
and the faults are over, then :func:`verify`. The guarantees it checks,
each as a count that must be zero:

- ``lost``: a generated mail that is neither a message nor a notice of its
  inbox;
- ``doubled_messages``: a mail stored twice (two rows for one Message-ID, or
  two MESSAGE_ADDED events with different event ids for one message);
- ``doubled_conversations``: a thread split over more than one
  conversation, or a conversation created by two different events;
- ``merged_conversations``: a conversation that contains mail of more than
  one thread;
- ``doubled_sends``: a greeting or an agent reply that reached the SMTP sink
  more than once (``resent_same_message_id`` counts the resends that carry
  the first one's Message-ID, which the send ledger allows after a crash
  between the SMTP server's acceptance and the ledger write);
- ``missing_sends``: a greeting or requested agent reply that never arrived;
- ``stuck``: outbox rows, ledger rows left ``sending``, consumer lag, queued
  conversations;
- ``dead_letters``: records any stage gave up on.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messagehub import codec, db, topics
from messagehub.chaos.faults import STAGE_GROUPS, ConsumerProgress
from messagehub.chaos.threads import ChaosThread
from messagehub.localstack.smtp_sink import read_sink

log = logging.getLogger(__name__)

SETTLE_POLL_SECONDS = 2.0
# Polls in a row with the same figures before the pipeline counts as settled.
SETTLE_STABLE_POLLS = 3
DEAD_LETTER_TOPICS = (topics.ROUTER_DEAD_LETTER, topics.ASSIGN_DEAD_LETTER,
                      topics.OUTBOUND_DEAD_LETTER)


@dataclass(frozen=True)
class RunScope:
    """Scope of a run: its inboxes (by index), threads and requested agent replies."""

    database_url: str
    kafka_bootstrap: str
    sink_dir: Path
    inbox_ids: list[str]
    threads: list[ChaosThread]
    agent_requests: dict[str, str]  # request id -> conversation id

    @property
    def expected_keys(self) -> dict[tuple[str, str], int]:
        """Return ``{(inbox id, Message-ID): thread index}`` of every generated mail."""
        return {(self.inbox_ids[thread.inbox], mail.message_id): thread.index
                for thread in self.threads for mail in thread.mails}


def pipeline_state(scope: RunScope, consumers: ConsumerProgress) -> dict[str, Any]:
    """Return the figures that must stop moving before the checks run."""
    with db.connect(scope.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM messages WHERE inbox_id = ANY(%(inboxes)s::uuid[]) "
            "        AND direction = 'incoming') AS incoming, "
            "       (SELECT count(*) FROM notices WHERE inbox_id = ANY(%(inboxes)s::uuid[])) "
            "        AS notices, "
            "       (SELECT count(*) FROM outbox) AS outbox, "
            "       (SELECT count(*) FROM send_ledger WHERE status = 'sending') AS sending, "
            "       (SELECT count(*) FROM send_ledger) AS requests, "
            "       (SELECT count(*) FROM conversations "
            "        WHERE inbox_id = ANY(%(inboxes)s::uuid[])) AS conversations, "
            "       (SELECT count(*) FROM send_ledger WHERE kind = 'greeting') AS greetings",
            {"inboxes": scope.inbox_ids}).fetchone()
    state: dict[str, Any] = dict(row or {})
    state["lag"] = {stage: consumers.committed_and_lag(stage)[1] for stage in STAGE_GROUPS}
    state["sink"] = sum(1 for _ in scope.sink_dir.glob("*.json")) if scope.sink_dir.is_dir() else 0
    return state


def wait_until_settled(scope: RunScope, *, timeout_seconds: float) -> tuple[bool, float]:
    """Wait until every mail is in, nothing waits and the figures hold still.

    Returns whether it settled and how long the wait took.
    """
    started = time.monotonic()
    expected = len(scope.expected_keys)
    consumers = ConsumerProgress(scope.kafka_bootstrap)
    previous: dict[str, Any] | None = None
    stable = 0
    try:
        while time.monotonic() - started < timeout_seconds:
            try:
                state = pipeline_state(scope, consumers)
            except Exception as exc:  # noqa: BLE001 - a dependency may still be recovering
                log.info("chaos: settle check failed, trying again: %r", exc)
                consumers.close()
                time.sleep(SETTLE_POLL_SECONDS)
                continue
            done = (state["incoming"] + state["notices"] >= expected and state["outbox"] == 0
                    and state["sending"] == 0 and not any(state["lag"].values())
                    and state["greetings"] >= state["conversations"])
            stable = stable + 1 if done and state == previous else 0
            if stable >= SETTLE_STABLE_POLLS:
                return True, time.monotonic() - started
            previous = state
            time.sleep(SETTLE_POLL_SECONDS)
    finally:
        consumers.close()
    log.warning("chaos: the pipeline did not settle within %.0fs: %s", timeout_seconds, previous)
    return False, time.monotonic() - started


def verify(scope: RunScope) -> dict[str, Any]:
    """Return the figures of the end checks; see the module docstring."""
    rows = _read_database(scope)
    events = read_topic_records(scope.kafka_bootstrap, [topics.CONVERSATION_EVENTS],
                                inboxes=set(scope.inbox_ids))
    sink_ids = Counter(_sink_message_ids(scope.sink_dir))

    report: dict[str, Any] = {}
    report.update(_check_messages(scope, rows, events))
    report.update(_check_sends(scope, rows, sink_ids))
    report["stuck"] = _stuck(scope, rows)
    report["dead_letters"] = _dead_letters(scope.kafka_bootstrap)
    return report


def _read_database(scope: RunScope) -> dict[str, list[dict[str, Any]]]:
    queries = {
        "messages": "SELECT id::text, inbox_id::text, conversation_id::text, rfc_message_id, "
                    "direction, kind FROM messages WHERE inbox_id = ANY(%(inboxes)s::uuid[])",
        "notices": "SELECT inbox_id::text, dedup_key, kind FROM notices "
                   "WHERE inbox_id = ANY(%(inboxes)s::uuid[])",
        "conversations": "SELECT id::text, inbox_id::text, status, assignee_id::text "
                         "FROM conversations WHERE inbox_id = ANY(%(inboxes)s::uuid[])",
        "ledger": "SELECT request_id, conversation_id::text, kind, rfc_message_id, status, "
                  "error_class, smtp_response FROM send_ledger "
                  "WHERE inbox_id = ANY(%(inboxes)s::uuid[])",
        "outbox": "SELECT topic, event_id FROM outbox",
        "all_sent_ids": "SELECT rfc_message_id FROM send_ledger",
        "queue": "SELECT conversation_id::text FROM assignment_queue "
                 "WHERE inbox_id = ANY(%(inboxes)s::uuid[])",
    }
    with db.connect(scope.database_url, autocommit=True) as conn:
        return {name: conn.execute(sql, {"inboxes": scope.inbox_ids}).fetchall()
                for name, sql in queries.items()}


def _check_messages(scope: RunScope, rows: dict[str, list[dict[str, Any]]],
                    events: list[dict[str, Any]]) -> dict[str, Any]:
    expected = scope.expected_keys
    incoming: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for message in rows["messages"]:
        if message["direction"] == "incoming":
            incoming[(message["inbox_id"], message["rfc_message_id"])].append(message)
    notices = {(notice["inbox_id"], notice["dedup_key"]) for notice in rows["notices"]}

    lost = [key for key in expected if key not in incoming and key not in notices]
    doubled_rows = sum(len(found) - 1 for found in incoming.values() if len(found) > 1)
    outgoing = Counter((m["conversation_id"], m["rfc_message_id"])
                       for m in rows["messages"] if m["direction"] == "outgoing")
    doubled_rows += sum(count - 1 for count in outgoing.values() if count > 1)

    added = defaultdict(set)
    created = defaultdict(set)
    for event in events:
        if event["type"] == "MESSAGE_ADDED":
            added[event["message_id"]].add(event["event_id"])
        elif event["type"] == "CONVERSATION_CREATED":
            created[event["conversation_id"]].add(event["event_id"])
    doubled_events = sum(len(ids) - 1 for ids in added.values() if len(ids) > 1)

    conversations_of_thread: dict[int, set[str]] = defaultdict(set)
    threads_of_conversation: dict[str, set[int]] = defaultdict(set)
    for key, found in incoming.items():
        thread = expected.get(key)
        if thread is None:
            continue
        for message in found:
            conversations_of_thread[thread].add(message["conversation_id"])
            threads_of_conversation[message["conversation_id"]].add(thread)

    return {
        "lost": len(lost),
        "lost_examples": [message_id for _, message_id in lost[:5]],
        "unexpected_messages": sum(1 for key in incoming if key not in expected),
        "doubled_messages": doubled_rows + doubled_events,
        "doubled_conversations": sum(len(c) - 1 for c in conversations_of_thread.values())
        + sum(len(ids) - 1 for ids in created.values() if len(ids) > 1),
        "merged_conversations": sum(len(t) - 1 for t in threads_of_conversation.values()),
        "conversations": len(rows["conversations"]),
        "threads": len(scope.threads),
    }


def _check_sends(scope: RunScope, rows: dict[str, list[dict[str, Any]]],
                 sink_ids: Counter[str]) -> dict[str, Any]:
    ledger_by_request = {row["request_id"]: row for row in rows["ledger"]}
    greetings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows["ledger"]:
        if row["kind"] == "greeting":
            greetings[row["conversation_id"]].append(row)

    doubled = 0
    missing: list[str] = []
    failed: Counter[str] = Counter()
    for conversation in rows["conversations"]:
        requests = greetings.get(conversation["id"], [])
        deliveries = sum(sink_ids[row["rfc_message_id"]] for row in requests)
        doubled += max(0, deliveries - 1)
        if deliveries == 0:
            missing.append(f"greeting of conversation {conversation['id']}: "
                           + (", ".join(f"{r['status']} {r['error_class'] or ''}".strip()
                                        for r in requests) or "never requested"))
        failed.update(f"greeting {r['status']}: {r['error_class']}" for r in requests
                      if r["status"] in ("failed", "suppressed"))

    for request_id in scope.agent_requests:
        reply = ledger_by_request.get(request_id)
        deliveries = sink_ids[reply["rfc_message_id"]] if reply else 0
        doubled += max(0, deliveries - 1)
        if deliveries == 0:
            missing.append(f"agent reply {request_id}: "
                           + (f"{reply['status']} {reply['error_class'] or ''}" if reply
                              else "never reached outbound"))
        if reply and reply["status"] in ("failed", "suppressed"):
            failed[f"agent {reply['status']}: {reply['error_class']}"] += 1

    ours = {row["rfc_message_id"] for row in rows["all_sent_ids"]}
    return {
        "doubled_sends": doubled,
        "resent_same_message_id": sum(count - 1 for count in sink_ids.values() if count > 1),
        "missing_sends": len(missing),
        "missing_send_examples": missing[:5],
        "failed_sends": dict(failed),
        "greetings_delivered": sum(1 for c in rows["conversations"]
                                   if any(sink_ids[r["rfc_message_id"]]
                                          for r in greetings.get(c["id"], []))),
        "agent_replies_requested": len(scope.agent_requests),
        "sink_mails_not_ours": sum(count for message_id, count in sink_ids.items()
                                   if message_id not in ours),
    }


def _stuck(scope: RunScope, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    consumers = ConsumerProgress(scope.kafka_bootstrap)
    try:
        lag = {stage: consumers.committed_and_lag(stage)[1] for stage in STAGE_GROUPS}
    finally:
        consumers.close()
    return {
        "outbox": len(rows["outbox"]),
        "ledger_sending": sum(1 for row in rows["ledger"] if row["status"] == "sending"),
        "consumer_lag": lag,
        "assignment_queue": len(rows["queue"]),
        "unassigned_open": sum(1 for c in rows["conversations"]
                               if c["status"] == "open" and c["assignee_id"] is None),
    }


def _dead_letters(bootstrap: str) -> dict[str, Any]:
    records = read_topic_records(bootstrap, DEAD_LETTER_TOPICS)
    by_topic: dict[str, Any] = {}
    for topic in DEAD_LETTER_TOPICS:
        reasons = Counter(f"{r['error_class']}: {r['reason'][:120]}" for r in records
                          if r["_topic"] == topic)
        by_topic[topic] = {"records": sum(reasons.values()), "reasons": dict(reasons.most_common(5))}
    return by_topic


def read_topic_records(bootstrap: str, names: Sequence[str], *,
                       inboxes: set[str] | None = None) -> list[dict[str, Any]]:
    """Return every record of the named topics, decoded, with ``_topic`` added."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="messagehub-chaos-verify",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        from messagehub.chaos.faults import consumer_partitions

        partitions = consumer_partitions(consumer, names)
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[dict[str, Any]] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for tp, batch in consumer.poll(timeout_ms=1000, max_records=5000).items():
                for message in batch:
                    _, record = codec.decode(message.value)
                    if inboxes is None or record.get("inbox_id") in inboxes:
                        records.append({**record, "_topic": tp.topic})
        return records
    finally:
        consumer.close()


def _sink_message_ids(sink_dir: Path) -> list[str]:
    ids = []
    for mail in read_sink(sink_dir):
        value = str(mail.message.get("Message-ID", "")).strip()
        ids.append(value.strip("<>"))
    return ids
