"""Reported helpdesk faults through the real stack, as the operator sees them.

Each mail goes in through the forwarding receiver, over Kafka to the
router, into PostgreSQL; the checks read what ``messagehub conversation
show --json`` returns (``inboxes.show_conversation``) and, for what that
view does not show, the router's rows. The last test replays the topics
into a fresh database and compares the router's tables with these.
"""

from __future__ import annotations

import re
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from messagehub import codec, db, inboxes, topics
from messagehub.demo import pipeline_progress, wait_until_handled
from messagehub.importer import ForwardingClient, SourceMail
from messagehub.localstack.smtp_sink import read_sink
from messagehub.settings import Settings
from services.router import replay, thread_eval
from services.router.stage import RouterStage
from tests.pipeline_helpers import conversation_detail, conversations, create_inbox

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]

pytestmark = pytest.mark.stack


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def deliver(stack: dict[str, Any], inbox: dict[str, Any], *raws: bytes) -> dict[str, int]:
    """Send ``raws`` one after the other to the inbox; wait until all are handled."""
    with db.connect(stack["database_url"]) as conn:
        before = pipeline_progress(conn, inbox["id"])
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    client = ForwardingClient(host, int(port), inbox["forwarding_address"])
    for number, raw in enumerate(raws):
        client.send(SourceMail(origin=f"mail-{number}", raw=raw))
    return wait_until_handled(stack["database_url"], inbox["id"],
                              before["incoming"] + before["notices"] + len(raws),
                              timeout_seconds=120)


def case(cases_dir: Path, name: str) -> bytes:
    return (cases_dir / name).read_bytes()


def scenario_message(cases_dir: Path, name: str, label: str) -> bytes:
    """Return one message of a scenario file."""
    text = (cases_dir / name).read_text(encoding="utf-8")
    match = re.search(rf"^----- BEGIN MESSAGE {label}\b[^\n]*\n(.*?)^----- END MESSAGE {label} -----",
                      text, re.S | re.M)
    assert match is not None, f"message {label} not found in {name}"
    return match.group(1).encode("utf-8")


def only_conversation(stack: dict[str, Any], inbox: dict[str, Any]) -> dict[str, Any]:
    [conversation] = conversations(stack, inbox)
    return conversation_detail(stack, conversation["id"])


def query(stack: dict[str, Any], sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with db.connect(stack["database_url"]) as conn:
        return conn.execute(sql, params).fetchall()


def stored_bytes(stack: dict[str, Any], sha256: str) -> bytes:
    [row] = query(stack, "SELECT content FROM raw_mails WHERE sha256 = %s", (sha256,))
    return bytes(row["content"])


# Inboxes this module created; the replay test compares their rows.
CREATED_INBOXES: list[str] = []


def new_inbox(stack: dict[str, Any], email: str = "support@example.com") -> dict[str, Any]:
    inbox = create_inbox(stack, email_address=email, agents=["Kim", "Lee", "Sato"])
    CREATED_INBOXES.append(inbox["id"])
    return inbox


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

DECODING_CASES = [
    ("17-iso2022jp-missing-charset.eml", "見積書の数量変更について", "鈴木 一郎 <suzuki@example.jp>",
     "山田様\n\nいつもお世話になっております。\n先日お送りした見積書について、数量を10台に変更してください。\n\n鈴木\n"),
    ("18-iso2022jp-nec-special-chars.eml", "会議室①の予約について（№3）", "髙橋 花子 <takahashi@example.jp>",
     "鈴木様\n\n会議室①と会議室②を、来週月曜日の10時から予約しました。\n"
     "参加者は㈱サンプル商事の3名です（受付番号№3）。\n\n髙橋\n"),
    ("20-iso2022jp-split-escape-sequence.eml", "【重要】定期メンテナンス作業のお知らせ（第2回）",
     "Example IT Operations <info@example.jp>",
     "3月25日（月）22時から翌2時まで、定期メンテナンスを行います。\n"),
    ("22-sjis-label-cp932-chars.eml", "①番窓口の受付時間について", "Takahashi Example <takahashi@example.jp>",
     "お世話になります。㈱サンプル商事の髙橋です。\n①番窓口と②番窓口の土曜日の受付時間を教えてください。\n"),
    ("25-raw-utf8-headers.eml", "請求書の再発行について", "山田 太郎 <taro.yamada@example.jp>",
     "請求書を紛失しました。再発行をお願いできますか。\n"),
]


@pytest.mark.parametrize(("name", "subject", "sender", "body"), DECODING_CASES,
                         ids=[name[:2] for name, *_ in DECODING_CASES])
def test_japanese_mail__decoded_in_conversation(stack: dict[str, Any], cases_dir: Path,
                                                name: str, subject: str, sender: str,
                                                body: str) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, name))

    conversation = only_conversation(stack, inbox)
    [message] = conversation["messages"][:1]
    assert conversation["subject"] == subject
    assert message["subject"] == subject
    assert message["from"] == sender
    assert message["text"] == body
    assert message["kind"] == "customer"
    assert conversation["contact"] == sender.rsplit("<", 1)[1].rstrip(">")


def test_exchange_bracket_id__stored_exactly_and_threads(stack: dict[str, Any],
                                                         cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    exchange_id = "[7c1e0f3a9b2d4e6f8a1b3c5d7e9f0a2b-QkFTRTY0U0FNUExF]@mail.example.org"
    follow_up = (b"From: Erin Example <erin@example.org>\r\nTo: Support <support@example.com>\r\n"
                 b"Subject: Re: Cannot log in after password reset\r\n"
                 b"Message-ID: <c06.erin.second@mail.example.org>\r\n"
                 b"In-Reply-To: <" + exchange_id.encode() + b">\r\n\r\nStill locked.\r\n")

    deliver(stack, inbox, case(cases_dir, "06-exchange-bracket-message-id.eml"))
    deliver(stack, inbox, follow_up)

    conversation = only_conversation(stack, inbox)
    incoming = [m for m in conversation["messages"] if m["direction"] == "incoming"]
    assert [m["message_id"] for m in incoming] == [exchange_id, "c06.erin.second@mail.example.org"]
    assert conversation["subject"] == "Cannot log in after password reset"


# ---------------------------------------------------------------------------
# Attachments
# ---------------------------------------------------------------------------


def test_filenames__rfc2231_and_2047_in_order(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "27-rfc2231-and-2047-filenames.eml"))

    [message] = only_conversation(stack, inbox)["messages"][:1]
    assert [a["name"] for a in message["attachments"]] == [
        "見積書①_2024年度.pdf", "納品書.xlsx", "請求書_3月分.pdf"]
    assert all(not a["inline"] for a in message["attachments"])

    [row] = query(stack, "SELECT attachments FROM messages WHERE rfc_message_id = %s "
                         "AND inbox_id = %s", ("c27.mori.files@mail.example.jp", inbox["id"]))
    for shown, stored in zip(message["attachments"], row["attachments"]):
        data = stored_bytes(stack, stored["sha256"])
        assert len(data) == stored["size"] == shown["size"]
        assert data.startswith((b"%PDF-", b"PK\x03\x04"))


def test_inline_cid_image__stored_and_src_rewritten(stack: dict[str, Any],
                                                    cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "28-inline-cid-no-disposition.eml"))

    [message] = only_conversation(stack, inbox)["messages"][:1]
    assert [(a["name"], a["inline"]) for a in message["attachments"]] == [("image001.png", True)]
    assert [a for a in message["attachments"] if not a["inline"]] == []

    [row] = query(stack, "SELECT id, html_body, attachments FROM messages WHERE inbox_id = %s "
                         "AND direction = 'incoming'", (inbox["id"],))
    [image] = row["attachments"]
    assert image["content_id"] == "image001.png@01DA7B2C.5E6F7A80"
    assert f'src="/v1/messages/{row["id"]}/attachments/{image["sha256"]}"' in row["html_body"]
    assert "cid:" not in row["html_body"]
    assert stored_bytes(stack, image["sha256"]).startswith(b"\x89PNG\r\n\x1a\n")


def test_forwarded_message__kept_whole_as_eml(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "30-forward-as-attachment-rfc822.eml"))

    conversation = only_conversation(stack, inbox)
    [message] = conversation["messages"][:1]
    assert conversation["contact"] == "alice@example.org"
    assert message["text"] == ("The shop confirmation is attached; the item count is wrong "
                               "(should be 2).\n")
    [attachment] = message["attachments"]
    assert attachment["name"] == "Your order 5531.eml"
    assert attachment["content_type"] == "message/rfc822"

    [row] = query(stack, "SELECT attachments FROM messages WHERE inbox_id = %s "
                         "AND direction = 'incoming'", (inbox["id"],))
    inner = stored_bytes(stack, row["attachments"][0]["sha256"])
    assert inner.startswith(b"Date: Thu, 21 Mar 2024 18:00:00 +0100")
    assert b"Thank you for your order 5531: 3 x desk lamp." in inner
    assert attachment["size"] == len(inner)

    contacts = query(stack, "SELECT email FROM contacts WHERE inbox_id = %s", (inbox["id"],))
    assert [c["email"] for c in contacts] == ["alice@example.org"]
    keys = query(stack, "SELECT message_id FROM thread_keys WHERE inbox_id = %s", (inbox["id"],))
    assert "order5531.confirm@shop.example.com" not in [k["message_id"] for k in keys]


def test_separately_padded_base64__decoded_whole(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "31-base64-concatenated-chunks.eml"))

    [message] = only_conversation(stack, inbox)["messages"][:1]
    [attachment] = message["attachments"]
    assert attachment["name"] == "order-7311.csv"
    assert attachment["size"] == 53

    [row] = query(stack, "SELECT attachments FROM messages WHERE inbox_id = %s "
                         "AND direction = 'incoming'", (inbox["id"],))
    assert stored_bytes(stack, row["attachments"][0]["sha256"]) == (
        b"order_id,item,qty\n7311,desk lamp,2\n7311,lamp shade,2\n")


# ---------------------------------------------------------------------------
# Threading and duplicates
# ---------------------------------------------------------------------------


def test_shared_unknown_root__joins_two_replies(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    scenario = "04-common-ancestor-references.txt"

    deliver(stack, inbox, scenario_message(cases_dir, scenario, "M2"))
    deliver(stack, inbox, scenario_message(cases_dir, scenario, "M3"))

    [conversation] = conversations(stack, inbox)
    assert conversation["contact"] == "dave@example.org"
    assert conversation["message_ids"][0] == "x04.dave@mail.example.org"
    assert "x04.carol@mail.example.org" in conversation["message_ids"]
    assert conversation["greetings_sent"] == 1
    keys = query(stack, "SELECT conversation_id FROM thread_keys WHERE inbox_id = %s "
                        "AND message_id = %s", (inbox["id"], "x04.root@mail.example.org"))
    assert [str(k["conversation_id"]) for k in keys] == [conversation["id"]]


def test_same_mail_two_inboxes__one_conversation_each(stack: dict[str, Any],
                                                      cases_dir: Path) -> None:
    support = new_inbox(stack, "support@example.com")
    sales = new_inbox(stack, "sales@example.com")
    mail = case(cases_dir, "09-same-mail-two-inboxes.eml")

    deliver(stack, support, mail)
    deliver(stack, sales, mail)
    before = conversations(stack, support)

    # A second copy, then a sentinel: once the sentinel is handled, so is the copy.
    sentinel = (b"From: Nora <nora@example.org>\r\nTo: support@example.com\r\n"
                b"Subject: Sentinel\r\nMessage-ID: <c09.sentinel@example.org>\r\n\r\nHi\r\n")
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    ForwardingClient(host, int(port), support["forwarding_address"]).send(
        SourceMail(origin="copy", raw=mail))
    deliver(stack, support, sentinel)

    for inbox in (support, sales):
        [conversation] = [c for c in conversations(stack, inbox) if c["subject"] != "Sentinel"]
        assert conversation["message_ids"][0] == "c09.alice.twoinboxes@mail.example.org"
        assert conversation["messages"] - conversation["greetings_sent"] == 1
        assert conversation["greetings_sent"] <= 1
    assert [c for c in conversations(stack, support) if c["subject"] != "Sentinel"] == before


# ---------------------------------------------------------------------------
# Bounces, automatic replies, lists and notices
# ---------------------------------------------------------------------------


def test_unmatched_bounce__stored_as_notice(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "26-bounce-inner-multipart-no-boundary.eml"))

    assert conversations(stack, inbox) == []
    [notice] = query(stack, "SELECT kind, detail FROM notices WHERE inbox_id = %s", (inbox["id"],))
    assert notice["kind"] == "bounce"
    bounce = notice["detail"]["bounce"]
    assert bounce["failed_recipients"] == ["rita@nohost.example.org"]
    assert bounce["status"] == "5.1.2"
    assert bounce["original_message_id"] == "conv-c26.reply-1@example.com"
    assert bounce["original_in_reply_to"] == "c26.rita.orig@mail.example.org"
    assert query(stack, "SELECT email FROM contacts WHERE inbox_id = %s", (inbox["id"],)) == []


def test_bounce_and_out_of_office__attached_without_mail(stack: dict[str, Any],
                                                         cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    # Other tests of the session deliver this first mail too and look for its
    # greeting in the sink, so this test gives it an id of its own.
    first_id = b"c01.parcel4471@mail.example.org"
    own_id = f"c01.parcel4471.{uuid.uuid4().hex[:8]}@mail.example.org".encode()
    deliver(stack, inbox, case(cases_dir, "01-new-inquiry-with-cc.eml").replace(first_id, own_id))
    c01 = only_conversation(stack, inbox)
    [greeting] = [m for m in c01["messages"] if m["kind"] == "greeting"]

    # The files use placeholders for our reply and our greeting; use the real greeting's id.
    ours = f"<{greeting['message_id']}>".encode()
    bounce = case(cases_dir, "34-bounce-null-sender.eml").replace(
        b"<conv-c01.reply-1@example.com>", ours).replace(first_id, own_id)
    out_of_office = case(cases_dir, "36-ooo-auto-submitted.eml").replace(
        b"<greeting.c01@example.com>", ours)
    deliver(stack, inbox, bounce, out_of_office)

    after = only_conversation(stack, inbox)
    kinds = [(m["kind"], m["message_id"]) for m in after["messages"]]
    assert ("bounce", "c34.dsn.20240305143110@mx.example.org") in kinds
    assert ("auto_reply", "c36.alice.oof@mail.example.org") in kinds
    assert after["status"] == c01["status"] == "open"
    assert [m["kind"] for m in after["messages"]].count("greeting") == 1

    [bounce_row] = query(stack, "SELECT bounce, threaded_by FROM messages WHERE inbox_id = %s "
                                "AND kind = 'bounce'", (inbox["id"],))
    assert bounce_row["bounce"]["failed_recipients"] == ["alice@example.org"]
    assert bounce_row["bounce"]["status"] == "5.2.2"
    [ooo_row] = query(stack, "SELECT auto_submitted FROM messages WHERE inbox_id = %s "
                             "AND kind = 'auto_reply'", (inbox["id"],))
    assert ooo_row["auto_submitted"] is True
    contacts = query(stack, "SELECT email FROM contacts WHERE inbox_id = %s", (inbox["id"],))
    assert sorted(c["email"] for c in contacts) == ["alice@example.org"]
    to_daemon = [m for m in read_sink(Path(stack["sink_dir"]))
                 if any("mailer-daemon" in r.lower() for r in m.rcpt_tos)]
    assert to_daemon == []


def test_list_mail__conversation_without_greeting(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "35-precedence-list-mailman.eml"))

    [conversation] = conversations(stack, inbox)
    assert conversation["greetings_sent"] == 0
    [message] = conversation_detail(stack, conversation["id"])["messages"]
    assert message["kind"] == "list"
    answers = [m for m in read_sink(Path(stack["sink_dir"]))
               if "c35.paula.list@mail.example.org" in str(m.message.get("In-Reply-To", ""))]
    assert answers == []


def test_forwarding_confirmation__notice_with_code(stack: dict[str, Any], cases_dir: Path) -> None:
    inbox = new_inbox(stack)
    deliver(stack, inbox, case(cases_dir, "41-gmail-forwarding-confirmation.eml"))

    assert conversations(stack, inbox) == []
    [notice] = query(stack, "SELECT kind, detail FROM notices WHERE inbox_id = %s", (inbox["id"],))
    assert notice["kind"] == "forwarding_confirmation"
    assert notice["detail"]["forwarding_confirmation"]["code"] == "482913775"
    assert notice["detail"]["forwarding_confirmation"]["link"] == (
        "https://mail-settings.google.example.com/mail/vf-EXAMPLETOKEN-482913775")


# ---------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------


def test_bad_records__dead_lettered_and_partition_moves_on(stack: dict[str, Any]) -> None:
    inbox = new_inbox(stack)
    key = inbox["id"].encode()
    missing = codec.encode("MailReceived", {
        "event_id": f"test-missing-{uuid.uuid4()}", "occurred_at": datetime.now(timezone.utc),
        "inbox_id": inbox["id"], "schema_version": 1, "raw_sha256": "f" * 64,
        "raw_size": 10, "source": "smtp", "envelope_sender": None, "envelope_recipients": [],
        "message_id": None, "subject": None, "from_address": None, "imap_folder": None,
        "imap_uidvalidity": None, "imap_uid": None, "imap_internal_date": None})
    producer = KafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    try:
        sent = [producer.send(topics.MAIL_RECEIVED, key=key, value=value).get(timeout=30)
                for value in (b"not an avro record", missing)]
    finally:
        producer.close()

    good = (b"From: Nora <nora@example.org>\r\nTo: support@example.com\r\n"
            b"Subject: After the bad ones\r\nMessage-ID: <dlq.after@example.org>\r\n\r\nHi\r\n")
    deliver(stack, inbox, good)

    assert [c["subject"] for c in conversations(stack, inbox)] == ["After the bad ones"]
    letters = _dead_letters(stack, {(m.partition, m.offset) for m in sent})
    assert sorted(letter["error_class"] for letter in letters) == [
        "RawMailMissing", "UndecodableRecord"]
    [raw_missing] = [letter for letter in letters if letter["error_class"] == "RawMailMissing"]
    assert "f" * 64 in raw_missing["reason"]
    assert raw_missing["inbox_id"] == inbox["id"]
    assert raw_missing["original_value"] == missing


def _dead_letters(stack: dict[str, Any], wanted: set[tuple[int, int]]) -> list[dict[str, Any]]:
    """Read router.dead-letter until the letters for ``wanted`` coordinates are in."""
    consumer = KafkaConsumer(bootstrap_servers=stack["kafka_bootstrap"], group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        partitions = [TopicPartition(topics.ROUTER_DEAD_LETTER, p)
                      for p in consumer.partitions_for_topic(topics.ROUTER_DEAD_LETTER)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in consumer:
                _name, letter = codec.decode(message.value)
                coordinates = (letter["source_partition"], letter["source_offset"])
                if letter["source_topic"] == topics.MAIL_RECEIVED and coordinates in wanted:
                    found.append(letter)
    finally:
        consumer.close()
    return found


# ---------------------------------------------------------------------------
# Threading quality and replay
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", ["notmuch-default", "mail-thread-testboxes"])
def test_thread_eval__f1_at_least_099(stack: dict[str, Any], corpus_dir: Path,
                                      corpus: str) -> None:
    report = thread_eval.run(corpus_dir / corpus, stack)
    with db.connect(stack["database_url"]) as conn:
        CREATED_INBOXES.append(inboxes.find_inbox(conn, report.inbox)["id"])

    assert report.pipeline.f1 >= 0.99
    assert report.pipeline.precision == 1.0
    assert report.pipeline.f1 >= report.baseline.f1


def test_replay__rebuilds_equal_router_tables(stack: dict[str, Any]) -> None:
    # Every mail above was handled before its test ended, so nothing of
    # these inboxes is in flight when the topics are read.
    assert CREATED_INBOXES, "run the whole module: the replay compares the inboxes it created"
    target = replay.create_local_database(stack, f"replay_{uuid.uuid4().hex[:8]}")
    secret_key = (Path(stack["state_dir"]) / "secret_key").read_text().strip()
    stage = RouterStage(secret_key=secret_key, inbound_domain=stack["inbound_domain"],
                        message_id_domain=Settings().message_id_domain)

    result = replay.replay(source_url=stack["database_url"], target_url=target,
                           bootstrap=stack["kafka_bootstrap"], stage=stage)

    original = replay.snapshot(stack["database_url"], CREATED_INBOXES)
    rebuilt = replay.snapshot(target, CREATED_INBOXES)
    assert result.applied > 0
    assert replay.differences(original, rebuilt) == {}
    assert len(rebuilt["messages"]) == len(original["messages"])
    assert len(rebuilt["notices"]) == len(original["notices"]) >= 2
    assert len({m["inbox_id"] for m in rebuilt["messages"]}) >= len(CREATED_INBOXES) - 3
    with db.connect(target) as conn:
        assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone() == {"n": 0}
