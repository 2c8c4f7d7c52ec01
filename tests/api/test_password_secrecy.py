"""IMAP and SMTP passwords never appear in plain text: not in logs, topics, the database or API responses.

One inbox gets distinctive passwords through the API, then real traffic
uses them: the IMAP sync logs in and imports a mail, an agent reply goes
out through the inbox's own SMTP server with AUTH and is copied to the Sent
folder, connection tests pass and fail, a wrong password makes the sync
fail, and the keys are rotated. Afterwards the test searches every
service log of the stack, every record of every topic, every text, JSON
and bytea column of the database except the encrypted password columns,
and every API answer of the session.
"""

from __future__ import annotations

import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest
from imapclient import IMAPClient
from imapclient import exceptions as imap_errors

from messagehub import stackctl, topics
from tests.api.helpers import Api, create_agent, create_inbox, wait_for, wait_for_conversation
from tests.conftest import TEST_PORT_BASE, TEST_STATE_DIR
from tests.outbound.smtp_servers import SmtpTestServer

pytestmark = pytest.mark.stack

MARKER = "Quokka-Tangerine-4417"
IMAP_PASSWORD = f"{MARKER}-imap"
SMTP_PASSWORD = f"{MARKER}-smtp"
WRONG_PASSWORD = f"{MARKER}-typo"
ENCRYPTED_COLUMNS = {"password_encrypted"}


def add_mailbox(stack: dict[str, Any], login: str, password: str) -> None:
    """Create a Dovecot user with ``password`` and wait until it can log in."""
    local = stackctl.local_stack(TEST_STATE_DIR, TEST_PORT_BASE)
    local.add_imap_user(login, password)
    deadline = time.monotonic() + 10
    while True:
        try:
            with IMAPClient("127.0.0.1", port=local.imap_port, ssl=False, timeout=10) as client:
                client.login(login, password)
            return
        except imap_errors.LoginError:
            assert time.monotonic() < deadline, "Dovecot did not accept the new user"
            # Dovecot notices a rewritten passwd-file by its modification time.
            time.sleep(1.1)
            local.add_imap_user(login, password)


def port_of(stack: dict[str, Any], name: str) -> int:
    return int(stack[name].rsplit(":", 1)[1])


def run_traffic(stack: dict[str, Any], api: Api) -> None:
    login = f"secrecy-{uuid.uuid4().hex[:8]}"
    add_mailbox(stack, login, IMAP_PASSWORD)
    inbox = create_inbox(api)
    agent = create_agent(api, inbox)
    base = f"/v1/inboxes/{inbox['id']}"
    imap = {"host": "127.0.0.1", "port": port_of(stack, "imaps"), "username": login,
            "password": IMAP_PASSWORD, "security": "tls"}
    api.ok("PATCH", f"{base}/imap", imap)

    folder = Path(stack["tls_ca_file"]).parent
    with SmtpTestServer("starttls", cert_file=folder / "cert.pem", key_file=folder / "key.pem",
                        username=login, password=SMTP_PASSWORD) as server:
        api.ok("PATCH", f"{base}/smtp", {"host": "127.0.0.1", "port": server.port,
                                         "username": login, "password": SMTP_PASSWORD,
                                         "encryption": "starttls"})
        assert api.ok("POST", f"{base}/imap/test")["ok"] is True
        assert api.ok("POST", f"{base}/smtp/test")["ok"] is True
        assert api.ok("POST", f"{base}/imap/test", {"password": WRONG_PASSWORD})["ok"] is False
        assert api.ok("POST", f"{base}/smtp/test", {"password": WRONG_PASSWORD})["ok"] is False

        subject = f"Printer on fire {uuid.uuid4().hex[:6]}"
        with IMAPClient("127.0.0.1", port=port_of(stack, "imap"), ssl=False, timeout=30) as box:
            box.login(login, IMAP_PASSWORD)
            box.append("INBOX", (f"From: Dana <dana@customer.example>\r\nTo: {login}\r\n"
                                 f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@c.example>"
                                 "\r\n\r\nIt is on fire.\r\n").encode())
        conversation = wait_for_conversation(api, inbox, subject)
        api.ok("POST", f"/v1/conversations/{conversation['id']}/reply",
               {"text": "Please unplug it.", "agent": agent["email"]}, expected=202)
        wait_for(lambda: [m for m in server.mails if b"unplug" in m.data],
                 what="the reply at the inbox's SMTP server")
        assert all(attempt.success for session in server.sessions for attempt in session.auth
                   if attempt.login == login)

    api.ok("PATCH", f"{base}/smtp", {"enabled": False})
    api.ok("PATCH", f"{base}/imap", {"password": WRONG_PASSWORD})
    wait_for(lambda: api.ok("GET", f"{base}/health")["last_error"], what="the sync to fail")
    api.ok("PATCH", f"{base}/imap", {"password": IMAP_PASSWORD})
    api.ok("POST", "/v1/encryption/rotate")


def database_hits(database_url: str, needle: str) -> list[str]:
    """Return table.column of every readable column that contains ``needle``."""
    hits = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', "
            "'bytea', 'json', 'jsonb', 'ARRAY') ORDER BY table_name, column_name").fetchall()
        assert len(columns) > 50
        for table, column, data_type in columns:
            if column in ENCRYPTED_COLUMNS:
                continue
            condition = (f'position(%s::bytea in "{column}") > 0' if data_type == "bytea"
                         else f'"{column}"::text LIKE %s')
            value: Any = needle.encode() if data_type == "bytea" else f"%{needle}%"
            found = conn.execute(f'SELECT count(*) FROM "{table}" WHERE {condition}',
                                 (value,)).fetchone()
            if found and found[0]:
                hits.append(f"{table}.{column}")
    return hits


def topic_hits(bootstrap: str, needle: bytes) -> tuple[list[str], int]:
    """Return the topics with a record containing ``needle``, and how many records were read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(name, number) for name in topics.ALL_TOPICS
                      for number in consumer.partitions_for_topic(name) or ()]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        consumer.seek_to_beginning(*partitions)
        hits, read = set(), 0
        deadline = time.monotonic() + 120
        while any(consumer.position(p) < end for p, end in ends.items()):
            assert time.monotonic() < deadline, "reading the topics took too long"
            for partition, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    read += 1
                    if needle in (record.key or b"") or needle in (record.value or b""):
                        hits.add(partition.topic)
        return sorted(hits), read
    finally:
        consumer.close()


def test_passwords_never_in_plain_text(stack: dict[str, Any], api: Api) -> None:
    run_traffic(stack, api)

    logs = sorted((Path(stack["state_dir"]) / "services").glob("*.log"))
    assert {path.stem for path in logs} >= {"service-ingest", "service-outbound", "service-api"}
    for path in logs:
        assert MARKER.encode() not in path.read_bytes(), f"a password is in {path.name}"

    hits, records = topic_hits(stack["kafka_bootstrap"], MARKER.encode())
    assert records > 0
    assert hits == []

    assert database_hits(stack["database_url"], MARKER) == []
    with psycopg.connect(stack["database_url"]) as conn:
        stored = conn.execute("SELECT password_encrypted FROM inbox_imap UNION ALL "
                              "SELECT password_encrypted FROM inbox_smtp").fetchall()
    assert stored and all(MARKER not in (row[0] or "") for row in stored)

    assert [answer for answer in api.answers if MARKER in answer] == []
