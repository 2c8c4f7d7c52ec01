"""Outbound through the real stack: relay and per-inbox SMTP, threading, loops, surveys.

Mail comes in through the forwarding receiver, requests go through Kafka,
and mail goes out to the stack's SMTP sink (the operator's relay), or to
TLS SMTP servers on loopback that play an inbox's own provider, with the
Sent copy in the stack's Dovecot.
"""

from __future__ import annotations

import re
import ssl
import time
from email.header import Header
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from messagehub import db, stackctl
from tests.conftest import TEST_PORT_BASE, TEST_STATE_DIR
from tests.outbound import stack_helpers as h
from tests.outbound.smtp_servers import SmtpTestServer

pytestmark = pytest.mark.stack

CASE_01 = "01-new-inquiry-with-cc.eml"
C01_ID = "c01.parcel4471@mail.example.org"


def customer_mail(message_id: str, subject: str, *, sender: str = "Alice Example <alice@example.org>",
                  extra: str = "", body: str = "Hello, my parcel arrived damaged.") -> str:
    return (f"From: {sender}\nTo: Support <support@example.com>\nSubject: {subject}\n"
            f"Message-ID: <{message_id}>\nDate: Tue, 05 Mar 2024 10:12:00 +0100\n{extra}"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
            f"{body}\n")


def tls_files(stack: dict[str, Any]) -> tuple[Path, Path]:
    cert = Path(stack["tls_ca_file"])
    return cert, cert.with_name("key.pem")


# --- agent replies through the relay -----------------------------------


def test_agent_reply__threaded_with_one_re(stack: dict[str, Any], tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, greeting=False, business_name="Acme",
                        avatar_url="https://cdn.example.com/acme.png",
                        help_center_url="https://help.example.com/")
    mail = h.write_mail(tmp_path, "m.eml", customer_mail(
        "t1.order@mail.example.org", "RE: Re: [#123] Order 5531",
        extra="References: <root.order@mail.example.org>\n"))
    h.import_mails(stack, inbox, [mail])
    conversation_id = h.conversation_of(stack, inbox, "t1.order@mail.example.org")

    request_id = h.request_send(stack, inbox, conversation_id, "agent",
                                text="Hi Alice,\nwe are sending a new lamp.\nJane",
                                agent_id=h.agent_of(stack, inbox))
    ledger = h.wait_for_ledger(stack, request_id)
    sent = h.sink_mail(stack, ledger["rfc_message_id"])

    assert ledger["status"] == "sent"
    assert sent["Subject"] == "Re: [#123] Order 5531"
    assert sent["In-Reply-To"] == "<t1.order@mail.example.org>"
    assert sent["References"].split() == ["<root.order@mail.example.org>",
                                          "<t1.order@mail.example.org>"]
    assert sent["From"].addresses[0].addr_spec == "support@example.com"
    assert sent["From"].addresses[0].display_name == "Kim from Acme"
    assert re.fullmatch(r"reply\+[a-z0-9]+@inbound\.messagehub\.localhost",
                        sent["Reply-To"].addresses[0].addr_spec)
    assert ledger["rfc_message_id"].endswith("@messagehub.localhost")
    assert "Auto-Submitted" not in sent
    assert sent.get_content_type() == "multipart/alternative"
    html = h.body(sent, "html")
    assert '<img src="https://cdn.example.com/acme.png"' in html
    assert 'href="https://help.example.com/"' in html

    # The router records the sent mail, so the customer's answer threads.
    h.wait_for_row(stack, "SELECT 1 AS found FROM messages WHERE rfc_message_id = %s "
                          "AND direction = 'outgoing' AND kind = 'agent'",
                   (ledger["rfc_message_id"],))


def test_redelivered_request__same_message_id(stack: dict[str, Any], tmp_path: Path) -> None:
    # A crash after the server accepted the mail but before the ledger
    # recorded it leaves the row in "sending". The redelivered request
    # must go out with the Message-ID the first attempt used.
    inbox = h.new_inbox(stack, greeting=False)
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
        "t2.crash@mail.example.org", "Where is my order?"))])
    conversation_id = h.conversation_of(stack, inbox, "t2.crash@mail.example.org")
    request_id = "crash-test-" + conversation_id
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute("INSERT INTO send_ledger (request_id, inbox_id, conversation_id, kind, "
                     "rfc_message_id, status, attempts) VALUES (%s, %s, %s, 'agent', "
                     "'before-crash.1@messagehub.localhost', 'sending', 1)",
                     (request_id, inbox["id"], conversation_id))

    h.request_send(stack, inbox, conversation_id, "agent", text="Shipped today.",
                   request_id=request_id)
    ledger = h.wait_for_ledger(stack, request_id)

    assert ledger["rfc_message_id"] == "before-crash.1@messagehub.localhost"
    assert ledger["attempts"] == 2
    assert len(h.sink_mails(stack, "before-crash.1@messagehub.localhost")) == 1

    # Delivered once more, a finished request is not sent again.
    h.request_send(stack, inbox, conversation_id, "agent", text="Shipped today.",
                   request_id=request_id + "-probe")
    h.wait_for_ledger(stack, request_id + "-probe")
    h.publish(stack, "outbound.requests", inbox["id"], "OutboundRequest", {
        "event_id": request_id + "-again", "occurred_at": ledger["created_at"],
        "inbox_id": inbox["id"], "conversation_id": conversation_id, "request_id": request_id,
        "kind": "agent", "agent_id": None, "text": "Shipped today.", "html": None})
    time.sleep(5)
    assert len(h.sink_mails(stack, "before-crash.1@messagehub.localhost")) == 1


def test_greeting__japanese_headers_encoded(stack: dict[str, Any], tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, locale="ja", business_name="サンプル商事",
                        sender_name_style="professional")
    subject = Header("Re: 請求書の再発行について", "utf-8").encode()
    name = Header("山田 太郎", "utf-8").encode()
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
        "t3.ja@mail.example.jp", subject, sender=f"{name} <taro.yamada@example.jp>"))])
    conversation_id = h.conversation_of(stack, inbox, "t3.ja@mail.example.jp")

    ledger = h.wait_for_ledger(stack, h.ids_greeting(conversation_id))
    raw = _sink_raw(stack, ledger["rfc_message_id"])
    sent = h.parse(raw)

    assert sent["Subject"] == "Re: 請求書の再発行について"
    assert sent["From"].addresses[0].display_name == "サンプル商事"
    assert sent["To"].addresses[0].display_name == "山田 太郎"
    assert sent["Auto-Submitted"] == "auto-replied"
    assert raw.isascii()
    for word in re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw.split(b"\r\n\r\n", 1)[0]):
        assert len(word) <= 75
    assert "お問い合わせを受け付けました" in h.body(sent, "plain")


def _sink_raw(stack: dict[str, Any], message_id: str) -> bytes:
    from messagehub.localstack.smtp_sink import read_sink

    found = [mail.raw for mail in read_sink(Path(stack["sink_dir"]))
             if f"<{message_id}>".encode() in mail.raw.split(b"\r\n\r\n", 1)[0]]
    assert len(found) == 1
    return found[0]


# --- loop protection ---------------------------------------------------


def test_loop_cases__no_automatic_mail(stack: dict[str, Any], cases_dir: Path,
                                       tmp_path: Path) -> None:
    inbox = h.new_inbox(stack)
    h.import_mails(stack, inbox, [cases_dir / CASE_01])
    c01 = h.conversation_of(stack, inbox, C01_ID)
    greeting = h.wait_for_ledger(stack, h.ids_greeting(c01))
    h.import_mails(stack, inbox, [cases_dir / "34-bounce-null-sender.eml",
                                  cases_dir / "35-precedence-list-mailman.eml"])
    # The out-of-office answer names the real greeting, as a client's would.
    ooo = (cases_dir / "36-ooo-auto-submitted.eml").read_bytes().replace(
        b"greeting.c01@example.com", greeting["rfc_message_id"].encode())
    ooo_path = tmp_path / "36.eml"
    ooo_path.write_bytes(ooo)
    h.import_mails(stack, inbox, [ooo_path])
    c35 = h.conversation_of(stack, inbox, "c35.paula.list@mail.example.org")
    assert h.conversation_of(stack, inbox, "c36.alice.oof@mail.example.org") == c01

    # Requests a buggy or older requester might still make: outbound refuses them itself.
    list_greeting = h.request_send(stack, inbox, c35, "greeting")
    ooo_note = h.request_send(stack, inbox, c01, "out_of_hours")

    assert greeting["status"] == "sent"
    assert greeting["recipients"] == ["alice@example.org"]
    for request_id in (list_greeting, ooo_note):
        ledger = h.wait_for_ledger(stack, request_id)
        assert ledger["status"] == "suppressed"
        assert ledger["error_class"] == "suppressed"
    assert "classified as list" in h.wait_for_ledger(stack, list_greeting)["smtp_response"]
    assert "classified as auto_reply" in h.wait_for_ledger(stack, ooo_note)["smtp_response"]

    with db.connect(stack["database_url"]) as conn:
        sent_to = [row["recipients"] for row in conn.execute(
            "SELECT recipients FROM send_ledger WHERE inbox_id = %s AND status = 'sent'",
            (inbox["id"],)).fetchall()]
    assert sent_to == [["alice@example.org"]]


def test_automatic_mail__capped_per_hour(stack: dict[str, Any], tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, greeting=False)
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
        "t5.cap@mail.example.org", "Opening hours?", sender="Carol <carol@example.org>"))])
    conversation_id = h.conversation_of(stack, inbox, "t5.cap@mail.example.org")

    requests = [h.request_send(stack, inbox, conversation_id, "out_of_hours") for _ in range(5)]
    states = [h.wait_for_ledger(stack, request_id)["status"] for request_id in requests]

    # The stack runs with the default cap of 3 automatic mails per recipient per hour.
    assert states.count("sent") == 3
    assert states.count("suppressed") == 2


def test_automatic_mail__pause_before_a_second_conversation(stack: dict[str, Any],
                                                           tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, greeting=False)
    h.import_mails(stack, inbox, [
        h.write_mail(tmp_path, "first.eml", customer_mail(
            "t5.first@mail.example.org", "Opening hours?", sender="Dan <dan@example.org>")),
        h.write_mail(tmp_path, "second.eml", customer_mail(
            "t5.second@mail.example.org", "Invoice copy", sender="Dan <dan@example.org>"))])
    first = h.conversation_of(stack, inbox, "t5.first@mail.example.org")
    second = h.conversation_of(stack, inbox, "t5.second@mail.example.org")

    greeting = h.wait_for_ledger(stack, h.request_send(stack, inbox, first, "greeting"))
    paused = h.wait_for_ledger(stack, h.request_send(stack, inbox, second, "greeting"))
    same_conversation = h.wait_for_ledger(stack, h.request_send(stack, inbox, first,
                                                                "out_of_hours"))

    assert greeting["status"] == "sent"
    assert paused["status"] == "suppressed"
    assert "another conversation less than 10 minutes ago" in paused["smtp_response"]
    # The pause is about fresh conversations; within one the caps decide.
    assert same_conversation["status"] == "sent"


# --- surveys -----------------------------------------------------------


def test_csat__once_per_conversation(stack: dict[str, Any], cases_dir: Path,
                                     tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, greeting=False, csat_enabled=True)
    h.import_mails(stack, inbox, [cases_dir / CASE_01])
    c01 = h.conversation_of(stack, inbox, C01_ID)
    reply = h.request_send(stack, inbox, c01, "agent", text="We are sending a new one.",
                           agent_id=h.agent_of(stack, inbox))
    h.wait_for_ledger(stack, reply)

    first = h.set_status(stack, inbox, c01, "resolved")
    survey = h.wait_for_ledger(stack, h.survey_request_id(c01))

    # Bob thanks everyone, which reopens C01; it is resolved again and the
    # event of the second resolution is delivered twice.
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "thanks.eml", customer_mail(
        "t6.bob.thanks@mail.example.org", "Re: Parcel 4471 arrived damaged",
        sender="Bob Example <bob@example.org>", body="thanks!",
        extra=f"In-Reply-To: <{C01_ID}>\nReferences: <{C01_ID}>\n"))])
    h.wait_for_row(stack, "SELECT 1 AS found FROM conversations WHERE id = %s AND status = 'open'",
                   (c01,))
    second = h.set_status(stack, inbox, c01, "resolved")
    h.publish(stack, "conversation.events", inbox["id"], "ConversationEvent", second)
    h.publish(stack, "conversation.events", inbox["id"], "ConversationEvent", first)
    marker = h.request_send(stack, inbox, c01, "agent", text="Marker after the resolutions.")
    h.wait_for_ledger(stack, marker)
    time.sleep(2)

    surveys = h.ledger_rows(stack, c01, "csat")
    assert len(surveys) == 1
    assert survey["status"] == "sent"
    assert survey["recipients"] == ["alice@example.org"]
    sent = h.sink_mail(stack, survey["rfc_message_id"])
    assert [a.addr_spec for a in sent["To"].addresses] == ["alice@example.org"]
    assert sent.get("Cc") is None
    assert sent["Auto-Submitted"] == "auto-generated"
    assert re.search(r"http://127\.0\.0\.1:\d+/csat/[A-Za-z0-9_-]{43}",
                     h.body(sent, "plain"))


def test_csat__off_sends_nothing(stack: dict[str, Any], tmp_path: Path) -> None:
    inbox = h.new_inbox(stack, greeting=False, csat_enabled=False)
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
        "t7.off@mail.example.org", "Question"))])
    conversation_id = h.conversation_of(stack, inbox, "t7.off@mail.example.org")

    h.set_status(stack, inbox, conversation_id, "resolved")
    marker = h.request_send(stack, inbox, conversation_id, "agent", text="Marker.")
    h.wait_for_ledger(stack, marker)
    time.sleep(2)

    assert h.ledger_rows(stack, conversation_id, "csat") == []


# --- an inbox's own SMTP server and its Sent folder ----------------------


def imap_client(stack: dict[str, Any], login: str, password: str) -> IMAPClient:
    context = ssl.create_default_context(cafile=stack["tls_ca_file"])
    # Dovecot notices a changed passwd-file at its next check, a moment after the write.
    deadline = time.monotonic() + 15
    while True:
        client = IMAPClient("127.0.0.1", port=int(stack["imaps"].rsplit(":", 1)[1]), ssl=True,
                            ssl_context=context, timeout=30)
        try:
            client.login(login, password)
            return client
        except LoginError:
            client.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_own_smtp__starttls_auth_and_sent_copy(stack: dict[str, Any], tmp_path: Path) -> None:
    cert, key = tls_files(stack)
    login, password = f"support-{time.time_ns()}@example.com", "imap secret"
    stackctl.local_stack(TEST_STATE_DIR, TEST_PORT_BASE).add_imap_user(login, password)

    with SmtpTestServer("starttls", cert_file=cert, key_file=key) as server:
        inbox = h.new_inbox(stack, greeting=False)
        h.set_smtp(stack, inbox, port=server.port, username=server.username,
                   password=server.password, encryption="starttls")
        h.set_imap(stack, inbox, login=login, password=password)
        h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
            "t8.own@mail.example.org", "Invoice copy"))])
        conversation_id = h.conversation_of(stack, inbox, "t8.own@mail.example.org")

        request_id = h.request_send(stack, inbox, conversation_id, "agent", text="Attached.")
        ledger = h.wait_for_ledger(stack, request_id)

    assert ledger["status"] == "sent"
    assert len(server.mails) == 1
    assert server.mails[0].over_tls
    assert server.mails[0].login == server.username
    assert server.mails[0].mail_from == "support@example.com"
    assert all(session.starttls_count == 1 for session in server.sessions)
    assert all(attempt.over_tls for session in server.sessions for attempt in session.auth)
    sent = h.parse(server.mails[0].data)
    assert sent.get("Reply-To") is None

    copy = h.wait_for_row(stack, "SELECT sent_copy FROM send_ledger WHERE request_id = %s "
                                 "AND sent_copy <> 'pending'", (request_id,))
    assert copy["sent_copy"] == "saved"
    client = imap_client(stack, login, password)
    try:
        client.select_folder("Sent", readonly=True)
        uids = client.search(["HEADER", "Message-ID", f"<{ledger['rfc_message_id']}>"])
        flags = client.get_flags(uids)
    finally:
        client.logout()
    assert len(uids) == 1
    assert b"\\Seen" in flags[uids[0]]


def test_own_smtp__usual_sent_folder_name(stack: dict[str, Any], tmp_path: Path) -> None:
    cert, key = tls_files(stack)
    login, password = f"sales-{time.time_ns()}@example.com", "imap secret"
    stackctl.local_stack(TEST_STATE_DIR, TEST_PORT_BASE).add_imap_user(login, password)
    client = imap_client(stack, login, password)
    client.create_folder("Sent Items")
    client.logout()

    with SmtpTestServer("implicit_tls", cert_file=cert, key_file=key) as server:
        inbox = h.new_inbox(stack, greeting=False, email_address="sales@example.com")
        h.set_smtp(stack, inbox, port=server.port, username=server.username,
                   password=server.password, encryption="tls")
        h.set_imap(stack, inbox, login=login, password=password)
        h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
            "t9.items@mail.example.org", "Quote").replace("support@example.com",
                                                          "sales@example.com"))])
        conversation_id = h.conversation_of(stack, inbox, "t9.items@mail.example.org")
        request_id = h.request_send(stack, inbox, conversation_id, "agent", text="Quote inside.")
        ledger = h.wait_for_ledger(stack, request_id)

    h.wait_for_row(stack, "SELECT 1 AS found FROM send_ledger WHERE request_id = %s "
                          "AND sent_copy = 'saved'", (request_id,))
    client = imap_client(stack, login, password)
    try:
        folders = [name for _flags, _delimiter, name in client.list_folders()]
        client.select_folder("Sent Items", readonly=True)
        uids = client.search(["HEADER", "Message-ID", f"<{ledger['rfc_message_id']}>"])
    finally:
        client.logout()
    assert len(server.mails) == 1
    assert server.mails[0].over_tls
    assert "Sent" not in folders
    assert len(uids) == 1


def test_own_smtp__relay_without_login(stack: dict[str, Any], tmp_path: Path) -> None:
    cert, key = tls_files(stack)
    with SmtpTestServer("relay", cert_file=cert, key_file=key) as server:
        inbox = h.new_inbox(stack, greeting=False)
        h.set_smtp(stack, inbox, port=server.port, username="", password="unused",
                   encryption="starttls", save_to_sent=False)
        h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
            "t10.relay@mail.example.org", "Hello"))])
        conversation_id = h.conversation_of(stack, inbox, "t10.relay@mail.example.org")
        ledger = h.wait_for_ledger(stack, h.request_send(stack, inbox, conversation_id, "agent",
                                                         text="Hi."))

    assert ledger["status"] == "sent"
    assert ledger["sent_copy"] is None
    assert [session.auth for session in server.sessions] == [[]]
    assert server.mails[0].over_tls


@pytest.mark.parametrize(("setup", "error_class", "code", "text"), [
    ({"password": "wrong password"}, "auth", 535, "authentication failed"),
    ({"data_reply": "550 5.1.1 <alice@example.org>: Recipient address rejected"},
     "rejected", 550, "Recipient address rejected"),
    ({"encryption": "tls"}, "tls", None, "expects STARTTLS"),
])
def test_own_smtp__permanent_failure(stack: dict[str, Any], tmp_path: Path, setup: dict[str, str],
                                     error_class: str, code: int | None, text: str) -> None:
    cert, key = tls_files(stack)
    with SmtpTestServer("starttls", cert_file=cert, key_file=key) as server:
        server.data_reply = setup.get("data_reply")
        inbox = h.new_inbox(stack, greeting=False)
        h.set_smtp(stack, inbox, port=server.port, username=server.username,
                   password=setup.get("password", server.password),
                   encryption=setup.get("encryption", "starttls"))
        h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", customer_mail(
            f"t11.{error_class}@mail.example.org", "Hello"))])
        conversation_id = h.conversation_of(stack, inbox, f"t11.{error_class}@mail.example.org")
        ledger = h.wait_for_ledger(stack, h.request_send(stack, inbox, conversation_id, "agent",
                                                         text="Hi."))

    assert ledger["status"] == "failed"
    assert ledger["error_class"] == error_class
    assert ledger["smtp_code"] == code
    assert text in ledger["smtp_response"]
    assert "wrong password" not in ledger["smtp_response"]
    assert server.mails == []



# --- the per-inbox rate limit ---------------------------------------------


async def test_rate_limit__waits_for_next_minute(stack: dict[str, Any]) -> None:
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    from services.outbound.limits import count_send, wait_for_send_slot

    inbox = h.new_inbox(stack, greeting=False)
    pauses: list[float] = []
    conn = await AsyncConnection.connect(stack["database_url"], row_factory=dict_row,
                                         autocommit=True)

    async def next_minute(seconds: float) -> None:
        # Stands in for the wait: the window empties as a new minute would.
        pauses.append(seconds)
        await conn.execute("DELETE FROM outbound_rate_windows WHERE inbox_id = %s", (inbox["id"],))

    try:
        below = await wait_for_send_slot(conn, inbox["id"], 2, sleep=next_minute)
        await count_send(conn, inbox["id"])
        await count_send(conn, inbox["id"])
        at_limit = await wait_for_send_slot(conn, inbox["id"], 2, sleep=next_minute)
    finally:
        await conn.close()

    assert below == 0.0
    assert len(pauses) == 1
    assert 0.0 < pauses[0] <= 60.05
    assert at_limit == pauses[0]
