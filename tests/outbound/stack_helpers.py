"""Helpers of the outbound stack tests: inbox settings, requests, resolutions and waits."""

from __future__ import annotations

import email.policy
import time
import uuid
from datetime import datetime, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from messagehub import codec, db, ids, secrets, topics
from messagehub.events import conversation_event
from messagehub.localstack.smtp_sink import read_sink
from tests.pipeline_helpers import create_inbox, import_and_wait

WAIT_SECONDS = 90.0


def new_inbox(stack: dict[str, Any], *, email_address: str = "support@example.com",
              greeting: bool = True, **columns: Any) -> dict[str, Any]:
    """Create an inbox with one agent and set extra inbox columns (csat_enabled, locale...)."""
    inbox = create_inbox(stack, email_address=email_address, agents=["Kim"], greeting=greeting)
    if columns:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        with db.connect(stack["database_url"], autocommit=True) as conn:
            conn.execute(f"UPDATE inboxes SET {assignments} WHERE id = %s",
                         (*columns.values(), inbox["id"]))
    return inbox


def set_smtp(stack: dict[str, Any], inbox: dict[str, Any], *, port: int, username: str = "",
             password: str = "", encryption: str = "auto", auth_method: str = "auto",
             save_to_sent: bool = True) -> None:
    """Give the inbox its own SMTP server on 127.0.0.1, with the password encrypted."""
    secrets.configure(stack["encryption_keys"])
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO inbox_smtp (inbox_id, host, port, username, password_encrypted, "
            "encryption, auth_method, save_to_sent) VALUES (%s, '127.0.0.1', %s, %s, %s, %s, %s, %s)",
            (inbox["id"], port, username, secrets.encrypt(password) if password else None,
             encryption, auth_method, save_to_sent))


def set_imap(stack: dict[str, Any], inbox: dict[str, Any], *, login: str, password: str) -> None:
    """Give the inbox an IMAPS login on the stack's Dovecot, for the Sent copy."""
    secrets.configure(stack["encryption_keys"])
    port = int(stack["imaps"].rsplit(":", 1)[1])
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, security) "
            "VALUES (%s, '127.0.0.1', %s, %s, %s, 'tls')",
            (inbox["id"], port, login, secrets.encrypt(password)))


def import_mails(stack: dict[str, Any], inbox: dict[str, Any], paths: list[Path]) -> None:
    import_and_wait(stack, inbox, paths)


def write_mail(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    return path


def conversation_of(stack: dict[str, Any], inbox: dict[str, Any], message_id: str) -> str:
    with db.connect(stack["database_url"]) as conn:
        row = conn.execute("SELECT conversation_id FROM messages WHERE inbox_id = %s "
                           "AND rfc_message_id = %s", (inbox["id"], message_id)).fetchone()
    assert row is not None, f"no message {message_id} in inbox {inbox['id']}"
    return str(row["conversation_id"])


def publish(stack: dict[str, Any], topic: str, key: str, record_name: str,
            record: dict[str, Any]) -> None:
    """Queue an event in the outbox; the stage services' relay sweep sends it to Kafka."""
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute("INSERT INTO outbox (topic, key, value, event_id) VALUES (%s, %s, %s, %s)",
                     (topic, key.encode(), codec.encode(record_name, record), record["event_id"]))


def request_send(stack: dict[str, Any], inbox: dict[str, Any], conversation_id: str, kind: str, *,
                 text: str | None = None, agent_id: str | None = None,
                 request_id: str | None = None) -> str:
    """Publish an OutboundRequest, as the API (agent replies) or assign (greetings) do."""
    request_id = request_id or str(uuid.uuid4())
    publish(stack, topics.OUTBOUND_REQUESTS, inbox["id"], "OutboundRequest", {
        "event_id": request_id, "occurred_at": datetime.now(timezone.utc),
        "inbox_id": inbox["id"], "conversation_id": conversation_id, "request_id": request_id,
        "kind": kind, "agent_id": agent_id, "text": text, "html": None})
    return request_id


def set_status(stack: dict[str, Any], inbox: dict[str, Any], conversation_id: str, status: str,
               *, fact: str | None = None) -> dict[str, Any]:
    """Change the conversation's status and publish STATUS_CHANGED, as a conversation action does."""
    previous = "open" if status == "resolved" else "resolved"
    event = conversation_event(
        "STATUS_CHANGED", fact=fact or f"{status}/{uuid.uuid4()}", inbox_id=inbox["id"],
        conversation_id=conversation_id, status=status, previous_status=previous,
        reason="agent")
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute("UPDATE conversations SET status = %s WHERE id = %s", (status, conversation_id))
    publish(stack, topics.CONVERSATION_EVENTS, inbox["id"], "ConversationEvent", event)
    return event


def agent_of(stack: dict[str, Any], inbox: dict[str, Any]) -> str:
    with db.connect(stack["database_url"]) as conn:
        row = conn.execute("SELECT agent_id FROM inbox_agents WHERE inbox_id = %s LIMIT 1",
                           (inbox["id"],)).fetchone()
    assert row is not None
    return str(row["agent_id"])


def wait_for_ledger(stack: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Wait until the request's ledger row is finished (sent, failed or suppressed)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with db.connect(stack["database_url"]) as conn:
            row = conn.execute("SELECT * FROM send_ledger WHERE request_id = %s "
                               "AND status <> 'sending'", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.3)
    raise AssertionError(f"request {request_id} not finished within {WAIT_SECONDS:.0f}s")


def wait_for_row(stack: dict[str, Any], query: str, params: tuple[Any, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with db.connect(stack["database_url"]) as conn:
            row = conn.execute(query, params).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.3)
    raise AssertionError(f"no row for {query!r} {params!r} within {WAIT_SECONDS:.0f}s")


def ledger_rows(stack: dict[str, Any], conversation_id: str, kind: str) -> list[dict[str, Any]]:
    with db.connect(stack["database_url"]) as conn:
        return [dict(row) for row in conn.execute(
            "SELECT * FROM send_ledger WHERE conversation_id = %s AND kind = %s",
            (conversation_id, kind)).fetchall()]


def sink_mail(stack: dict[str, Any], message_id: str) -> EmailMessage:
    """Return the mail with this Message-ID from the SMTP sink."""
    mails = sink_mails(stack, message_id)
    assert len(mails) == 1, f"expected one mail <{message_id}> in the sink, found {len(mails)}"
    return mails[0]


def sink_mails(stack: dict[str, Any], message_id: str) -> list[EmailMessage]:
    return [mail.message for mail in read_sink(Path(stack["sink_dir"]))
            if str(mail.message.get("Message-ID", "")).strip() == f"<{message_id}>"]


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(EmailMessage, policy=email.policy.default).parsebytes(raw)


def survey_request_id(conversation_id: str) -> str:
    return ids.derive_id("outbound-request", conversation_id, "csat")


def ids_greeting(conversation_id: str) -> str:
    """Return the request id assign gives a conversation's greeting."""
    return ids.derive_id("outbound-request", conversation_id, "greeting")


def body(mail: EmailMessage, subtype: str) -> str:
    """Return the text/``subtype`` body of a multipart/alternative mail."""
    part = mail.get_body((subtype,))
    assert part is not None, f"the mail has no text/{subtype} body"
    return str(part.get_content())
