"""The router stage on a real PostgreSQL, fed records directly.

Each test builds MailReceived and MailSent records with arrival times of
its choosing and applies them with ``RouterStage.apply`` inside a
transaction, as the batch loop does, in a database of its own on the test
stack's server. That makes time windows (the subject fallback, a new
conversation after N days) testable without waiting, and keeps these rows
out of the stack's own database.

The cast: Alice writes to support, Bob is in copy, Mallory is a stranger.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from messagehub import codec, db, inboxes
from messagehub.worker import StageError
from services.router import replay
from services.router.stage import RawMailMissing, RouterStage, UnknownInbox

pytestmark = pytest.mark.stack

INBOUND_DOMAIN = "inbound.example.test"
OUR_DOMAIN = "messagehub.example.test"
STAGE = RouterStage(secret_key="k" * 40, inbound_domain=INBOUND_DOMAIN,
                    message_id_domain=OUR_DOMAIN)
T0 = datetime(2024, 3, 4, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def database_url(stack: dict[str, Any]) -> Iterator[str]:
    url = replay.create_local_database(stack, f"router_stage_{uuid.uuid4().hex[:8]}")
    db.apply_schema(url)
    yield url


@pytest.fixture
def inbox(database_url: str) -> dict[str, Any]:
    with db.connect(database_url, autocommit=True) as conn:
        return inboxes.create_inbox(conn, name=f"stage-{uuid.uuid4().hex[:8]}",
                                    email="support@example.com", inbound_domain=INBOUND_DOMAIN)


def build(headers: str, body: str = "Hello.\n") -> bytes:
    """Build a mail from LF-separated header lines, with CRLF line ends."""
    text = headers.strip("\n") + "\n\n" + body
    return text.replace("\n", "\r\n").encode("utf-8")


def customer_mail(message_id: str, *, sender: str = "Alice Example <alice@example.org>",
                  to: str = "Support <support@example.com>", extra: str = "",
                  subject: str = "Parcel 4471 arrived damaged") -> bytes:
    return build(f"From: {sender}\nTo: {to}\nSubject: {subject}\n"
                 f"Message-ID: <{message_id}>\n{extra}")


async def route(database_url: str, inbox: dict[str, Any], raw: bytes, *, at: datetime,
                recipients: list[str] | None = None) -> None:
    """Apply one MailReceived record for ``raw`` in a transaction of its own."""
    sha256 = hashlib.sha256(raw).hexdigest()
    record = {"event_id": f"test/{uuid.uuid4()}", "occurred_at": at, "inbox_id": inbox["id"],
              "schema_version": 1, "raw_sha256": sha256, "raw_size": len(raw),
              "source": "smtp", "envelope_sender": None,
              "envelope_recipients": recipients or [inbox["forwarding_address"]],
              "message_id": None, "subject": None, "from_address": None}
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                               "ON CONFLICT DO NOTHING", (sha256, len(raw), raw))
            await STAGE.apply(conn, "MailReceived", record)


async def record_sent(database_url: str, inbox: dict[str, Any], conversation_id: str,
                      message_id: str, *, at: datetime) -> None:
    """Apply a MailSent record for a reply of ours to Alice."""
    raw = build(f"From: Support <support@example.com>\nTo: Alice Example <alice@example.org>\n"
                f"Subject: Re: Parcel 4471 arrived damaged\nMessage-ID: <{message_id}>\n",
                "We are sorry to hear that.\n")
    sha256 = hashlib.sha256(raw).hexdigest()
    record = {"event_id": f"test/{uuid.uuid4()}", "occurred_at": at, "inbox_id": inbox["id"],
              "conversation_id": conversation_id, "schema_version": 1,
              "request_id": str(uuid.uuid4()), "kind": "agent", "rfc_message_id": message_id,
              "raw_sha256": sha256, "recipients": ["alice@example.org"],
              "subject": "Re: Parcel 4471 arrived damaged"}
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                               "ON CONFLICT DO NOTHING", (sha256, len(raw), raw))
            await STAGE.apply(conn, "MailSent", record)


def conversations(database_url: str, inbox: dict[str, Any]) -> list[dict[str, Any]]:
    with db.connect(database_url) as conn:
        return conn.execute(
            "SELECT c.*, ct.email AS contact, array_agg(m.rfc_message_id ORDER BY m.received_at) "
            "AS message_ids FROM conversations c LEFT JOIN contacts ct ON ct.id = c.contact_id "
            "JOIN messages m ON m.conversation_id = c.id WHERE c.inbox_id = %s "
            "GROUP BY c.id, ct.email ORDER BY c.created_at", (inbox["id"],)).fetchall()


def message(database_url: str, inbox: dict[str, Any], rfc_message_id: str) -> dict[str, Any]:
    with db.connect(database_url) as conn:
        row = conn.execute("SELECT * FROM messages WHERE inbox_id = %s AND rfc_message_id = %s",
                           (inbox["id"], rfc_message_id)).fetchone()
    assert row is not None, f"no message {rfc_message_id}"
    return row


def execute(database_url: str, query: str, params: tuple[Any, ...]) -> None:
    with db.connect(database_url, autocommit=True) as conn:
        conn.execute(query, params)


def outbox_events(database_url: str, conversation_id: str) -> list[str]:
    with db.connect(database_url) as conn:
        rows = conn.execute("SELECT value FROM outbox WHERE topic = 'conversation.events' "
                            "ORDER BY id").fetchall()
    events = [codec.decode(bytes(row["value"]))[1] for row in rows]
    return [event["type"] for event in events if event["conversation_id"] == conversation_id]


# ---------------------------------------------------------------------------
# Reopening and successors
# ---------------------------------------------------------------------------


async def test_stage__reply_reopens_resolved_conversation(database_url: str,
                                                          inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("a1@example.org"), at=T0)
    [conversation] = conversations(database_url, inbox)
    execute(database_url, "UPDATE conversations SET status = 'resolved' WHERE id = %s",
            (conversation["id"],))

    reply = customer_mail("a2@example.org", extra="In-Reply-To: <a1@example.org>\n",
                          subject="Re: Parcel 4471 arrived damaged")
    await route(database_url, inbox, reply, at=T0 + timedelta(days=40))

    [after] = conversations(database_url, inbox)
    assert after["status"] == "open"
    assert after["message_ids"] == ["a1@example.org", "a2@example.org"]
    assert "STATUS_CHANGED" in outbox_events(database_url, str(after["id"]))


async def test_stage__reply_after_window_starts_successor(database_url: str,
                                                          inbox: dict[str, Any]) -> None:
    execute(database_url, "UPDATE inboxes SET new_conversation_after_days = 30 WHERE id = %s",
            (inbox["id"],))
    await route(database_url, inbox, customer_mail("b1@example.org"), at=T0)
    [old] = conversations(database_url, inbox)
    execute(database_url, "UPDATE conversations SET status = 'resolved' WHERE id = %s",
            (old["id"],))

    late = customer_mail("b2@example.org", extra="In-Reply-To: <b1@example.org>\n")
    await route(database_url, inbox, late, at=T0 + timedelta(days=31))
    again = customer_mail("b3@example.org", extra="References: <b1@example.org>\n")
    await route(database_url, inbox, again, at=T0 + timedelta(days=32))

    first, successor = conversations(database_url, inbox)
    assert first["id"] == old["id"]
    assert first["status"] == "resolved"
    assert first["superseded_by"] == successor["id"]
    assert successor["status"] == "open"
    assert successor["message_ids"] == ["b2@example.org", "b3@example.org"]
    assert outbox_events(database_url, str(successor["id"]))[0] == "CONVERSATION_CREATED"


async def test_stage__reply_within_window_reopens(database_url: str,
                                                  inbox: dict[str, Any]) -> None:
    execute(database_url, "UPDATE inboxes SET new_conversation_after_days = 30 WHERE id = %s",
            (inbox["id"],))
    await route(database_url, inbox, customer_mail("c1@example.org"), at=T0)
    execute(database_url, "UPDATE conversations SET status = 'resolved' WHERE inbox_id = %s",
            (inbox["id"],))

    reply = customer_mail("c2@example.org", extra="In-Reply-To: <c1@example.org>\n")
    await route(database_url, inbox, reply, at=T0 + timedelta(days=29))

    [conversation] = conversations(database_url, inbox)
    assert conversation["status"] == "open"
    assert conversation["superseded_by"] is None


# ---------------------------------------------------------------------------
# Bounces and automatic replies
# ---------------------------------------------------------------------------

BOUNCE = """\
Return-Path: <>
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: support@example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn.{tag}@mx.example.org>
Content-Type: multipart/report; report-type=delivery-status; boundary="D1"
"""

BOUNCE_BODY = """\
--D1
Content-Type: text/plain

<alice@example.org>: mailbox is full

--D1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; alice@example.org
Action: failed
Status: 5.2.2

--D1
Content-Type: text/rfc822-headers

From: Support <support@example.com>
To: Alice Example <alice@example.org>
Message-ID: <{returned}>
In-Reply-To: <{parent}>

--D1--
"""


async def test_stage__bounce_attaches_without_reopening(database_url: str,
                                                        inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("d1@example.org"), at=T0)
    [conversation] = conversations(database_url, inbox)
    ours = f"r1.d@{OUR_DOMAIN}"
    await record_sent(database_url, inbox, str(conversation["id"]), ours, at=T0)
    execute(database_url, "UPDATE conversations SET status = 'resolved' WHERE id = %s",
            (conversation["id"],))

    bounce = build(BOUNCE.format(tag="d"), BOUNCE_BODY.format(returned=ours, parent="d1@example.org"))
    await route(database_url, inbox, bounce, at=T0 + timedelta(hours=1))

    [after] = conversations(database_url, inbox)
    assert after["status"] == "resolved"
    stored = message(database_url, inbox, "dsn.d@mx.example.org")
    assert stored["kind"] == "bounce"
    assert stored["conversation_id"] == conversation["id"]
    assert stored["bounce"]["failed_recipients"] == ["alice@example.org"]
    assert stored["bounce"]["status"] == "5.2.2"
    assert stored["threaded_by"] == "in_reply_to"
    with db.connect(database_url) as conn:
        contacts = conn.execute("SELECT email FROM contacts WHERE inbox_id = %s",
                                (inbox["id"],)).fetchall()
    assert [row["email"] for row in contacts] == ["alice@example.org"]
    assert "STATUS_CHANGED" not in outbox_events(database_url, str(conversation["id"]))


async def test_stage__bounce_for_stranger_is_a_notice(database_url: str,
                                                      inbox: dict[str, Any]) -> None:
    # Our id is quoted, but the failed recipient never took part in it.
    await route(database_url, inbox, customer_mail("e1@example.org"), at=T0)
    [conversation] = conversations(database_url, inbox)
    ours = f"r1.e@{OUR_DOMAIN}"
    await record_sent(database_url, inbox, str(conversation["id"]), ours, at=T0)

    body = BOUNCE_BODY.format(returned=ours, parent="e1@example.org").replace(
        "alice@example.org", "mallory@example.net")
    await route(database_url, inbox, build(BOUNCE.format(tag="e"), body), at=T0)

    with db.connect(database_url) as conn:
        notices = conn.execute("SELECT kind, detail FROM notices WHERE inbox_id = %s",
                               (inbox["id"],)).fetchall()
    assert [notice["kind"] for notice in notices] == ["bounce"]
    assert notices[0]["detail"]["bounce"]["failed_recipients"] == ["mallory@example.net"]
    assert len(conversations(database_url, inbox)[0]["message_ids"]) == 2


async def test_stage__auto_reply_keeps_status(database_url: str, inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("f1@example.org"), at=T0)
    [conversation] = conversations(database_url, inbox)
    ours = f"greeting.f@{OUR_DOMAIN}"
    await record_sent(database_url, inbox, str(conversation["id"]), ours, at=T0)
    execute(database_url, "UPDATE conversations SET status = 'resolved' WHERE id = %s",
            (conversation["id"],))

    ooo = customer_mail("f2@example.org", subject="Automatic reply: We received your message",
                        extra=f"In-Reply-To: <{ours}>\nAuto-Submitted: auto-replied\n")
    await route(database_url, inbox, ooo, at=T0 + timedelta(hours=1))

    [after] = conversations(database_url, inbox)
    assert after["status"] == "resolved"
    stored = message(database_url, inbox, "f2@example.org")
    assert stored["kind"] == "auto_reply"
    assert stored["auto_submitted"] is True
    assert stored["conversation_id"] == conversation["id"]


async def test_stage__unmatched_auto_reply_is_a_notice(database_url: str,
                                                       inbox: dict[str, Any]) -> None:
    ooo = customer_mail("g1@example.org", subject="Out of office",
                        extra="In-Reply-To: <unknown.g@example.net>\nX-Autoreply: yes\n")
    await route(database_url, inbox, ooo, at=T0)

    assert conversations(database_url, inbox) == []
    with db.connect(database_url) as conn:
        [notice] = conn.execute("SELECT * FROM notices WHERE inbox_id = %s",
                                (inbox["id"],)).fetchall()
    assert notice["kind"] == "auto_reply"
    assert notice["dedup_key"] == "g1@example.org"


# ---------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------


async def start_c01(database_url: str, inbox: dict[str, Any], tag: str) -> dict[str, Any]:
    first = customer_mail(f"{tag}1@example.org", extra="Cc: Bob Example <bob@example.org>\n")
    await route(database_url, inbox, first, at=T0)
    [conversation] = conversations(database_url, inbox)
    return conversation


async def test_stage__stranger_quoting_customer_id_starts_own(database_url: str,
                                                              inbox: dict[str, Any]) -> None:
    c01 = await start_c01(database_url, inbox, "h")

    stranger = customer_mail("h2@example.net", sender="Mallory <mallory@example.net>",
                             extra="In-Reply-To: <h1@example.org>\n")
    await route(database_url, inbox, stranger, at=T0)

    assert message(database_url, inbox, "h2@example.net")["conversation_id"] != c01["id"]


async def test_stage__copy_of_participant_joins_on_customer_id(database_url: str,
                                                               inbox: dict[str, Any]) -> None:
    c01 = await start_c01(database_url, inbox, "i")

    colleague = customer_mail("i2@example.net", sender="Carol <carol@example.net>",
                              to="Alice Example <alice@example.org>, support@example.com",
                              extra="In-Reply-To: <i1@example.org>\n")
    await route(database_url, inbox, colleague, at=T0)

    assert message(database_url, inbox, "i2@example.net")["conversation_id"] == c01["id"]


async def test_stage__stranger_quoting_our_id_starts_own(database_url: str,
                                                         inbox: dict[str, Any]) -> None:
    c01 = await start_c01(database_url, inbox, "j")
    ours = f"r1.j@{OUR_DOMAIN}"
    await record_sent(database_url, inbox, str(c01["id"]), ours, at=T0)

    stranger = customer_mail("j2@example.net", sender="Mallory <mallory@example.net>",
                             to="Alice Example <alice@example.org>, support@example.com",
                             extra=f"In-Reply-To: <{ours}>\n")
    await route(database_url, inbox, stranger, at=T0)
    cc_reply = customer_mail("j3@example.org", sender="Bob Example <bob@example.org>",
                             extra=f"In-Reply-To: <{ours}>\n")
    await route(database_url, inbox, cc_reply, at=T0)

    assert message(database_url, inbox, "j2@example.net")["conversation_id"] != c01["id"]
    assert message(database_url, inbox, "j3@example.org")["conversation_id"] == c01["id"]


async def test_stage__reply_token_only_for_participants(database_url: str,
                                                        inbox: dict[str, Any]) -> None:
    c01 = await start_c01(database_url, inbox, "k")
    reply_address = f"reply+{c01['reply_token']}@{INBOUND_DOMAIN}"

    stranger = customer_mail("k2@example.net", sender="Mallory <mallory@example.net>",
                             to=reply_address, subject="Hello")
    await route(database_url, inbox, stranger, at=T0, recipients=[reply_address])
    customer = customer_mail("k3@example.org", to=reply_address, subject="More photos")
    await route(database_url, inbox, customer, at=T0, recipients=[reply_address])

    assert message(database_url, inbox, "k2@example.net")["conversation_id"] != c01["id"]
    joined = message(database_url, inbox, "k3@example.org")
    assert joined["conversation_id"] == c01["id"]
    assert joined["threaded_by"] == "reply_token"


async def test_stage__participants_recorded_with_roles(database_url: str,
                                                       inbox: dict[str, Any]) -> None:
    c01 = await start_c01(database_url, inbox, "l")

    with db.connect(database_url) as conn:
        rows = conn.execute("SELECT address, role FROM conversation_participants "
                            "WHERE conversation_id = %s ORDER BY address", (c01["id"],)).fetchall()
    assert [(row["address"], row["role"]) for row in rows] == [
        ("alice@example.org", "contact"), ("bob@example.org", "cc")]


# ---------------------------------------------------------------------------
# Subject fallback
# ---------------------------------------------------------------------------


async def test_stage__subject_fallback_same_contact(database_url: str,
                                                    inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("m1@example.org"), at=T0)
    # Outlook sometimes drops In-Reply-To and References, but keeps "RE:".
    headerless = customer_mail("m2@example.org", subject="RE: Parcel 4471 arrived damaged")
    await route(database_url, inbox, headerless, at=T0 + timedelta(days=2))

    [conversation] = conversations(database_url, inbox)
    assert conversation["message_ids"] == ["m1@example.org", "m2@example.org"]
    assert message(database_url, inbox, "m2@example.org")["threaded_by"] == "subject"


async def test_stage__subject_fallback_never_joins_other_contacts(
        database_url: str, inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("n1@example.org"), at=T0)
    other = customer_mail("n2@example.org", sender="Bob Example <bob@example.org>",
                          subject="Re: Parcel 4471 arrived damaged")
    await route(database_url, inbox, other, at=T0 + timedelta(hours=1))

    assert len(conversations(database_url, inbox)) == 2


async def test_stage__subject_fallback_is_bounded(database_url: str,
                                                  inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("o1@example.org"), at=T0)
    late = customer_mail("o2@example.org", subject="Re: Parcel 4471 arrived damaged")
    await route(database_url, inbox, late, at=T0 + timedelta(days=15))

    assert [c["message_ids"] for c in conversations(database_url, inbox)] == [
        ["o1@example.org"], ["o2@example.org"]]


async def test_stage__subject_fallback_needs_a_reply(database_url: str,
                                                     inbox: dict[str, Any]) -> None:
    # Two first mails with one subject are two requests.
    await route(database_url, inbox, customer_mail("s1@example.org"), at=T0)
    await route(database_url, inbox, customer_mail("s2@example.org"), at=T0 + timedelta(hours=1))

    assert [c["message_ids"] for c in conversations(database_url, inbox)] == [
        ["s1@example.org"], ["s2@example.org"]]


async def test_stage__subject_fallback_list_mail_joins_by_list(
        database_url: str, inbox: dict[str, Any]) -> None:
    list_headers = "List-Id: Dev list <dev.lists.example.org>\n"
    await route(database_url, inbox, customer_mail(
        "p1@example.org", subject="[dev] Release plan", extra=list_headers), at=T0)
    reply = customer_mail("p2@example.net", sender="Paula <paula@example.net>",
                          subject="Re: [dev] Release plan", extra=list_headers)
    await route(database_url, inbox, reply, at=T0 + timedelta(hours=3))

    [conversation] = conversations(database_url, inbox)
    assert conversation["message_ids"] == ["p1@example.org", "p2@example.net"]


# ---------------------------------------------------------------------------
# Deduplication, transactions and rejected records
# ---------------------------------------------------------------------------


async def test_stage__mail_without_message_id_dedups_on_digest(
        database_url: str, inbox: dict[str, Any]) -> None:
    raw = build("From: Alice Example <alice@example.org>\nTo: support@example.com\n"
                "Subject: No id\n")
    await route(database_url, inbox, raw, at=T0)
    await route(database_url, inbox, raw, at=T0 + timedelta(minutes=5))

    [conversation] = conversations(database_url, inbox)
    assert conversation["message_ids"] == [None]
    with db.connect(database_url) as conn:
        [row] = conn.execute("SELECT dedup_key FROM messages WHERE inbox_id = %s",
                             (inbox["id"],)).fetchall()
    assert row["dedup_key"] == "sha256:" + hashlib.sha256(raw).hexdigest()


async def test_stage__rolled_back_batch_leaves_nothing(database_url: str,
                                                       inbox: dict[str, Any]) -> None:
    # The stage never commits: the caller's transaction decides for the whole batch.
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        transaction = conn.transaction(force_rollback=True)
        async with transaction:
            for number in range(3):
                raw = customer_mail(f"q{number}@example.org", subject=f"Order {number}")
                sha256 = hashlib.sha256(raw).hexdigest()
                await conn.execute("INSERT INTO raw_mails (sha256, size, content) "
                                   "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                   (sha256, len(raw), raw))
                await STAGE.apply(conn, "MailReceived", {
                    "event_id": f"q{number}", "occurred_at": T0, "inbox_id": inbox["id"],
                    "raw_sha256": sha256, "envelope_recipients": []})

    assert conversations(database_url, inbox) == []
    with db.connect(database_url) as conn:
        outbox = conn.execute("SELECT count(*) AS n FROM outbox WHERE key = %s",
                              (inbox["id"].encode(),)).fetchone()
    assert outbox is not None
    assert outbox["n"] == 0


async def test_stage__missing_raw_mail_is_rejected(database_url: str,
                                                   inbox: dict[str, Any]) -> None:
    record = {"event_id": "r1", "occurred_at": T0, "inbox_id": inbox["id"],
              "raw_sha256": "0" * 64, "envelope_recipients": []}
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        with pytest.raises(RawMailMissing, match="0{64} is not in the store"):
            await STAGE.apply(conn, "MailReceived", record)


async def test_stage__unknown_inbox_is_rejected(database_url: str) -> None:
    record = {"event_id": "r2", "occurred_at": T0, "inbox_id": str(uuid.uuid4()),
              "raw_sha256": "0" * 64, "envelope_recipients": []}
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        with pytest.raises(UnknownInbox) as raised:
            await STAGE.apply(conn, "MailReceived", record)
    assert isinstance(raised.value, StageError)
    assert not raised.value.retriable


# ---------------------------------------------------------------------------
# Delivery failures
# ---------------------------------------------------------------------------


async def test_stage__failed_send_becomes_delivery_failed(database_url: str,
                                                          inbox: dict[str, Any]) -> None:
    await route(database_url, inbox, customer_mail("c1.failed@example.org"), at=T0)
    [conversation] = conversations(database_url, inbox)
    request_id = str(uuid.uuid4())
    record = {"event_id": f"test/{uuid.uuid4()}", "occurred_at": T0 + timedelta(minutes=1),
              "inbox_id": inbox["id"], "conversation_id": str(conversation["id"]),
              "schema_version": 1, "request_id": request_id, "kind": "greeting",
              "error_class": "rejected", "smtp_code": 550,
              "detail": "550 5.1.1 mailbox unavailable"}

    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await STAGE.apply(conn, "MailFailed", record)

    with db.connect(database_url) as conn:
        rows = conn.execute("SELECT value FROM outbox WHERE topic = 'conversation.events' "
                            "ORDER BY id").fetchall()
    events = [codec.decode(bytes(row["value"]))[1] for row in rows]
    [failed] = [e for e in events if e["type"] == "DELIVERY_FAILED"
                and e["conversation_id"] == str(conversation["id"])]
    assert failed["request_id"] == request_id
    assert failed["message_kind"] == "greeting"
    assert failed["error_class"] == "rejected"
    assert failed["smtp_code"] == 550
    assert failed["error_detail"] == "550 5.1.1 mailbox unavailable"
