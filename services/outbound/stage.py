"""The outbound stage: one outbound request becomes one mail over SMTP.

:class:`OutboundStage` is applied by the shared batch loop to each record of
``outbound.requests`` (agent replies, greetings, out-of-hours notes) and of
``conversation.events``, where a conversation resolved in an inbox with CSAT
on becomes a survey request. The send ledger makes each request id go out at
most once:

1. a ledger row for the request id is committed, with the Message-ID the
   mail will carry, before anything is sent;
2. automatic mail passes the loop checks and caps of limits.py, or the row
   turns ``suppressed``;
3. the mail is built and handed to the inbox's SMTP server (or the
   operator's relay) once the inbox is below its rate limit;
4. on acceptance, the raw mail is stored, the ledger row turns ``sent`` and
   ``mail.sent`` is queued in the outbox, in one transaction; a permanent
   failure turns it ``failed`` with ``mail.failed``;
5. inboxes with their own SMTP and IMAP get a copy in their Sent folder.

A request whose ledger row is already finished is skipped. If the process
dies between the server's acceptance and step 4, the row is still
``sending`` and the redelivered request sends again with the same
Message-ID, so the customer's client shows one mail. The survey's request id
is derived from the conversation id, so a conversation gets one survey
however often it is resolved and however often the event is delivered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import ssl
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from messagehub import business_hours, ids, outbox, topics
from messagehub.events import conversation_event
from messagehub.smtp_client import SmtpDelivery, SmtpPermanentError, SmtpServer
from messagehub.worker import StageError
from services.outbound.compose import Sender, build_mail, make_message_id, reply_subject
from services.outbound.layout import frame_html
from services.outbound.limits import (
    AutomaticMailCaps,
    automatic_mail_suppression,
    count_send,
    wait_for_send_slot,
)
from services.outbound.metrics import OutboundMetrics
from services.outbound.routes import Route, load_route
from services.outbound.sentcopy import SentCopyError, save_sent_copy
from services.outbound.texts import custom_text, default_text, render_auto_text

log = logging.getLogger(__name__)

FINISHED_STATES = ("sent", "failed", "suppressed")
# Resolutions older than this get no survey.
SURVEY_MAX_EVENT_AGE = timedelta(days=1)
# Custom text columns of the inbox, per automatic kind.
CUSTOM_TEXT_COLUMNS = {"greeting": "greeting_text", "out_of_hours": "out_of_hours_text",
                       "csat": "csat_text"}


class ConversationMissing(StageError):
    """The request names a conversation that is not in the database."""


def survey_token(secret_key: str, conversation_id: str) -> str:
    """Return the token of a conversation's survey link, an HMAC under the server secret.

    Without the secret the token cannot be guessed or forged. It is derived,
    not random, so a resent survey mail carries the same link.
    """
    digest = hmac.new(secret_key.encode(), f"csat/{conversation_id}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def survey_request_id(conversation_id: str) -> str:
    """Return the request id of a conversation's one survey."""
    return ids.derive_id("outbound-request", conversation_id, "csat")


class OutboundStage:
    name = "outbound"

    def __init__(self, *, delivery: SmtpDelivery, relay: SmtpServer, message_id_domain: str,
                 inbound_domain: str, secret_key: str, survey_base_url: str,
                 survey_valid_days: int, caps: AutomaticMailCaps, default_max_per_minute: int,
                 imap_tls_context: ssl.SSLContext | None = None,
                 sensor: OutboundMetrics | None = None) -> None:
        self._delivery = delivery
        self._relay = relay
        self._message_id_domain = message_id_domain
        self._inbound_domain = inbound_domain
        self._secret_key = secret_key
        self._survey_base_url = survey_base_url.rstrip("/")
        self._survey_valid_days = survey_valid_days
        self._caps = caps
        self._default_max_per_minute = default_max_per_minute
        self._imap_tls_context = imap_tls_context or ssl.create_default_context()
        self._sensor = sensor or OutboundMetrics()
        self._pool: AsyncConnectionPool | None = None

    def bind(self, pool: AsyncConnectionPool) -> None:
        """Give the stage the pool for its ledger transactions."""
        self._pool = pool

    def wants(self, record_name: str, record: dict[str, Any]) -> bool:
        """Tell the batch loop which records :meth:`apply` acts on: the rest skip the database."""
        if record_name == "ConversationEvent":
            return bool(record["type"] == "STATUS_CHANGED" and record["status"] == "resolved")
        return record_name == "OutboundRequest"

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name == "ConversationEvent":
            request = await _survey_request(conn, record)
            if request is None:
                return
            record = request
        elif record_name != "OutboundRequest":
            return
        assert self._pool is not None, "bind() the pool before applying requests"
        await self._handle(conn, record)

    async def _handle(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        context = await _load_context(conn, record)
        ledger = await self._open_ledger(record)
        if ledger["status"] in FINISHED_STATES:
            log.info("outbound: request %s: already %s, skipped", record["request_id"],
                     ledger["status"])
            await self._retry_pending_copy(conn, record, ledger)
            return

        if ledger["automatic"]:
            reason = await automatic_mail_suppression(
                conn, record, context, self._caps, [self._inbound_domain, self._message_id_domain])
            if reason:
                await self._finish_failed(record, "suppressed", None, reason)
                return

        try:
            route = await load_route(conn, record["inbox_id"], relay=self._relay,
                                     default_max_per_minute=self._default_max_per_minute)
            raw, recipients, subject = await self._build(record, context, route,
                                                         ledger["rfc_message_id"])
        except SmtpPermanentError as exc:
            await self._finish_failed(record, exc.error_class, exc.code, str(exc))
            return
        except ValueError as exc:
            await self._finish_failed(record, "invalid", None, f"mail cannot be built: {exc}")
            return
        await self._send(conn, record, context, route, ledger["rfc_message_id"], raw,
                         recipients, subject)

    async def _send(self, conn: AsyncConnection[Any], record: dict[str, Any],
                    context: dict[str, Any], route: Route, message_id: str, raw: bytes,
                    recipients: list[str], subject: str) -> None:
        waited = await wait_for_send_slot(conn, record["inbox_id"], route.max_sends_per_minute)
        self._sensor.on_rate_limited(waited)

        started = time.perf_counter()
        try:
            response = await self._delivery.send(route.server, raw,
                                                 sender=context["inbox"]["email"],
                                                 recipients=recipients)
        except SmtpPermanentError as exc:
            await self._finish_failed(record, exc.error_class, exc.code, str(exc))
            return
        self._sensor.on_sent(record["kind"], time.perf_counter() - started)

        await self._finish_sent(record, message_id, raw, recipients, subject, response,
                                copy_due=route.sent_copy is not None)
        if route.sent_copy is not None:
            await self._save_copy(record, route, raw, message_id)

    async def _open_ledger(self, record: dict[str, Any]) -> dict[str, Any]:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO send_ledger (request_id, inbox_id, conversation_id, kind, "
                "rfc_message_id, status, automatic) VALUES (%s, %s, %s, %s, %s, 'sending', %s) "
                "ON CONFLICT (request_id) DO NOTHING",
                (record["request_id"], record["inbox_id"], record["conversation_id"],
                 record["kind"], make_message_id(self._message_id_domain),
                 record["kind"] != "agent"))
            cursor = await conn.execute(
                "UPDATE send_ledger SET attempts = attempts + 1 WHERE request_id = %s "
                "RETURNING *", (record["request_id"],))
            ledger: dict[str, Any] | None = await cursor.fetchone()  # type: ignore[assignment]
        assert ledger is not None
        return ledger

    async def _build(self, record: dict[str, Any], context: dict[str, Any], route: Route,
                     message_id: str) -> tuple[bytes, list[str], str]:
        inbox, conversation, contact, thread = (context["inbox"], context["conversation"],
                                                context["contact"], context["thread"])
        survey_url = await self._prepare_survey(record, inbox) if record["kind"] == "csat" else ""
        text, html = _body(record, inbox, contact, survey_url=survey_url)
        html = frame_html(html, inbox_name=inbox["name"], avatar_url=inbox.get("avatar_url"),
                          help_center_url=inbox.get("help_center_url"), locale=inbox["locale"],
                          help_center_footer=record["kind"] == "agent")

        sender = Sender(
            inbox_name=inbox["name"], inbox_email=inbox["email"],
            business_name=inbox["business_name"] or inbox["name"],
            sender_name_style=inbox["sender_name_style"],
            agent_name=context["agent_name"], locale=inbox["locale"])
        fallback = "" if record["kind"] == "agent" else default_text(
            record["kind"], inbox["locale"]).subject_hint
        subject = reply_subject(conversation["subject"], fallback=fallback)
        recipients = [contact["email"].lower()]

        # Forwarded inboxes get replies back through our reply address; an
        # inbox with its own SMTP gets them in its mailbox, read by IMAP sync.
        reply_to = (f"reply+{conversation['reply_token']}@{self._inbound_domain}"
                    if route.forwarding else None)
        raw = build_mail(
            sender=sender, to=[(contact["name"], contact["email"])], subject=subject,
            text=text, html=html, message_id=message_id,
            in_reply_to=thread["in_reply_to"], references=thread["references"],
            reply_to=reply_to, automatic=record["kind"] != "agent",
            auto_submitted="auto-generated" if record["kind"] == "csat" else "auto-replied")
        return raw, recipients, subject

    async def _prepare_survey(self, record: dict[str, Any], inbox: dict[str, Any]) -> str:
        """Create the survey row (committed before sending) and return the survey link."""
        assert self._pool is not None
        token = survey_token(self._secret_key, record["conversation_id"])
        expires_at = datetime.now(timezone.utc) + timedelta(days=self._survey_valid_days)
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO csat_surveys (conversation_id, inbox_id, token_sha256, locale, "
                "expires_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (conversation_id) DO NOTHING",
                (record["conversation_id"], record["inbox_id"],
                 hashlib.sha256(token.encode()).hexdigest(), inbox["locale"], expires_at))
            if cursor.rowcount == 1:
                await outbox.add(conn, topics.CONVERSATION_EVENTS, record["inbox_id"],
                                 "ConversationEvent", conversation_event(
                                     "CSAT_REQUESTED", fact="csat-requested",
                                     inbox_id=record["inbox_id"],
                                     conversation_id=record["conversation_id"],
                                     request_id=record["request_id"]))
        return f"{self._survey_base_url}/csat/{token}"

    async def _finish_sent(self, record: dict[str, Any], message_id: str, raw: bytes,
                           recipients: list[str], subject: str, response: str, *,
                           copy_due: bool) -> None:
        """Record the accepted mail: raw bytes, ledger row, rate count and ``mail.sent`` at once."""
        assert self._pool is not None
        sha256 = hashlib.sha256(raw).hexdigest()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                "ON CONFLICT (sha256) DO NOTHING", (sha256, len(raw), raw))
            await count_send(conn, record["inbox_id"])
            await conn.execute(
                "UPDATE send_ledger SET status = 'sent', smtp_response = %s, finished_at = now(), "
                "recipients = %s, raw_sha256 = %s, sent_copy = %s WHERE request_id = %s",
                (response, recipients, sha256, "pending" if copy_due else None,
                 record["request_id"]))
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

    async def _finish_failed(self, record: dict[str, Any], error_class: str, code: int | None,
                             detail: str) -> None:
        """Record a permanent failure or a suppression, with ``mail.failed``."""
        assert self._pool is not None
        status = "suppressed" if error_class == "suppressed" else "failed"
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE send_ledger SET status = %s, smtp_response = %s, error_class = %s, "
                "smtp_code = %s, finished_at = now() WHERE request_id = %s",
                (status, detail, error_class, code, record["request_id"]))
            await outbox.add(conn, topics.MAIL_FAILED, record["inbox_id"], "MailFailed", {
                "event_id": ids.derive_id("mail-failed", record["request_id"]),
                "occurred_at": datetime.now(timezone.utc),
                "inbox_id": record["inbox_id"],
                "conversation_id": record["conversation_id"],
                "request_id": record["request_id"],
                "kind": record["kind"],
                "error_class": error_class,
                "smtp_code": code,
                "detail": detail,
            })
        self._sensor.on_failed(record["kind"], error_class)
        if status == "suppressed":
            log.info("outbound: inbox %s request %s: %s suppressed: %s", record["inbox_id"],
                     record["request_id"], record["kind"], detail)
        else:
            log.error("outbound: inbox %s request %s: %s failed for good, %s: %s",
                      record["inbox_id"], record["request_id"], record["kind"], error_class,
                      detail)

    async def _save_copy(self, record: dict[str, Any], route: Route, raw: bytes,
                         message_id: str) -> None:
        assert self._pool is not None and route.sent_copy is not None
        try:
            folder = await asyncio.to_thread(
                save_sent_copy, route.sent_copy, raw, message_id,
                sent_at=datetime.now(timezone.utc), ssl_context=self._imap_tls_context)
        except SentCopyError as exc:
            # The customer has the mail; only the mailbox's own record is missing.
            log.warning("outbound: inbox %s Message-ID %s: Sent copy failed: %s",
                        record["inbox_id"], message_id, exc)
            await self._mark_copy(record["request_id"], "failed", str(exc))
            self._sensor.on_sent_copy("failed")
            return
        await self._mark_copy(record["request_id"], "saved", None)
        self._sensor.on_sent_copy("saved")
        log.info("outbound: inbox %s Message-ID %s: copy saved in %r", record["inbox_id"],
                 message_id, folder)

    async def _retry_pending_copy(self, conn: AsyncConnection[Any], record: dict[str, Any],
                                  ledger: dict[str, Any]) -> None:
        """Save the Sent copy of a sent mail whose save a crash interrupted."""
        if ledger["status"] != "sent" or ledger["sent_copy"] != "pending":
            return
        cursor = await conn.execute("SELECT content FROM raw_mails WHERE sha256 = %s",
                                    (ledger["raw_sha256"],))
        row = await cursor.fetchone()
        try:
            route = await load_route(conn, record["inbox_id"], relay=self._relay,
                                     default_max_per_minute=self._default_max_per_minute)
        except SmtpPermanentError:
            route = None
        if row is None or route is None or route.sent_copy is None:
            return
        await self._save_copy(record, route, bytes(row["content"]), ledger["rfc_message_id"])

    async def _mark_copy(self, request_id: str, state: str, error: str | None) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("UPDATE send_ledger SET sent_copy = %s, sent_copy_error = %s "
                               "WHERE request_id = %s", (state, error, request_id))


def _body(record: dict[str, Any], inbox: dict[str, Any], contact: dict[str, Any], *,
          survey_url: str = "") -> tuple[str, str]:
    """Return the text and the HTML fragment of the mail."""
    if record["kind"] == "agent":
        text = record["text"] or ""
        return text, record["html"] or custom_text(text).html

    values = {"customer_name": contact["name"] or contact["email"], "inbox_name": inbox["name"],
              "help_center_url": inbox.get("help_center_url") or "", "survey_url": survey_url}
    if record["kind"] == "out_of_hours":
        # The assign service requests the note moments after the mail arrived.
        values["next_opening"] = business_hours.describe_next_opening(
            inbox, record["occurred_at"], inbox["locale"])
    custom = inbox.get(CUSTOM_TEXT_COLUMNS[record["kind"]])
    template = custom_text(custom) if custom else default_text(record["kind"], inbox["locale"])
    rendered = render_auto_text(template, **values)
    return rendered.text, rendered.html


async def _survey_request(conn: AsyncConnection[Any],
                          event: dict[str, Any]) -> dict[str, Any] | None:
    """Return the survey request a conversation event implies, or None."""
    if event["type"] != "STATUS_CHANGED" or event["status"] != "resolved":
        return None
    # A new consumer group reads the topic from its start; old resolutions
    # must not send surveys months late.
    age = datetime.now(timezone.utc) - event["occurred_at"]
    if age > SURVEY_MAX_EVENT_AGE:
        log.info("outbound: inbox %s conversation %s: resolved %s ago, too long for a survey",
                 event["inbox_id"], event["conversation_id"], age)
        return None
    cursor = await conn.execute("SELECT csat_enabled FROM inboxes WHERE id = %s",
                                (event["inbox_id"],))
    inbox = await cursor.fetchone()
    if inbox is None or not inbox["csat_enabled"]:
        return None

    request_id = survey_request_id(event["conversation_id"])
    return {"event_id": request_id, "occurred_at": event["occurred_at"],
            "inbox_id": event["inbox_id"], "conversation_id": event["conversation_id"],
            "request_id": request_id, "kind": "csat", "agent_id": None, "text": None,
            "html": None}


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
