"""The outbound stage: one outbound request becomes one mail over SMTP.

:class:`OutboundStage` is applied by the shared batch loop to each record of
``outbound.requests``. The send ledger makes each request id go out at most
once:

1. a ledger row for the request id is committed, with the Message-ID the
   mail will carry, before anything is sent;
2. the mail is built, stored in the raw mail store and handed to SMTP;
3. on acceptance, the ledger row turns ``sent`` and ``mail.sent`` is queued
   in the outbox, in one transaction.

A request whose ledger row is already finished is skipped. If the process
dies between the server's acceptance and step 3, the row is still
``sending`` and the redelivered request sends again with the same
Message-ID, so the customer's client shows one mail.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from messagehub import ids, outbox, topics
from messagehub.worker import StageError
from services.outbound.compose import Sender, build_mail, make_message_id, reply_subject
from services.outbound.smtp import SmtpDelivery, SmtpPermanentError
from services.outbound.texts import default_text, render_html, render_text

log = logging.getLogger(__name__)

FINISHED_STATES = ("sent", "failed", "suppressed")


class ConversationMissing(StageError):
    """The request names a conversation that is not in the database."""


class OutboundStage:
    name = "outbound"

    def __init__(self, *, delivery: SmtpDelivery, message_id_domain: str,
                 inbound_domain: str) -> None:
        self._delivery = delivery
        self._message_id_domain = message_id_domain
        self._inbound_domain = inbound_domain
        self._pool: AsyncConnectionPool | None = None

    def bind(self, pool: AsyncConnectionPool) -> None:
        """Give the stage the pool for its ledger transactions."""
        self._pool = pool

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name != "OutboundRequest":
            return
        assert self._pool is not None, "bind() the pool before applying requests"

        context = await _load_context(conn, record)
        ledger = await self._open_ledger(record)
        if ledger["status"] in FINISHED_STATES:
            log.info("outbound: request %s: already %s, skipped", record["request_id"],
                     ledger["status"])
            return

        raw, recipients, subject = self._build(record, context, ledger["rfc_message_id"])
        sha256 = await self._store_raw(raw)
        try:
            response = await self._delivery.send(raw, sender=context["inbox"]["email"],
                                                 recipients=recipients)
        except SmtpPermanentError as exc:
            await self._finish_failed(record, exc)
            return
        await self._finish_sent(record, ledger["rfc_message_id"], sha256, recipients, subject,
                                response)

    async def _open_ledger(self, record: dict[str, Any]) -> dict[str, Any]:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO send_ledger (request_id, inbox_id, conversation_id, kind, "
                "rfc_message_id, status) VALUES (%s, %s, %s, %s, %s, 'sending') "
                "ON CONFLICT (request_id) DO NOTHING",
                (record["request_id"], record["inbox_id"], record["conversation_id"],
                 record["kind"], make_message_id(self._message_id_domain)))
            cursor = await conn.execute(
                "UPDATE send_ledger SET attempts = attempts + 1 WHERE request_id = %s "
                "RETURNING *", (record["request_id"],))
            ledger = await cursor.fetchone()
        assert ledger is not None
        return ledger

    def _build(self, record: dict[str, Any], context: dict[str, Any],
               message_id: str) -> tuple[bytes, list[str], str]:
        inbox, conversation, contact, thread = (context["inbox"], context["conversation"],
                                                context["contact"], context["thread"])
        text, html = _body(record, inbox, contact)
        sender = Sender(
            inbox_name=inbox["name"], inbox_email=inbox["email"],
            business_name=inbox["business_name"] or inbox["name"],
            sender_name_style=inbox["sender_name_style"],
            agent_name=context["agent_name"])
        subject = reply_subject(conversation["subject"])
        recipients = [contact["email"]]

        raw = build_mail(
            sender=sender, to=[(contact["name"], contact["email"])], subject=subject,
            text=text, html=html, message_id=message_id,
            in_reply_to=thread["in_reply_to"], references=thread["references"],
            reply_to=f"reply+{conversation['reply_token']}@{self._inbound_domain}",
            automatic=record["kind"] != "agent")
        return raw, recipients, subject

    async def _store_raw(self, raw: bytes) -> str:
        assert self._pool is not None
        sha256 = hashlib.sha256(raw).hexdigest()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                "ON CONFLICT (sha256) DO NOTHING", (sha256, len(raw), raw))
        return sha256

    async def _finish_sent(self, record: dict[str, Any], message_id: str, sha256: str,
                           recipients: list[str], subject: str, response: str) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE send_ledger SET status = 'sent', smtp_response = %s, "
                "finished_at = now() WHERE request_id = %s", (response, record["request_id"]))
            await outbox.add(conn, topics.MAIL_SENT, record["inbox_id"], "MailSent", {
                "event_id": ids.derive_id("mail-sent", record["request_id"]),
                "occurred_at": datetime.now(timezone.utc),
                "inbox_id": record["inbox_id"],
                "conversation_id": record["conversation_id"],
                "request_id": record["request_id"],
                "kind": record["kind"],
                "rfc_message_id": message_id,
                "raw_sha256": sha256,
                "recipients": recipients,
                "subject": subject,
                "agent_id": record["agent_id"],
                "smtp_response": response,
            })
        log.info("outbound: inbox %s Message-ID %s: %s sent for conversation %s: %s",
                 record["inbox_id"], message_id, record["kind"], record["conversation_id"],
                 response)

    async def _finish_failed(self, record: dict[str, Any], exc: SmtpPermanentError) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE send_ledger SET status = 'failed', smtp_response = %s, "
                "finished_at = now() WHERE request_id = %s", (str(exc), record["request_id"]))
            await outbox.add(conn, topics.MAIL_FAILED, record["inbox_id"], "MailFailed", {
                "event_id": ids.derive_id("mail-failed", record["request_id"]),
                "occurred_at": datetime.now(timezone.utc),
                "inbox_id": record["inbox_id"],
                "conversation_id": record["conversation_id"],
                "request_id": record["request_id"],
                "kind": record["kind"],
                "error_class": exc.error_class,
                "smtp_code": exc.code,
                "detail": str(exc),
            })
        log.error("outbound: inbox %s request %s: %s failed for good: %s",
                  record["inbox_id"], record["request_id"], record["kind"], exc)


def _body(record: dict[str, Any], inbox: dict[str, Any],
          contact: dict[str, Any]) -> tuple[str, str | None]:
    if record["kind"] == "agent":
        return record["text"] or "", record["html"]

    values = {"customer_name": contact["name"] or contact["email"], "inbox_name": inbox["name"]}
    custom = inbox["greeting_text"] if record["kind"] == "greeting" else None
    if custom:
        return render_text(custom, **values), None
    default = default_text(record["kind"], inbox["locale"])
    return render_text(default.text, **values), render_html(default.html, **values)


async def _load_context(conn: AsyncConnection[Any], record: dict[str, Any]) -> dict[str, Any]:
    cursor = await conn.execute(
        "SELECT c.*, row_to_json(i.*) AS inbox, row_to_json(ct.*) AS contact "
        "FROM conversations c JOIN inboxes i ON i.id = c.inbox_id "
        "LEFT JOIN contacts ct ON ct.id = c.contact_id WHERE c.id = %s",
        (record["conversation_id"],))
    conversation = await cursor.fetchone()
    if conversation is None:
        raise ConversationMissing(f"conversation {record['conversation_id']} does not exist")
    if conversation["contact"] is None:
        raise StageError(f"conversation {record['conversation_id']} has no contact to write to")

    agent_name = None
    if record["agent_id"]:
        cursor = await conn.execute("SELECT name FROM agents WHERE id = %s", (record["agent_id"],))
        agent = await cursor.fetchone()
        agent_name = agent["name"] if agent else None

    return {"conversation": conversation, "inbox": conversation["inbox"],
            "contact": conversation["contact"], "agent_name": agent_name,
            "thread": await _thread_headers(conn, record["conversation_id"])}


async def _thread_headers(conn: AsyncConnection[Any], conversation_id: str) -> dict[str, Any]:
    """Return In-Reply-To and References that continue the customer's latest mail."""
    cursor = await conn.execute(
        "SELECT rfc_message_id, \"references\" FROM messages WHERE conversation_id = %s "
        "AND direction = 'incoming' AND rfc_message_id IS NOT NULL "
        "ORDER BY received_at DESC, id LIMIT 1", (conversation_id,))
    latest = await cursor.fetchone()
    if latest is None:
        return {"in_reply_to": None, "references": []}
    references = [*latest["references"], latest["rfc_message_id"]]
    return {"in_reply_to": latest["rfc_message_id"], "references": references}
