"""Reads and writes of the router's rows, one function per statement.

``stage.RouterStage`` calls these inside the batch transaction of the shared
loop, so nothing here commits. Everything threading needs to know about an
incoming mail is read in one query (:func:`look_up`), and no write returns
anything, so the stage can send all writes of a mail in one pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from services.router.mime import Attachment, ParsedMail

Row = dict[str, Any]


async def fetch_one(conn: AsyncConnection[Any], query: str,
                    params: Sequence[Any] | Mapping[str, Any]) -> Row | None:
    cursor = await conn.execute(query, params)
    row: Row | None = await cursor.fetchone()
    return row


async def load_raw(conn: AsyncConnection[Any], sha256: str) -> bytes | None:
    row = await fetch_one(conn, "SELECT content FROM raw_mails WHERE sha256 = %s", (sha256,))
    return None if row is None else bytes(row["content"])


async def load_inbox_and_raw(conn: AsyncConnection[Any], inbox_id: str,
                             sha256: str) -> tuple[Row | None, bytes | None]:
    """Return the inbox's threading settings and the raw mail, each None when missing."""
    row = await fetch_one(
        conn, "SELECT i.id, i.email, i.forwarding_address, i.new_conversation_after_days, "
              "i.subject_threading_days, r.content FROM (SELECT 1) AS one "
              "LEFT JOIN inboxes i ON i.id = %s LEFT JOIN raw_mails r ON r.sha256 = %s",
        (inbox_id, sha256))
    assert row is not None
    content = row.pop("content")
    return (row if row["id"] is not None else None), (None if content is None else bytes(content))


@dataclass(frozen=True)
class Lookup:
    """The inbox's existing records that bear on one mail, read in one query."""

    known: bool  # a message or notice with the mail's dedup key exists
    candidates: list[Row]  # key, by_token, conversation_id, known (participants), and state
    subject_match: Row | None  # the subject fallback's conversation, with its state


# The conversation columns threading decisions read.
_STATE = "c.id AS conversation_id, c.status, c.last_message_at, c.superseded_by"


async def look_up(conn: AsyncConnection[Any], *, inbox_id: str, dedup_key: str,
                  tokens: list[str], keys: list[str], addresses: list[str],
                  subject_key: str | None, since: datetime | None,
                  mail_is_reply: bool) -> Lookup:
    """Read in one round trip whether the mail is known and what it may thread to.

    Candidate rows come from reply tokens (``by_token``) and thread keys,
    each with ``known``: those of ``addresses`` that take part in the
    conversation. The subject fallback's row is the most recent
    conversation with ``subject_key`` active since ``since``. Unless the
    new mail is a reply, that conversation must have started with one,
    because two first mails with one subject are two requests.
    """
    cursor = await conn.execute(
        "SELECT 'known' AS source, NULL AS key, NULL::uuid AS conversation_id, NULL AS status,"
        " NULL::timestamptz AS last_message_at, NULL::uuid AS superseded_by, NULL::text[] AS known"
        " WHERE EXISTS (SELECT 1 FROM messages WHERE inbox_id = %(inbox)s"
        " AND dedup_key = %(dedup)s) OR EXISTS (SELECT 1 FROM notices"
        " WHERE inbox_id = %(inbox)s AND dedup_key = %(dedup)s) "
        "UNION ALL "
        "SELECT f.source, f.key, " + _STATE + ", ARRAY(SELECT p.address"
        " FROM conversation_participants p WHERE p.conversation_id = c.id"
        " AND p.address = ANY(%(addresses)s)) FROM ("
        " SELECT 'token' AS source, reply_token AS key, id AS conversation_id FROM conversations"
        " WHERE inbox_id = %(inbox)s AND reply_token = ANY(%(tokens)s)"
        " UNION ALL SELECT 'key', message_id, conversation_id FROM thread_keys"
        " WHERE inbox_id = %(inbox)s AND message_id = ANY(%(keys)s)"
        ") AS f JOIN conversations c ON c.id = f.conversation_id "
        "UNION ALL "
        "(SELECT 'subject', NULL, " + _STATE + ", NULL FROM conversations c"
        " WHERE c.inbox_id = %(inbox)s AND c.subject_key = %(subject)s"
        " AND c.last_message_at >= %(since)s AND (%(reply)s OR c.started_by_reply)"
        " ORDER BY c.last_message_at DESC, c.id LIMIT 1)",
        {"inbox": inbox_id, "dedup": dedup_key, "tokens": tokens, "keys": keys,
         "addresses": addresses, "subject": subject_key, "since": since,
         "reply": mail_is_reply})
    found: list[Row] = await cursor.fetchall()

    subject_match = next((row for row in found if row["source"] == "subject"), None)
    return Lookup(known=any(row["source"] == "known" for row in found),
                  candidates=[row for row in found if row["source"] in ("token", "key")],
                  subject_match=subject_match)


async def is_known(conn: AsyncConnection[Any], inbox_id: str, dedup_key: str) -> bool:
    """Tell whether the inbox already contains a message or notice with this dedup key."""
    row = await fetch_one(
        conn, "SELECT EXISTS (SELECT 1 FROM messages WHERE inbox_id = %(inbox)s "
              "AND dedup_key = %(key)s) OR EXISTS (SELECT 1 FROM notices "
              "WHERE inbox_id = %(inbox)s AND dedup_key = %(key)s) AS known",
        {"inbox": inbox_id, "key": dedup_key})
    return bool(row and row["known"])


async def current_conversation(conn: AsyncConnection[Any], state: Row) -> Row:
    """Return the threading state of the conversation that ``state`` leads to.

    A conversation superseded by a newer one leads to that one, so the
    successor links are followed until the current conversation.
    """
    if state["superseded_by"] is None:
        return state
    conversation_id = str(state["superseded_by"])
    # A chain longer than this would need a successor per resolution window
    # for years; stopping there is safe because every link is a real
    # conversation.
    row: Row | None = None
    for _ in range(50):
        row = await fetch_one(conn, "SELECT id AS conversation_id, status, last_message_at, "
                                    "superseded_by FROM conversations WHERE id = %s",
                              (conversation_id,))
        assert row is not None, f"conversation {conversation_id} vanished inside the transaction"
        if row["superseded_by"] is None:
            break
        conversation_id = str(row["superseded_by"])
    assert row is not None
    return row


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------


async def upsert_contact(conn: AsyncConnection[Any], contact_id: str, inbox_id: str, email: str,
                         name: str, seen_at: datetime) -> None:
    """Create the contact, or give a nameless one the name this mail carries."""
    await conn.execute(
        "INSERT INTO contacts (id, inbox_id, email, name, created_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (inbox_id, email) DO UPDATE SET name = CASE WHEN contacts.name = '' "
        "THEN EXCLUDED.name ELSE contacts.name END",
        (contact_id, inbox_id, email, name, seen_at))


async def insert_conversation(conn: AsyncConnection[Any], values: Row) -> None:
    await conn.execute(
        "INSERT INTO conversations (id, inbox_id, contact_id, subject, status, reply_token, "
        "created_at, last_message_at, subject_key, started_by_reply) VALUES (%(id)s, "
        "%(inbox_id)s, %(contact_id)s, %(subject)s, 'open', %(reply_token)s, %(arrived_at)s, "
        "%(arrived_at)s, %(subject_key)s, %(started_by_reply)s)", values)


async def supersede(conn: AsyncConnection[Any], old_id: str, new_id: str) -> None:
    await conn.execute("UPDATE conversations SET superseded_by = %s WHERE id = %s",
                       (new_id, old_id))


async def touch_conversation(conn: AsyncConnection[Any], conversation_id: str,
                             arrived_at: datetime, reopen: bool) -> None:
    """Record a new message's time, and reopen the conversation when asked."""
    await conn.execute(
        "UPDATE conversations SET last_message_at = GREATEST(last_message_at, %s), "
        "status = CASE WHEN %s THEN 'open' ELSE status END WHERE id = %s",
        (arrived_at, reopen, conversation_id))


async def insert_message(conn: AsyncConnection[Any], values: Row) -> None:
    await conn.execute(
        "INSERT INTO messages (id, inbox_id, conversation_id, dedup_key, direction, kind, "
        "rfc_message_id, in_reply_to, \"references\", from_name, from_email, to_addresses, "
        "cc_addresses, subject, text_body, new_text, html_body, attachments, raw_sha256, "
        "sent_at, received_at, auto_submitted, list_id, bounce, defects, threaded_by) "
        "VALUES (%(id)s, %(inbox_id)s, %(conversation_id)s, %(dedup_key)s, %(direction)s, "
        "%(kind)s, %(rfc_message_id)s, %(in_reply_to)s, %(references)s, %(from_name)s, "
        "%(from_email)s, %(to_addresses)s, %(cc_addresses)s, %(subject)s, %(text_body)s, "
        "%(new_text)s, %(html_body)s, %(attachments)s, %(raw_sha256)s, %(sent_at)s, "
        "%(received_at)s, %(auto_submitted)s, %(list_id)s, %(bounce)s, %(defects)s, "
        "%(threaded_by)s)", values)


def to_json(value: Any) -> str:
    """Serialize for a jsonb column, dropping NUL characters from every string.

    PostgreSQL rejects the JSON escape of NUL in jsonb, and a NUL in a mail's header or
    report field carries no meaning.
    """
    return json.dumps(_without_nul(value), ensure_ascii=False)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(item) for item in value]
    return value


def message_values(mail: ParsedMail) -> Row:
    """Return the message columns that come from the parsed mail alone."""
    return {
        "rfc_message_id": mail.message_id,
        "in_reply_to": mail.in_reply_to,
        "references": mail.references,
        "from_name": mail.from_.name if mail.from_ else "",
        "from_email": mail.from_.email if mail.from_ else "",
        "to_addresses": to_json([asdict(a) for a in mail.to]),
        "cc_addresses": to_json([asdict(a) for a in mail.cc]),
        "subject": mail.subject,
        "text_body": mail.text,
        "new_text": mail.new_text,
        "auto_submitted": mail.auto_submitted,
        "list_id": mail.list_id,
        "bounce": to_json(asdict(mail.bounce)) if mail.bounce else None,
        "defects": to_json(mail.defects),
    }


async def add_thread_keys(conn: AsyncConnection[Any], inbox_id: str, conversation_id: str,
                          keys: list[str]) -> None:
    """Register keys for the conversation; a key that leads elsewhere already keeps its place."""
    if not keys:
        return
    await conn.execute(
        "INSERT INTO thread_keys (inbox_id, message_id, conversation_id) "
        "SELECT %s, key, %s FROM unnest(%s::text[]) AS key ON CONFLICT DO NOTHING",
        (inbox_id, conversation_id, keys))


async def add_participants(conn: AsyncConnection[Any], conversation_id: str,
                           participants: list[tuple[str, str]]) -> None:
    """Record (address, role) pairs; an address keeps the first role it had."""
    if not participants:
        return
    await conn.execute(
        "INSERT INTO conversation_participants (conversation_id, address, role) "
        "SELECT %s, address, role FROM unnest(%s::text[], %s::text[]) AS p (address, role) "
        "ON CONFLICT DO NOTHING",
        (conversation_id, [address for address, _ in participants],
         [role for _, role in participants]))


async def store_attachment_bytes(conn: AsyncConnection[Any], attachments: list[Attachment]) -> None:
    """Keep each attachment's decoded bytes in the raw store under their SHA-256."""
    distinct = {attachment.sha256: attachment.data for attachment in attachments}
    if not distinct:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
            "ON CONFLICT (sha256) DO NOTHING",
            [(sha256, len(data), data) for sha256, data in distinct.items()])


async def insert_notice(conn: AsyncConnection[Any], values: Row) -> None:
    await conn.execute(
        "INSERT INTO notices (id, inbox_id, kind, subject, detail, raw_sha256, created_at, "
        "dedup_key) VALUES (%(id)s, %(inbox_id)s, %(kind)s, %(subject)s, %(detail)s, "
        "%(raw_sha256)s, %(created_at)s, %(dedup_key)s) ON CONFLICT (id) DO NOTHING", values)
