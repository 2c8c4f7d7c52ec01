"""Hostile senders against the whole pipeline: strangers, header injection, autoresponder loops.

- A stranger who quotes a conversation's reply token and Message-IDs, to
  the inbox that owns it or to another one, gets a conversation of their
  own; the quoted conversation gains nothing.
- CR and LF smuggled into a display name or a subject through
  encoded-words never become header lines of the greeting, and the
  greeting goes to the sender only.
- An autoresponder without any auto-reply header answers every mail of
  ours for ten simulated minutes: we send it at most two mails.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from messagehub import db
from messagehub.localstack.smtp_sink import SinkMail, read_sink
from tests.pipeline_helpers import create_inbox

pytestmark = pytest.mark.stack

WAIT_SECONDS = 120.0
# How long the autoresponder runs, in simulated time, and how fast it answers.
LOOP_DURATION = timedelta(minutes=10)
AUTORESPONDER_DELAY = timedelta(seconds=30)
# With nothing new in the sink for this long, our side has stopped answering.
QUIET_SECONDS = 20.0


def forward(stack: dict[str, Any], inbox: dict[str, Any], raw: bytes) -> None:
    """Send ``raw`` to the inbox's forwarding address as its provider would."""
    import smtplib

    host, port = stack["ingest_smtp"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as client:
        client.sendmail("", [inbox["forwarding_address"]], raw)


def wait_until(condition: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


def message_row(stack: dict[str, Any], message_id: str) -> dict[str, Any] | None:
    with db.connect(stack["database_url"], autocommit=True) as conn:
        row: dict[str, Any] | None = conn.execute(
            "SELECT inbox_id::text, conversation_id::text, threaded_by FROM messages "
            "WHERE rfc_message_id = %s", (message_id,)).fetchone()
    return row


def conversation_messages(stack: dict[str, Any], conversation_id: str) -> list[str]:
    with db.connect(stack["database_url"], autocommit=True) as conn:
        rows = conn.execute("SELECT rfc_message_id FROM messages WHERE conversation_id = %s "
                            "ORDER BY received_at", (conversation_id,)).fetchall()
    return [row["rfc_message_id"] for row in rows]


def sink_mails_to(stack: dict[str, Any], address: str) -> list[SinkMail]:
    return [mail for mail in read_sink(Path(stack["sink_dir"]))
            if address in [rcpt.lower() for rcpt in mail.rcpt_tos]]


def mail(*, sender: str, to: str, subject: str, message_id: str, body: str = "Hello.",
         extra: str = "", date: datetime | None = None) -> bytes:
    stamp = format_datetime(date or datetime.now(timezone.utc))
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {stamp}\r\n"
            f"Message-ID: <{message_id}>\r\n{extra}MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


# --- strangers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(stack: dict[str, Any]) -> dict[str, Any]:
    """A conversation of Alice's in inbox A, with the greeting we sent her."""
    tag = uuid.uuid4().hex[:8]
    inbox = create_inbox(stack, email_address=f"support-{tag}@victim.example", agents=["Kim"])
    alice = f"alice-{tag}@customers.example"
    message_id = f"alice-{tag}@customers.example"
    forward(stack, inbox, mail(sender=f"Alice <{alice}>", to=inbox["email"],
                               subject="My parcel is missing", message_id=message_id))
    row = wait_until(lambda: message_row(stack, message_id), "Alice's mail")
    greeting = wait_until(lambda: sink_mails_to(stack, alice), "the greeting to Alice")[0]
    wait_until(lambda: len(conversation_messages(stack, row["conversation_id"])) == 2,
               "the greeting recorded in Alice's conversation")
    return {"inbox": inbox, "alice": alice, "message_id": message_id,
            "conversation_id": row["conversation_id"],
            "greeting_id": str(greeting.message["Message-ID"]).strip("<>"),
            "reply_to": str(greeting.message["Reply-To"])}


def test_stranger__other_inbox_token_gets_own_conversation(stack: dict[str, Any],
                                                           victim: dict[str, Any]) -> None:
    other = create_inbox(stack, email_address=f"sales-{uuid.uuid4().hex[:8]}@other.example",
                         agents=["Lee"])
    message_id = f"mallory-{uuid.uuid4().hex[:8]}@attacker.example"
    forward(stack, other, mail(
        sender="Mallory <mallory@attacker.example>", to=other["email"],
        subject="Re: My parcel is missing", message_id=message_id,
        extra=(f"Cc: {victim['reply_to']}\r\nIn-Reply-To: <{victim['greeting_id']}>\r\n"
               f"References: <{victim['message_id']}> <{victim['greeting_id']}>\r\n")))

    row = wait_until(lambda: message_row(stack, message_id), "Mallory's mail")

    assert row["inbox_id"] == other["id"]
    assert row["conversation_id"] != victim["conversation_id"]
    assert message_id not in conversation_messages(stack, victim["conversation_id"])


def test_stranger__same_inbox_token_and_ids_rejected(stack: dict[str, Any],
                                                     victim: dict[str, Any]) -> None:
    message_id = f"mallory-{uuid.uuid4().hex[:8]}@attacker.example"
    forward(stack, victim["inbox"], mail(
        sender="Mallory <mallory@attacker.example>", to=victim["reply_to"],
        subject="Re: My parcel is missing", message_id=message_id,
        extra=(f"In-Reply-To: <{victim['greeting_id']}>\r\n"
               f"References: <{victim['message_id']}> <{victim['greeting_id']}>\r\n")))

    row = wait_until(lambda: message_row(stack, message_id), "Mallory's mail")

    assert row["inbox_id"] == victim["inbox"]["id"]
    assert row["conversation_id"] != victim["conversation_id"]
    assert row["threaded_by"] == "new"
    assert conversation_messages(stack, victim["conversation_id"]) == [
        victim["message_id"], victim["greeting_id"]]


# --- header injection ----------------------------------------------------------------------


def greeting_ledger(stack: dict[str, Any], conversation_id: str) -> dict[str, Any] | None:
    """Return the finished greeting row of a conversation's send ledger, None before."""
    with db.connect(stack["database_url"], autocommit=True) as conn:
        row: dict[str, Any] | None = conn.execute(
            "SELECT status, error_class, smtp_response FROM send_ledger "
            "WHERE conversation_id = %s AND kind = 'greeting' AND status <> 'sending'",
            (conversation_id,)).fetchone()
    return row


@pytest.mark.parametrize("field", ["name", "subject"])
def test_injection__encoded_crlf_never_a_header(stack: dict[str, Any], field: str) -> None:
    tag = uuid.uuid4().hex[:8]
    inbox = create_inbox(stack, email_address=f"support-{tag}@inject.example", agents=["Kim"])
    eve = f"eve-{tag}@customers.example"
    message_id = f"eve-{tag}@customers.example"
    name = "=?utf-8?q?Eve=0D=0ABcc=3A_victim=40evil=2Eexample?=" if field == "name" else "Eve"
    subject = ("=?utf-8?q?Order_7=0D=0ABcc=3A_victim=40evil=2Eexample=0D=0A?="
               if field == "subject" else "Order 7")
    forward(stack, inbox, mail(sender=f"{name} <{eve}>", to=inbox["email"], subject=subject,
                               message_id=message_id))
    row = wait_until(lambda: message_row(stack, message_id), "Eve's mail")

    ledger = wait_until(lambda: greeting_ledger(stack, row["conversation_id"]),
                        "the greeting's ledger row")

    # Either outbound refused to build the mail, or it built one without the line break.
    sent = sink_mails_to(stack, eve)
    assert ledger["status"] in ("sent", "failed")
    if ledger["status"] == "failed":
        assert ledger["error_class"] == "invalid"
        assert "line break" in ledger["smtp_response"]
        assert sent == []
    for greeting in sent:
        assert [rcpt.lower() for rcpt in greeting.rcpt_tos] == [eve]
        assert b"\r\nBcc:" not in greeting.raw.split(b"\r\n\r\n", 1)[0]
    assert [m for m in read_sink(Path(stack["sink_dir"])) if "victim@evil.example" in
            [rcpt.lower() for rcpt in m.rcpt_tos]] == []


@pytest.mark.parametrize("name", ["Support\r\nBcc: victim@evil.example", "Support\nX-Evil: 1",
                                  "Support\rBcc: victim@evil.example"])
def test_injection__inbox_name_rejected(stack: dict[str, Any], name: str) -> None:
    from messagehub import inboxes

    with db.connect(stack["database_url"], autocommit=True) as conn, \
            pytest.raises(inboxes.InboxError):
        inboxes.create_inbox(conn, name=name + uuid.uuid4().hex[:6],
                             email="support@inject.example",
                             inbound_domain=stack["inbound_domain"], greeting_enabled=True)


@pytest.mark.parametrize(("path", "field"), [("/v1/inboxes", "name"),
                                              ("/v1/agents", "name")])
def test_injection__api_names_rejected(stack: dict[str, Any], path: str, field: str) -> None:
    from tests.api.helpers import Api

    api = Api(stack["api"], stack["api_token"])
    body = {"name": f"Kim {uuid.uuid4().hex[:6]}\r\nBcc: victim@evil.example",
            "email": f"x-{uuid.uuid4().hex[:6]}@inject.example"}

    status, answer = api.call("POST", path, body)

    assert status == 422
    assert [error["field"] for error in answer["error"]["fields"]] == [field]


def test_injection__api_settings_rejected(stack: dict[str, Any]) -> None:
    from tests.api.helpers import Api, create_inbox as create_inbox_by_api

    api = Api(stack["api"], stack["api_token"])
    inbox = create_inbox_by_api(api)

    status, answer = api.call("PATCH", f"/v1/inboxes/{inbox['id']}/settings",
                              {"business_name": "Acme\nBcc: victim@evil.example"})

    assert status == 422
    assert [error["field"] for error in answer["error"]["fields"]] == ["business_name"]


# --- autoresponder loops -----------------------------------------------------------------


def run_autoresponder(stack: dict[str, Any], *, threads_its_answers: bool) -> list[SinkMail]:
    """Play an autoresponder without auto-reply headers against a fresh inbox.

    It writes first, then answers every mail we send it, ``AUTORESPONDER_DELAY``
    of simulated time later, until ``LOOP_DURATION`` has passed or we stop
    answering. Returns what we sent it.
    """
    tag = uuid.uuid4().hex[:8]
    inbox = create_inbox(stack, email_address=f"help-{tag}@shop.example", agents=["Kim"])
    bot = f"tickets-{tag}@vendor.example"
    clock = datetime.now(timezone.utc)
    ends = clock + LOOP_DURATION
    number = 1
    forward(stack, inbox, mail(sender=f"Vendor Desk <{bot}>", to=inbox["email"],
                               subject=f"Ticket {tag}-{number} received",
                               message_id=f"bot-{tag}-{number}@vendor.example", date=clock,
                               body="We have received your request and will answer soon."))
    answered = 0
    while clock < ends:
        ours = _wait_for_new(stack, bot, answered)
        if len(ours) == answered:
            break
        for sent in ours[answered:]:
            clock += AUTORESPONDER_DELAY
            number += 1
            threading = ""
            subject = f"Ticket {tag}-{number} received"
            if threads_its_answers:
                subject = f"Re: {sent.message['Subject']}"
                threading = f"In-Reply-To: {sent.message['Message-ID']}\r\n"
            forward(stack, inbox, mail(
                sender=f"Vendor Desk <{bot}>", to=inbox["email"], subject=subject,
                message_id=f"bot-{tag}-{number}@vendor.example", date=clock, extra=threading,
                body="We have received your request and will answer soon."))
        answered = len(ours)
    return sink_mails_to(stack, bot)


def _wait_for_new(stack: dict[str, Any], address: str, known: int) -> list[SinkMail]:
    """Return the mails to ``address`` once more than ``known`` arrived or it stayed quiet."""
    deadline = time.monotonic() + (WAIT_SECONDS if known == 0 else QUIET_SECONDS)
    while time.monotonic() < deadline:
        found = sink_mails_to(stack, address)
        if len(found) > known:
            time.sleep(2)  # let a burst arrive together
            return sink_mails_to(stack, address)
        time.sleep(1)
    return sink_mails_to(stack, address)


def test_loop__autoresponder_with_threading_headers(stack: dict[str, Any]) -> None:
    ours = run_autoresponder(stack, threads_its_answers=True)

    assert 1 <= len(ours) <= 2


def test_loop__autoresponder_with_fresh_subjects(stack: dict[str, Any]) -> None:
    ours = run_autoresponder(stack, threads_its_answers=False)

    assert 1 <= len(ours) <= 2
