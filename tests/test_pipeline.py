"""End to end through the real stack: SMTP in, Kafka, PostgreSQL, SMTP out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import (conversation_detail, conversations, create_inbox,
                                    import_and_wait, load_threads, message_id_of,
                                    sink_mails_referencing)

pytestmark = pytest.mark.stack


def test_corpus_import__conversations_equal_thread_ground_truth(
        stack: dict[str, Any], corpus_dir: Path) -> None:
    corpus = corpus_dir / "notmuch-default"
    threads = load_threads(corpus)
    inbox = create_inbox(stack, email_address="notmuch@example.com", agents=["Kim", "Lee"])

    import_and_wait(stack, inbox, [corpus])

    # Two files of the corpus are copies of one mail (same Message-ID), which
    # the pipeline stores once; both belong wherever that message is.
    files_of_id: dict[str, list[str]] = {}
    for name in threads:
        files_of_id.setdefault(message_id_of(corpus / name), []).append(name)
    actual = {frozenset(name for mid in conversation["message_ids"]
                        for name in files_of_id.get(mid, []))
              for conversation in conversations(stack, inbox)}
    expected_by_label: dict[str, set[str]] = {}
    for name, label in threads.items():
        expected_by_label.setdefault(label, set()).add(name)
    expected = {frozenset(names) for names in expected_by_label.values()}

    assert len(expected) == 24
    assert actual - {frozenset()} == expected


def test_corpus_import__reimport_changes_nothing(stack: dict[str, Any], corpus_dir: Path,
                                                 tmp_path: Path) -> None:
    corpus = corpus_dir / "notmuch-default"
    inbox = create_inbox(stack, email_address="again@example.com", agents=["Kim"])
    first = import_and_wait(stack, inbox, [corpus])
    before = conversations(stack, inbox)

    # Mail of one inbox is handled in order, so once a new mail sent after
    # the re-import is handled, every re-imported copy has been seen too.
    import_and_wait(stack, inbox, [corpus], expected_total=first["incoming"])
    sentinel = tmp_path / "sentinel.eml"
    sentinel.write_bytes(b"From: Nora <nora@example.org>\r\nTo: again@example.com\r\n"
                         b"Subject: One more\r\nMessage-ID: <sentinel.reimport@example.org>\r\n"
                         b"\r\nAre you still there?\r\n")
    after = import_and_wait(stack, inbox, [sentinel], expected_total=first["incoming"] + 1)

    assert after["incoming"] == first["incoming"] + 1
    assert [c for c in conversations(stack, inbox) if c["subject"] != "One more"] == before


def test_cc_and_outlook_replies__one_conversation_one_greeting(
        stack: dict[str, Any], cases_dir: Path, tmp_path: Path) -> None:
    inbox = create_inbox(stack, email_address="support@example.com",
                         agents=["Kim", "Lee", "Sato"])

    # The first mail alone, then both replies: the order customers produce them in.
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(cases_dir / "01-new-inquiry-with-cc.eml", first)
    handled = import_and_wait(stack, inbox, [first])
    replies = tmp_path / "replies"
    replies.mkdir()
    shutil.copy(cases_dir / "02-cc-reply-all-before-agent.eml", replies)
    shutil.copy(cases_dir / "03-reply-to-outlook-sent-reply.eml", replies)
    import_and_wait(stack, inbox, [replies], expected_total=handled["incoming"] + 2,
                    concurrency=1)

    [conversation] = conversations(stack, inbox)
    assert conversation["subject"] == "Parcel 4471 arrived damaged"
    assert conversation["contact"] == "alice@example.org"
    assert conversation["assignee"] in ("Kim", "Lee", "Sato")
    assert conversation["greetings_sent"] == 1

    detail = conversation_detail(stack, conversation["id"])
    incoming = [m for m in detail["messages"] if m["direction"] == "incoming"]
    assert [m["message_id"] for m in incoming] == [
        "c01.parcel4471@mail.example.org", "c02.bob.reply@mail.example.org",
        "c03.alice.second@mail.example.org"]
    assert incoming[0]["cc"] == ["Bob Example <bob@example.org>"]

    # Other tests import the same first mail into inboxes of their own, so
    # the sink is searched for this conversation's greeting by its Message-ID.
    [greeting_id] = [m["message_id"] for m in detail["messages"] if m["kind"] == "greeting"]
    [greeting] = [mail for mail in sink_mails_referencing(stack, "c01.parcel4471@mail.example.org")
                  if str(mail.message["Message-ID"]) == f"<{greeting_id}>"]
    assert greeting.rcpt_tos == ["alice@example.org"]
    assert str(greeting.message["To"]).endswith("<alice@example.org>")
    assert str(greeting.message["In-Reply-To"]) == "<c01.parcel4471@mail.example.org>"
    assert greeting.message["Auto-Submitted"] == "auto-replied"
    assert str(greeting.message["Subject"]) == "Re: Parcel 4471 arrived damaged"
