"""The router stage: a stored mail becomes a message in the right conversation.

The shared batch loop (``messagehub.worker``) applies :class:`RouterStage`
to each record of ``mail.received`` and ``mail.sent``, all records of one
poll in one transaction, so the rows written here and the events queued in
the outbox commit together or not at all.

For an incoming mail the stage reads the raw bytes from the store, parses
them, and skips a mail the inbox already contains (same Message-ID, or the
same raw digest when the id is missing or unusable). Provider forwarding
confirmations become notices for admins. Otherwise the mail is threaded by
the rules of ``threader``: reply token, In-Reply-To, References newest
first, own Message-ID and subject fallback, each checked for trust. A
bounce or an automatic reply that no conversation takes becomes a notice,
because it contains no request. The stage then writes the contact, the conversation
(new, reopened, or a successor of one resolved longer ago than the inbox
allows), the message with its attachments, the thread keys and the
participants, and queues the conversation events.

For a sent mail it records the outgoing message, so that replies to it
thread.

Inline images are served by the API under :func:`messagehub.ids.attachment_path`; their
``cid:`` references in the stored HTML are rewritten to that URL, and the
decoded bytes of every attachment are kept in the raw store under their
SHA-256.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from messagehub import ids, outbox, topics
from messagehub.events import conversation_event
from messagehub.worker import StageError
from services.router import rows, threader
from services.router.bodies import sanitize_html
from services.router.mime import Attachment, ParsedMail, parse_mail
from services.router.threader import Candidate, Parties

log = logging.getLogger(__name__)

# Kinds written by a person: they reopen a resolved conversation.
REOPENING_KINDS = frozenset({"customer", "list"})
# Kinds that respond to earlier mail. When no conversation takes one, it
# contains no request, so it is stored as a notice and not queued for agents.
NOTICE_WHEN_UNMATCHED = frozenset({"bounce", "auto_reply"})


class RawMailMissing(StageError):
    """The raw mail store has no bytes for the digest an event names."""


class UnknownInbox(StageError):
    """An event names an inbox that does not exist (deleted, or a bad producer)."""


class UnknownConversation(StageError):
    """A sent-mail event names a conversation that does not exist."""


def dedup_key_of(mail: ParsedMail, raw_sha256: str) -> str:
    """Return the per-inbox deduplication key: the Message-ID, else the raw digest."""
    return mail.message_id or f"sha256:{raw_sha256}"


@dataclass
class Placement:
    """The conversation an incoming mail goes to, as threading decided."""

    conversation: rows.Row | None  # threading state of the conversation; None: a new one
    rule: str  # a threader.RULE_* name
    supersedes: rows.Row | None = None  # the resolved conversation a successor replaces


# A mail this large is parsed on a worker thread: a 50 MB mail takes seconds,
# and the event loop must keep sending the broker's heartbeats meanwhile.
# The thread still holds the GIL most of the time, so it is no faster.
PARSE_ON_THREAD_BYTES = 1024 * 1024


async def _parse(raw: bytes) -> ParsedMail:
    if len(raw) >= PARSE_ON_THREAD_BYTES:
        return await asyncio.to_thread(parse_mail, raw)
    return parse_mail(raw)


class RouterStage:
    name = "router"
    # apply() writes only through the connection it is given (worker.py).
    all_or_nothing = True

    def __init__(self, *, secret_key: str, inbound_domain: str, message_id_domain: str) -> None:
        self._secret_key = secret_key
        self._inbound_domain = inbound_domain.lower()
        self._message_id_domain = message_id_domain.lower()

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        if record_name == "MailReceived":
            await self._route_incoming(conn, record)
        elif record_name == "MailSent":
            await self._record_outgoing(conn, record)
        elif record_name == "MailFailed":
            await self._record_delivery_failure(conn, record)
        else:
            log.warning("router: event %s: ignoring record %s", record["event_id"], record_name)

    # --- incoming mail -------------------------------------------------

    async def _route_incoming(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        inbox, raw = await rows.load_inbox_and_raw(conn, record["inbox_id"], record["raw_sha256"])
        if inbox is None:
            raise UnknownInbox(f"inbox {record['inbox_id']} does not exist")
        if raw is None:
            raise _raw_mail_missing(record["raw_sha256"])
        mail = await _parse(raw)
        dedup_key = dedup_key_of(mail, record["raw_sha256"])

        parties = self._parties(inbox, mail)
        keyed = self._thread_keys_to_look_up(mail, record)
        lookup = await self._look_up(conn, inbox, mail, record, dedup_key, parties, keyed)
        if lookup.known:
            log.info("router: inbox %s Message-ID %s: duplicate, skipped",
                     record["inbox_id"], dedup_key)
            return

        if mail.kind == "forwarding_confirmation":
            await _store_notice(conn, record, mail, dedup_key)
            return

        placement = await self._place(conn, inbox, mail, record, parties, keyed, lookup)
        if placement.conversation is None and mail.kind in NOTICE_WHEN_UNMATCHED:
            await _store_notice(conn, record, mail, dedup_key)
            return

        # None of the writes returns anything the next one needs, so they go
        # to the server in one pipeline instead of one round trip each.
        async with conn.pipeline():
            await self._add_incoming(conn, inbox, mail, record, dedup_key, placement)

    def _thread_keys_to_look_up(self, mail: ParsedMail,
                                record: dict[str, Any]) -> list[tuple[str, str, bool]]:
        """Return (token or Message-ID, rule, ours) for every key that may name a conversation, in rule order."""
        addresses = [a.email for a in (*mail.to, *mail.cc)] + list(mail.delivered_to)
        addresses += list(mail.x_original_to) + list(record["envelope_recipients"])
        keyed = [(token, threader.RULE_REPLY_TOKEN, True)
                 for token in threader.reply_tokens(addresses, self._inbound_domain)]

        in_reply_to, references = _thread_ids(mail)
        for key in threader.lookup_ids(in_reply_to, references):
            rule = threader.RULE_IN_REPLY_TO if key in in_reply_to else threader.RULE_REFERENCES
            keyed.append((key, rule, threader.is_our_id(key, self._message_id_domain)))

        # A reply that arrived before this mail already named it as a thread key.
        if mail.message_id and mail.kind != "bounce" and all(k != mail.message_id for k, _, _ in keyed):
            keyed.append((mail.message_id, threader.RULE_OWN_MESSAGE_ID, False))
        return keyed

    async def _look_up(self, conn: AsyncConnection[Any], inbox: rows.Row, mail: ParsedMail,
                       record: dict[str, Any], dedup_key: str, parties: Parties,
                       keyed: list[tuple[str, str, bool]]) -> rows.Lookup:
        subject_key = _subject_key(mail) if mail.kind != "bounce" else None
        return await rows.look_up(
            conn, inbox_id=record["inbox_id"], dedup_key=dedup_key,
            tokens=[key for key, rule, _ in keyed if rule == threader.RULE_REPLY_TOKEN],
            keys=[key for key, rule, _ in keyed if rule != threader.RULE_REPLY_TOKEN],
            addresses=_lookup_addresses(parties), subject_key=subject_key,
            since=threader.subject_window_start(record["occurred_at"],
                                                inbox["subject_threading_days"]),
            mail_is_reply=_is_reply(mail))

    async def _place(self, conn: AsyncConnection[Any], inbox: rows.Row, mail: ParsedMail,
                     record: dict[str, Any], parties: Parties,
                     keyed: list[tuple[str, str, bool]], lookup: rows.Lookup) -> Placement:
        """Find the conversation for the mail, or decide that it starts one."""
        by_token = {row["key"]: row for row in lookup.candidates if row["source"] == "token"}
        by_key = {row["key"]: row for row in lookup.candidates if row["source"] == "key"}
        states = {str(row["conversation_id"]): row for row in lookup.candidates}

        candidates = []
        for key, rule, ours in keyed:
            row = (by_token if rule == threader.RULE_REPLY_TOKEN else by_key).get(key)
            if row is not None:
                candidates.append(Candidate(str(row["conversation_id"]), key, rule, ours))
        participants = {conversation_id: frozenset(row["known"])
                        for conversation_id, row in states.items()}

        chosen, rejected = threader.choose(candidates, parties, participants)
        for candidate in rejected:
            log.warning("router: inbox %s Message-ID %s: %s %s of conversation %s not trusted: "
                        "the sender takes no part in it", record["inbox_id"], mail.message_id,
                        candidate.rule, candidate.key, candidate.conversation_id)

        if chosen is not None:
            state = await rows.current_conversation(conn, states[chosen.conversation_id])
            return _resolve_reopening(inbox, mail, record, state, chosen.rule)
        if lookup.subject_match is not None:
            state = await rows.current_conversation(conn, lookup.subject_match)
            return _resolve_reopening(inbox, mail, record, state, threader.RULE_SUBJECT)
        return Placement(conversation=None, rule=threader.RULE_NEW)

    def _parties(self, inbox: rows.Row, mail: ParsedMail) -> Parties:
        own = self._is_inbox_address(inbox)
        senders = {a.email.lower() for a in (mail.from_, mail.sender) if a and a.email}
        recipients = {a.email.lower() for a in (*mail.to, *mail.cc) if a.email}
        failed = None
        if mail.kind == "bounce" and mail.bounce is not None:
            failed = frozenset(r.lower() for r in mail.bounce.failed_recipients)
        return Parties(
            senders=frozenset(a for a in senders if not own(a)),
            recipients=frozenset(a for a in recipients if not own(a)),
            list_key=threader.list_participant(mail.list_id) if mail.list_id else None,
            failed_recipients=failed,
        )

    def _is_inbox_address(self, inbox: rows.Row) -> Callable[[str], bool]:
        addresses = {inbox["email"].lower(), inbox["forwarding_address"].lower()}

        def own(address: str) -> bool:
            return address in addresses or address.rpartition("@")[2] == self._inbound_domain
        return own

    async def _add_incoming(self, conn: AsyncConnection[Any], inbox: rows.Row, mail: ParsedMail,
                            record: dict[str, Any], dedup_key: str, placement: Placement) -> None:
        inbox_id, arrived_at = record["inbox_id"], record["occurred_at"]
        contact = await _upsert_contact(conn, inbox_id, mail, arrived_at)

        created = placement.conversation is None
        if placement.conversation is None:
            conversation_id = await self._create_conversation(conn, inbox_id, dedup_key, mail,
                                                              contact, arrived_at)
            reopened = False
            if placement.supersedes is not None:
                await rows.supersede(conn, str(placement.supersedes["conversation_id"]),
                                     conversation_id)
        else:
            conversation_id = str(placement.conversation["conversation_id"])
            reopened = (placement.conversation["status"] == "resolved"
                        and mail.kind in REOPENING_KINDS)
            await rows.touch_conversation(conn, conversation_id, arrived_at, reopened)

        message_id = ids.derive_id("message", inbox_id, dedup_key)
        await self._insert_incoming_message(conn, inbox_id, conversation_id, message_id, dedup_key,
                                            mail, record, placement.rule)
        await rows.add_thread_keys(conn, inbox_id, conversation_id, threader.thread_keys_of(
            mail.message_id, *_thread_ids(mail)))
        await rows.add_participants(conn, conversation_id,
                                    self._participants_of(inbox, mail, created))

        await self._emit_incoming(conn, record, mail, conversation_id, contact, message_id,
                                  created, reopened)

    async def _create_conversation(self, conn: AsyncConnection[Any], inbox_id: str,
                                   dedup_key: str, mail: ParsedMail, contact: rows.Row | None,
                                   arrived_at: datetime) -> str:
        conversation_id = ids.derive_id("conversation", inbox_id, dedup_key)
        await rows.insert_conversation(conn, {
            "id": conversation_id,
            "inbox_id": inbox_id,
            "contact_id": contact["id"] if contact else None,
            "subject": mail.subject,
            "reply_token": ids.reply_token(self._secret_key, conversation_id),
            "arrived_at": arrived_at,
            "subject_key": _subject_key(mail),
            "started_by_reply": _is_reply(mail),
        })
        log.info("router: inbox %s Message-ID %s: new conversation %s",
                 inbox_id, mail.message_id, conversation_id)
        return conversation_id

    async def _insert_incoming_message(self, conn: AsyncConnection[Any], inbox_id: str,
                                       conversation_id: str, message_id: str, dedup_key: str,
                                       mail: ParsedMail, record: dict[str, Any],
                                       rule: str) -> None:
        await rows.store_attachment_bytes(conn, mail.attachments)
        await rows.insert_message(conn, {
            **rows.message_values(mail),
            "id": message_id,
            "inbox_id": inbox_id,
            "conversation_id": conversation_id,
            "dedup_key": dedup_key,
            "direction": "incoming",
            "kind": mail.kind,
            "html_body": _html_with_attachment_urls(mail, message_id),
            "attachments": rows.to_json([_attachment_json(a) for a in mail.attachments]),
            "raw_sha256": record["raw_sha256"],
            "sent_at": mail.date,
            "received_at": record["occurred_at"],
            "threaded_by": rule,
        })

    def _participants_of(self, inbox: rows.Row, mail: ParsedMail,
                         created: bool) -> list[tuple[str, str]]:
        """Return the (address, role) pairs this mail adds to its conversation."""
        if mail.kind == "bounce":
            # The mail system that reports a failure takes no part in the conversation.
            return []
        own = self._is_inbox_address(inbox)
        pairs: list[tuple[str, str]] = []
        if created and mail.from_ and mail.from_.email:
            pairs.append((mail.from_.email.lower(), "contact"))
        for role, addresses in (("from", [mail.from_]), ("sender", [mail.sender]),
                                ("reply_to", mail.reply_to), ("to", mail.to), ("cc", mail.cc)):
            pairs += [(a.email.lower(), role) for a in addresses if a and a.email]
        if mail.list_id:
            pairs.append((threader.list_participant(mail.list_id), "list"))
        return [(address, role) for address, role in pairs if not own(address)]

    async def _emit_incoming(self, conn: AsyncConnection[Any], record: dict[str, Any],
                             mail: ParsedMail, conversation_id: str,
                             contact: rows.Row | None, message_id: str, created: bool,
                             reopened: bool) -> None:
        inbox_id = record["inbox_id"]
        common = {
            "contact_id": contact["id"] if contact else None,
            "contact_email": contact["email"] if contact else None,
            "message_id": message_id,
            "rfc_message_id": mail.message_id,
            "direction": "incoming",
            "message_kind": mail.kind,
            # Mail synced over IMAP arrived at its INTERNALDATE, which
            # business hours are judged by; other mail when ingest took it.
            "mail_received_at": record.get("imap_internal_date") or record["occurred_at"],
        }

        if created:
            await _emit(conn, conversation_event(
                "CONVERSATION_CREATED", fact="created", inbox_id=inbox_id,
                conversation_id=conversation_id, status="open", subject=mail.subject,
                **common))
        await _emit(conn, conversation_event(
            "MESSAGE_ADDED", fact=message_id, inbox_id=inbox_id, conversation_id=conversation_id,
            subject=mail.subject, **common))

        if reopened:
            await _emit(conn, conversation_event(
                "STATUS_CHANGED", fact=f"reopened-by/{message_id}", inbox_id=inbox_id,
                conversation_id=conversation_id, status="open", previous_status="resolved",
                reason="customer_reply", contact_id=common["contact_id"],
                contact_email=common["contact_email"]))
        log.info("router: inbox %s Message-ID %s: %s message %s in conversation %s%s",
                 inbox_id, mail.message_id, mail.kind, message_id, conversation_id,
                 ", reopened" if reopened else "")

    # --- outgoing mail -------------------------------------------------

    async def _record_outgoing(self, conn: AsyncConnection[Any], record: dict[str, Any]) -> None:
        inbox_id, conversation_id = record["inbox_id"], record["conversation_id"]
        dedup_key = record["rfc_message_id"]
        if await rows.is_known(conn, inbox_id, dedup_key):
            return
        if await rows.fetch_one(conn, "SELECT 1 AS found FROM conversations WHERE id = %s "
                                      "AND inbox_id = %s", (conversation_id, inbox_id)) is None:
            raise UnknownConversation(
                f"conversation {conversation_id} of inbox {inbox_id} does not exist")

        raw = await rows.load_raw(conn, record["raw_sha256"])
        if raw is None:
            raise _raw_mail_missing(record["raw_sha256"])
        mail = parse_mail(raw)
        async with conn.pipeline():
            await self._add_outgoing(conn, record, mail)

    async def _add_outgoing(self, conn: AsyncConnection[Any], record: dict[str, Any],
                            mail: ParsedMail) -> None:
        inbox_id, conversation_id = record["inbox_id"], record["conversation_id"]
        dedup_key = record["rfc_message_id"]
        message_id = ids.derive_id("message", inbox_id, dedup_key)
        await rows.insert_message(conn, {
            **rows.message_values(mail),
            "id": message_id,
            "inbox_id": inbox_id,
            "conversation_id": conversation_id,
            "dedup_key": dedup_key,
            "direction": "outgoing",
            "kind": record["kind"],
            "rfc_message_id": dedup_key,
            "subject": record["subject"],
            "html_body": mail.html,
            "attachments": rows.to_json([_attachment_json(a) for a in mail.attachments]),
            "raw_sha256": record["raw_sha256"],
            "sent_at": record["occurred_at"],
            "received_at": record["occurred_at"],
            "threaded_by": "outgoing",
        })
        await rows.touch_conversation(conn, conversation_id, record["occurred_at"], reopen=False)
        await rows.add_thread_keys(conn, inbox_id, conversation_id, [dedup_key])
        await rows.add_participants(conn, conversation_id,
                                    [(r.lower(), "recipient") for r in record["recipients"]])

        await _emit(conn, conversation_event(
            "MESSAGE_ADDED", fact=message_id, inbox_id=inbox_id, conversation_id=conversation_id,
            message_id=message_id, rfc_message_id=dedup_key,
            direction="outgoing", message_kind=record["kind"], subject=record["subject"],
            request_id=record["request_id"], agent_id=record.get("agent_id")))
        log.info("router: inbox %s Message-ID %s: outgoing %s recorded in conversation %s",
                 inbox_id, dedup_key, record["kind"], conversation_id)

    async def _record_delivery_failure(self, conn: AsyncConnection[Any],
                                       record: dict[str, Any]) -> None:
        """Tell subscribers that a mail of the conversation could not be delivered."""
        inbox_id, conversation_id = record["inbox_id"], record["conversation_id"]
        await _emit(conn, conversation_event(
            "DELIVERY_FAILED", fact=f"delivery-failed/{record['request_id']}",
            inbox_id=inbox_id, conversation_id=conversation_id,
            message_kind=record["kind"], request_id=record["request_id"],
            error_class=record["error_class"], smtp_code=record["smtp_code"],
            error_detail=record["detail"]))
        log.info("router: inbox %s request %s: %s not delivered in conversation %s: %s",
                 inbox_id, record["request_id"], record["kind"], conversation_id,
                 record["error_class"])


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _resolve_reopening(inbox: rows.Row, mail: ParsedMail, record: dict[str, Any],
                       conversation: rows.Row, rule: str) -> Placement:
    """Keep the found conversation, or start its successor when the inbox setting requires it."""
    if mail.kind in REOPENING_KINDS and threader.starts_new_conversation(
            conversation["status"], conversation["last_message_at"], record["occurred_at"],
            inbox["new_conversation_after_days"]):
        log.info("router: inbox %s Message-ID %s: conversation %s resolved more than %d days "
                 "ago, starting a new one", record["inbox_id"], mail.message_id,
                 conversation["conversation_id"], inbox["new_conversation_after_days"])
        return Placement(conversation=None, rule=rule, supersedes=conversation)
    return Placement(conversation=conversation, rule=rule)


def _thread_ids(mail: ParsedMail) -> tuple[list[str], list[str]]:
    """Return (In-Reply-To, References) that thread this mail.

    A bounce threads through the headers of the mail that bounced, and
    that mail's own Message-ID is treated as the id the bounce replies to.
    """
    if mail.bounce is None:
        return list(mail.in_reply_to), list(mail.references)
    bounced = mail.bounce
    in_reply_to = [bounced.original_message_id] if bounced.original_message_id else []
    references = [*bounced.original_references]
    if bounced.original_in_reply_to and bounced.original_in_reply_to not in references:
        references.append(bounced.original_in_reply_to)
    return in_reply_to, references


def _is_reply(mail: ParsedMail) -> bool:
    return threader.normalize_subject(mail.subject).is_reply or bool(
        mail.in_reply_to or mail.references)


def _subject_key(mail: ParsedMail) -> str | None:
    if mail.list_id:
        correspondent = threader.list_participant(mail.list_id)
    elif mail.from_ and mail.from_.email:
        correspondent = mail.from_.email
    else:
        return None
    return threader.subject_key(correspondent, mail.subject)


def _lookup_addresses(parties: Parties) -> list[str]:
    addresses = set(parties.senders) | set(parties.recipients) | set(parties.failed_recipients or ())
    if parties.list_key:
        addresses.add(parties.list_key)
    return sorted(addresses)


def _attachment_json(attachment: Attachment) -> dict[str, Any]:
    return {"filename": attachment.filename, "content_type": attachment.content_type,
            "size": attachment.size, "sha256": attachment.sha256, "inline": attachment.inline,
            "content_id": attachment.content_id}


def _html_with_attachment_urls(mail: ParsedMail, message_id: str) -> str | None:
    inline = {a.content_id: ids.attachment_path(message_id, a.sha256)
              for a in mail.attachments if a.inline and a.content_id}
    if mail.html is None or not inline:
        return mail.html
    return sanitize_html(mail.html, inline)


async def _emit(conn: AsyncConnection[Any], event: dict[str, Any]) -> None:
    await outbox.add(conn, topics.CONVERSATION_EVENTS, event["inbox_id"], "ConversationEvent",
                     event)


def _raw_mail_missing(sha256: str) -> RawMailMissing:
    return RawMailMissing(f"raw mail {sha256} is not in the store: the event names a digest "
                          "that ingest never stored, or the store lost it")


async def _upsert_contact(conn: AsyncConnection[Any], inbox_id: str, mail: ParsedMail,
                          seen_at: datetime) -> rows.Row | None:
    """Record the sender as a contact; return its id and address, None for no contact."""
    # A bounce comes from a mail system, never from a customer.
    if mail.kind == "bounce" or mail.from_ is None or not mail.from_.email:
        return None
    email = mail.from_.email.lower()
    contact_id = ids.derive_id("contact", inbox_id, email)
    await rows.upsert_contact(conn, contact_id, inbox_id, email, mail.from_.name, seen_at)
    return {"id": contact_id, "email": email}


async def _store_notice(conn: AsyncConnection[Any], record: dict[str, Any], mail: ParsedMail,
                        dedup_key: str) -> None:
    detail: dict[str, Any] = {"from": mail.from_.email if mail.from_ else None,
                              "message_id": mail.message_id}
    if mail.forwarding_confirmation is not None:
        detail["forwarding_confirmation"] = asdict(mail.forwarding_confirmation)
    if mail.bounce is not None:
        detail["bounce"] = asdict(mail.bounce)

    await rows.insert_notice(conn, {
        "id": ids.derive_id("notice", record["inbox_id"], dedup_key),
        "inbox_id": record["inbox_id"],
        "kind": mail.kind,
        "subject": mail.subject,
        "detail": rows.to_json(detail),
        "raw_sha256": record["raw_sha256"],
        "created_at": record["occurred_at"],
        "dedup_key": dedup_key,
    })
    log.info("router: inbox %s Message-ID %s: stored as a %s notice, no conversation",
             record["inbox_id"], mail.message_id, mail.kind)
