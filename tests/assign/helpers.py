"""Helpers of the assign tests on the real stack: inboxes, conversations, events, replicas."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from messagehub import codec, db, ids, inboxes, stackctl, topics
from messagehub.localstack.processes import port_is_open
from messagehub.settings import as_environment
from tests.conftest import REPO_ROOT, TEST_PORT_BASE, TEST_STATE_DIR

T = TypeVar("T")


def create_inbox(stack: dict[str, Any], *, agents: list[str], limit: int | None = None,
                 greeting: bool = False, chooser: str = "round_robin",
                 email_address: str = "support@example.com") -> dict[str, Any]:
    """Create an inbox with a unique name; return it with ``agents``: name -> agent row."""
    name = f"assign-{uuid.uuid4().hex[:8]}"
    with db.connect(stack["database_url"], autocommit=True) as conn:
        inbox = inboxes.create_inbox(conn, name=name, email=email_address,
                                     inbound_domain=stack["inbound_domain"],
                                     greeting_enabled=greeting, auto_assign_limit=limit)
        conn.execute("UPDATE inboxes SET assign_chooser = %s WHERE id = %s",
                     (chooser, inbox["id"]))
        inbox["agents"] = {
            agent: inboxes.add_agent(conn, inbox=name, name=agent,
                                     email=f"{agent.lower()}.{name}@agents.example.com")
            for agent in agents}
    return inbox


def insert_conversation(stack: dict[str, Any], inbox: dict[str, Any], *,
                        created_at: datetime | None = None) -> str:
    """Insert a bare open conversation row, as the router would; return its id."""
    conversation_id = ids.new_id()
    created_at = created_at or datetime.now(timezone.utc)
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO conversations (id, inbox_id, subject, status, reply_token, created_at, "
            "last_message_at) VALUES (%s, %s, 'test', 'open', %s, %s, %s)",
            (conversation_id, inbox["id"], uuid.uuid4().hex, created_at, created_at))
    return conversation_id


def run_async(coroutine_function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(coroutine_function(*args, **kwargs))


async def in_transaction(database_url: str, function: Callable[..., Any], *args: Any,
                         **kwargs: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            return await function(conn, *args, **kwargs)


def query(stack: dict[str, Any], sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with db.connect(stack["database_url"], autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def open_counts(stack: dict[str, Any], inbox: dict[str, Any]) -> dict[str, int]:
    """Return each agent's open conversations in the inbox, by agent name (zeros included)."""
    rows = query(stack, "SELECT a.name, count(c.id) AS open_count FROM inbox_agents ia "
                        "JOIN agents a ON a.id = ia.agent_id LEFT JOIN conversations c "
                        "ON c.assignee_id = a.id AND c.inbox_id = ia.inbox_id "
                        "AND c.status = 'open' WHERE ia.inbox_id = %s GROUP BY a.name",
                 (inbox["id"],))
    return {row["name"]: row["open_count"] for row in rows}


def queued(stack: dict[str, Any], inbox: dict[str, Any]) -> list[str]:
    """Return the inbox's queued conversation ids in queue order."""
    rows = query(stack, "SELECT conversation_id FROM assignment_queue WHERE inbox_id = %s "
                        "ORDER BY queued_at, position", (inbox["id"],))
    return [str(row["conversation_id"]) for row in rows]


def assignee_of(stack: dict[str, Any], conversation_id: str) -> str | None:
    [row] = query(stack, "SELECT a.name FROM conversations c LEFT JOIN agents a "
                         "ON a.id = c.assignee_id WHERE c.id = %s", (conversation_id,))
    name: str | None = row["name"]
    return name


def decision_log(stack: dict[str, Any], inbox: dict[str, Any]) -> list[dict[str, Any]]:
    return query(stack, "SELECT l.*, a.name AS agent FROM assignment_log l "
                        "LEFT JOIN agents a ON a.id = l.agent_id WHERE l.inbox_id = %s "
                        "ORDER BY l.id", (inbox["id"],))


def wait_for(check: Callable[[], T | None], *, timeout_seconds: float = 90.0,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; return it."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f}s waiting for {what}; "
                               f"last result {result!r}")
        time.sleep(0.2)


def conversation_events(stack: dict[str, Any], inbox_id: str) -> list[dict[str, Any]]:
    """Return every ConversationEvent of the inbox now on the topic, in partition order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=stack["kafka_bootstrap"], enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    try:
        partitions = [TopicPartition(topics.CONVERSATION_EVENTS, p)
                      for p in consumer.partitions_for_topic(topics.CONVERSATION_EVENTS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        events = []
        while any(consumer.position(p) < ends[p] for p in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    _name, value = codec.decode(record.value)
                    if value["inbox_id"] == inbox_id:
                        events.append(value)
        return events
    finally:
        consumer.close()


def wait_for_events(stack: dict[str, Any], inbox_id: str, event_ids: set[str], *,
                    timeout_seconds: float = 60.0) -> dict[str, dict[str, Any]]:
    """Wait until every id in ``event_ids`` is on the topic; return those events by id."""
    def found() -> dict[str, dict[str, Any]] | None:
        events = {e["event_id"]: e for e in conversation_events(stack, inbox_id)}
        return events if event_ids <= set(events) else None
    return wait_for(found, timeout_seconds=timeout_seconds, what=f"{len(event_ids)} events")


# --- a second assign replica -----------------------------------------------------


class AssignReplica:
    """A second ``python -m services.assign`` with the settings of the one ``up`` started.

    Only its metrics port and faust data dir differ, so both run on one host.
    """

    def __init__(self, metrics_port: int) -> None:
        stack = stackctl.local_stack(TEST_STATE_DIR, TEST_PORT_BASE)
        [spec] = [s for s in stackctl.SERVICES if s.name == "assign"]
        secret_key = (TEST_STATE_DIR / "secret_key").read_text(encoding="ascii").strip()
        api_token = (TEST_STATE_DIR / "api_token").read_text(encoding="ascii").strip()
        settings = stackctl.service_settings(stack, spec, secret_key, api_token)
        self.settings = replace(settings, metrics_port=metrics_port,
                                faust_data_dir=str(TEST_STATE_DIR / "faust-replica"))
        self.log_path = TEST_STATE_DIR / "services" / "service-assign-replica.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services.assign"], cwd=REPO_ROOT,
            env={**os.environ, **as_environment(self.settings)},
            stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        wait_for(lambda: port_is_open(self.settings.metrics_port), timeout_seconds=60,
                 what="the second assign replica's metrics port")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def running_replica(metrics_port: int) -> Iterator[AssignReplica]:
    replica = AssignReplica(metrics_port)
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


# --- mail --------------------------------------------------------------------------------


def plain_mail(sender: str, to: str, subject: str, *, message_id: str | None = None,
               in_reply_to: str | None = None, headers: dict[str, str] | None = None,
               date: str | None = None) -> bytes:
    """Return a small customer mail with CRLF line ends."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{message_id or uuid.uuid4().hex + '@mail.example.org'}>",
             f"Date: {date or email.utils.formatdate(localtime=False)}"]
    if in_reply_to:
        lines += [f"In-Reply-To: <{in_reply_to}>", f"References: <{in_reply_to}>"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "",
              f"Hello, this is about {subject}.", ""]
    return "\r\n".join(lines).encode()


def send_forwarded(stack: dict[str, Any], inbox: dict[str, Any], raw: bytes) -> None:
    """Deliver one mail to the inbox's forwarding address through ingest's SMTP receiver."""
    import smtplib

    host, port = stack["ingest_smtp"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.sendmail("sender@mail.example.org", [inbox["forwarding_address"]], raw)


def publish_imap_mail(stack: dict[str, Any], inbox: dict[str, Any], raw: bytes,
                      internal_date: datetime, uid: int) -> None:
    """Store ``raw`` and publish it on mail.received as IMAP sync does, arriving at ``internal_date``.

    The acceptance time (occurred_at) is now, as after a sync: the hours
    must be judged by the INTERNALDATE, which the router passes on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaProducer

    sha256 = hashlib.sha256(raw).hexdigest()
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute("INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                     "ON CONFLICT (sha256) DO NOTHING", (sha256, len(raw), raw))
    record = {
        "event_id": ids.derive_id("mail-received", inbox["id"], sha256),
        "occurred_at": datetime.now(timezone.utc), "inbox_id": inbox["id"],
        "schema_version": 1,
        "raw_sha256": sha256, "raw_size": len(raw), "source": "imap",
        "envelope_sender": None, "envelope_recipients": [], "message_id": None,
        "subject": None, "from_address": None, "imap_folder": "INBOX",
        "imap_uidvalidity": 1, "imap_uid": uid, "imap_internal_date": internal_date,
    }
    producer = KafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    try:
        producer.send(topics.MAIL_RECEIVED, key=inbox["id"].encode(),
                      value=codec.encode("MailReceived", record)).get(timeout=30)
    finally:
        producer.close()


def repo_path(*parts: str) -> Path:
    return REPO_ROOT.joinpath(*parts)
