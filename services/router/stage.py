"""The router stage: a stored mail becomes a message in a conversation.

:class:`RouterStage` is applied by the shared batch loop to each record of
``mail.received`` and ``mail.sent``, inside the batch's transaction. For an
incoming mail it reads the raw bytes from the store, parses them, drops a
duplicate (same inbox and Message-ID, or same raw digest when the id is
missing), threads the mail, writes contact, conversation and message rows,
and queues the conversation events in the outbox. For a sent mail it records
the outgoing message, so that replies to it thread.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from psycopg import AsyncConnection

from messagehub import ids, outbox, topics
from messagehub.events import conversation_event
from messagehub.worker import StageError
from services.router import threader
from services.router.mime import ParsedMail, parse_mail

log = logging.getLogger(__name__)


class RawMailMissing(StageError):
    """The raw mail store has no bytes for the digest an event names."""


class UnknownInbox(StageError):
    """An event names an inbox that does not exist (deleted, or a bad producer)."""


class RouterStage:
    name = "router"

    def __init__(self, *, secret_key: str, inbound_domain: str) -> None:
        self._secret_key = secret_key
        self._inbound_domain = inbound_domain

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name == "MailReceived":
            await self._route_incoming(conn, record)
        elif record_name == "MailSent":
            await self._record_outgoing(conn, record)
        else:
            log.warning("router: event %s: ignoring record %s", record["event_id"], record_name)

    # --- incoming mail -------------------------------------------------

    async def _route_incoming(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        inbox_id = record["inbox_id"]
        raw = await _load_raw(conn, record["raw_sha256"])
        await _require_inbox(conn, inbox_id)
        mail = parse_mail(raw)

        dedup_key = mail.message_id or f"sha256:{record['raw_sha256']}"
        if await _message_exists(conn, inbox_id, dedup_key):
            log.info("router: inbox %s Message-ID %s: duplicate, skipped", inbox_id, dedup_key)
            return

        if mail.kind == "forwarding_confirmation":
            await self._store_notice(conn, inbox_id, mail, record)
            return

        conversation = await self._find_conversation(conn, inbox_id, mail, record)
        if conversation is None and mail.kind == "bounce":
            await self._store_notice(conn, inbox_id, mail, record)
            return

        contact = await _upsert_contact(conn, inbox_id, mail) if mail.kind != "bounce" else None
        created = conversation is None
        if conversation is None:
            conversation = await self._create_conversation(conn, inbox_id, dedup_key, mail,
                                                           contact, record)

        message_id = await _insert_incoming_message(conn, inbox_id, conversation["id"], dedup_key,
                                                    mail, record)
        await _add_thread_keys(conn, inbox_id, conversation["id"],
                               threader.thread_keys_of(mail.message_id, mail.in_reply_to,
                                                       _thread_references(mail)))

        await self._emit_incoming(conn, record, mail, conversation, contact, message_id, created)

    async def _find_conversation(self, conn: AsyncConnection[Any], inbox_id: str,
                                 mail: ParsedMail, record: dict[str, Any]) -> dict[str, Any] | None:
        addresses = [a.email for a in (*mail.to, *mail.cc)] + list(mail.delivered_to)
        addresses += record["envelope_recipients"]
        for token in threader.reply_tokens(addresses, self._inbound_domain):
            conversation = await _fetch_one(
                conn, "SELECT * FROM conversations WHERE reply_token = %s AND inbox_id = %s",
                (token, inbox_id))
            if conversation is not None:
                return conversation

        in_reply_to, references = mail.in_reply_to, _thread_references(mail)
        candidates = threader.lookup_ids(in_reply_to, references)
        # A reply that arrived before this mail already named it as a thread key.
        if mail.message_id and mail.message_id not in candidates:
            candidates.append(mail.message_id)
        for message_id in candidates:
            conversation = await _fetch_one(
                conn, "SELECT c.* FROM thread_keys k JOIN conversations c "
                      "ON c.id = k.conversation_id WHERE k.inbox_id = %s AND k.message_id = %s",
                (inbox_id, message_id))
            if conversation is not None:
                return conversation
        return None

    async def _create_conversation(self, conn: AsyncConnection[Any], inbox_id: str, dedup_key: str,
                                   mail: ParsedMail, contact: dict[str, Any] | None,
                                   record: dict[str, Any]) -> dict[str, Any]:
        conversation_id = ids.derive_id("conversation", inbox_id, dedup_key)
        arrived = record["occurred_at"]
        cursor = await conn.execute(
            "INSERT INTO conversations (id, inbox_id, contact_id, subject, status, reply_token, "
            "created_at, last_message_at) VALUES (%s, %s, %s, %s, 'open', %s, %s, %s) "
            "RETURNING *",
            (conversation_id, inbox_id, contact["id"] if contact else None, mail.subject,
             ids.reply_token(self._secret_key, conversation_id), arrived, arrived))
        conversation = await cursor.fetchone()
        assert conversation is not None
        log.info("router: inbox %s Message-ID %s: new conversation %s",
                 inbox_id, mail.message_id, conversation_id)
        return conversation

    async def _emit_incoming(self, conn: AsyncConnection[Any], record: dict[str, Any],
                             mail: ParsedMail, conversation: dict[str, Any],
                             contact: dict[str, Any] | None, message_id: str,
                             created: bool) -> None:
        inbox_id, conversation_id = record["inbox_id"], str(conversation["id"])
        common = {
            "contact_id": str(contact["id"]) if contact else None,
            "contact_email": contact["email"] if contact else None,
            "message_id": message_id,
            "rfc_message_id": mail.message_id,
            "direction": "incoming",
            "message_kind": mail.kind,
            "mail_received_at": record["occurred_at"],
        }

        if created:
            await _emit(conn, conversation_event(
                "CONVERSATION_CREATED", fact="created", inbox_id=inbox_id,
                conversation_id=conversation_id, status="open", subject=conversation["subject"],
                **common))
        await _emit(conn, conversation_event(
            "MESSAGE_ADDED", fact=message_id, inbox_id=inbox_id, conversation_id=conversation_id,
            subject=mail.subject, **common))

        if not created and conversation["status"] == "resolved" and mail.kind == "customer":
            await conn.execute("UPDATE conversations SET status = 'open' WHERE id = %s",
                               (conversation_id,))
            await _emit(conn, conversation_event(
                "STATUS_CHANGED", fact=f"reopened-by/{message_id}", inbox_id=inbox_id,
                conversation_id=conversation_id, status="open", previous_status="resolved",
                reason="customer_reply", contact_id=common["contact_id"],
                contact_email=common["contact_email"]))
        log.info("router: inbox %s Message-ID %s: %s message %s in conversation %s",
                 inbox_id, mail.message_id, mail.kind, message_id, conversation_id)

    async def _store_notice(self, conn: AsyncConnection[Any], inbox_id: str, mail: ParsedMail,
                            record: dict[str, Any]) -> None:
        detail: dict[str, Any] = {"from": mail.from_.email if mail.from_ else None}
        if mail.forwarding_confirmation is not None:
            detail["forwarding_confirmation"] = asdict(mail.forwarding_confirmation)
        if mail.bounce is not None:
            detail["bounce"] = asdict(mail.bounce)

        await conn.execute(
            "INSERT INTO notices (id, inbox_id, kind, subject, detail, raw_sha256) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (ids.derive_id("notice", inbox_id, record["raw_sha256"]), inbox_id, mail.kind,
             mail.subject, json.dumps(detail), record["raw_sha256"]))
        log.info("router: inbox %s Message-ID %s: stored as a %s notice, no conversation",
                 inbox_id, mail.message_id, mail.kind)

    # --- outgoing mail -------------------------------------------------

    async def _record_outgoing(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        inbox_id, conversation_id = record["inbox_id"], record["conversation_id"]
        dedup_key = record["rfc_message_id"]
        if await _message_exists(conn, inbox_id, dedup_key):
            return

        raw = await _load_raw(conn, record["raw_sha256"])
        mail = parse_mail(raw)
        message_id = ids.derive_id("message", inbox_id, dedup_key)
        await conn.execute(
            "INSERT INTO messages (id, inbox_id, conversation_id, dedup_key, direction, kind, "
            "rfc_message_id, in_reply_to, \"references\", from_name, from_email, to_addresses, "
            "subject, text_body, html_body, raw_sha256, sent_at, received_at) "
            "VALUES (%s, %s, %s, %s, 'outgoing', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s)",
            (message_id, inbox_id, conversation_id, dedup_key, record["kind"],
             record["rfc_message_id"], mail.in_reply_to, mail.references,
             mail.from_.name if mail.from_ else "", mail.from_.email if mail.from_ else "",
             json.dumps([asdict(a) for a in mail.to]), record["subject"], mail.text, mail.html,
             record["raw_sha256"], record["occurred_at"], record["occurred_at"]))
        await _add_thread_keys(conn, inbox_id, conversation_id, [record["rfc_message_id"]])

        await _emit(conn, conversation_event(
            "MESSAGE_ADDED", fact=message_id, inbox_id=inbox_id, conversation_id=conversation_id,
            message_id=message_id, rfc_message_id=record["rfc_message_id"],
            direction="outgoing", message_kind=record["kind"], subject=record["subject"]))
        log.info("router: inbox %s Message-ID %s: outgoing %s recorded in conversation %s",
                 inbox_id, dedup_key, record["kind"], conversation_id)


def _thread_references(mail: ParsedMail) -> list[str]:
    # A bounce threads through the headers of the mail that bounced.
    if mail.bounce is not None:
        bounced = mail.bounce
        ids_ = [*bounced.original_references]
        if bounced.original_in_reply_to:
            ids_.append(bounced.original_in_reply_to)
        if bounced.original_message_id:
            ids_.append(bounced.original_message_id)
        return ids_
    return list(mail.references)


async def _emit(conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
    await outbox.add(conn, topics.CONVERSATION_EVENTS, event["inbox_id"], "ConversationEvent",
                     event)


async def _fetch_one(conn: AsyncConnection[Any], query: str,
                     params: tuple[Any, ...]) -> dict[str, Any] | None:
    cursor = await conn.execute(query, params)
    return await cursor.fetchone()


async def _load_raw(conn: AsyncConnection[Any], sha256: str) -> bytes:
    row = await _fetch_one(conn, "SELECT content FROM raw_mails WHERE sha256 = %s", (sha256,))
    if row is None:
        raise RawMailMissing(f"raw mail {sha256} is not in the store")
    return bytes(row["content"])


async def _require_inbox(conn: AsyncConnection[Any], inbox_id: str) -> None:
    if await _fetch_one(conn, "SELECT 1 AS found FROM inboxes WHERE id = %s", (inbox_id,)) is None:
        raise UnknownInbox(f"inbox {inbox_id} does not exist")


async def _message_exists(conn: AsyncConnection[Any], inbox_id: str, dedup_key: str) -> bool:
    row = await _fetch_one(conn, "SELECT 1 AS found FROM messages WHERE inbox_id = %s "
                                 "AND dedup_key = %s", (inbox_id, dedup_key))
    return row is not None


async def _upsert_contact(conn: AsyncConnection[Any], inbox_id: str,
                          mail: ParsedMail) -> dict[str, Any] | None:
    if mail.from_ is None or not mail.from_.email:
        return None
    email = mail.from_.email.lower()
    cursor = await conn.execute(
        "INSERT INTO contacts (id, inbox_id, email, name) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (inbox_id, email) DO UPDATE SET name = CASE WHEN contacts.name = '' "
        "THEN EXCLUDED.name ELSE contacts.name END RETURNING *",
        (ids.derive_id("contact", inbox_id, email), inbox_id, email, mail.from_.name))
    return await cursor.fetchone()


async def _insert_incoming_message(conn: AsyncConnection[Any], inbox_id: str,
                                   conversation_id: str, dedup_key: str, mail: ParsedMail,
                                   record: dict[str, Any]) -> str:
    message_id = ids.derive_id("message", inbox_id, dedup_key)
    attachments = [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                    "sha256": a.sha256, "inline": a.inline, "content_id": a.content_id}
                   for a in mail.attachments]
    await conn.execute(
        "INSERT INTO messages (id, inbox_id, conversation_id, dedup_key, direction, kind, "
        "rfc_message_id, in_reply_to, \"references\", from_name, from_email, to_addresses, "
        "cc_addresses, subject, text_body, html_body, attachments, raw_sha256, sent_at, "
        "received_at) VALUES (%s, %s, %s, %s, 'incoming', %s, %s, %s, %s, %s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s)",
        (message_id, inbox_id, conversation_id, dedup_key, mail.kind, mail.message_id,
         mail.in_reply_to, mail.references, mail.from_.name if mail.from_ else "",
         mail.from_.email if mail.from_ else "", json.dumps([asdict(a) for a in mail.to]),
         json.dumps([asdict(a) for a in mail.cc]), mail.subject, mail.text, mail.html,
         json.dumps(attachments), record["raw_sha256"], mail.date, record["occurred_at"]))
    await conn.execute("UPDATE conversations SET last_message_at = GREATEST(last_message_at, %s) "
                       "WHERE id = %s", (record["occurred_at"], conversation_id))
    return message_id


async def _add_thread_keys(conn: AsyncConnection[Any], inbox_id: str, conversation_id: str,
                           keys: list[str]) -> None:
    if not keys:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO thread_keys (inbox_id, message_id, conversation_id) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING", [(inbox_id, key, conversation_id) for key in keys])
