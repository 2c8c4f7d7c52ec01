"""Loop protection rules: which recipients and answered mails block automatic mail."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.outbound.loops import automatic_mail_block, read_headers, unattended_address_reason

CUSTOMER_MAIL = (b"From: Alice Example <alice@example.org>\r\nTo: support@acme.example\r\n"
                 b"Subject: Parcel damaged\r\nMessage-ID: <a1@mail.example.org>\r\n\r\n"
                 b"Auto-Submitted: auto-replied\r\n")


@pytest.mark.parametrize("address", [
    "noreply@shop.example.com", "no-reply@shop.example.com", "do_not_reply@shop.example.com",
    "MAILER-DAEMON@mx.example.org", "postmaster@example.org", "bounces+1234@mail.example.com",
    "announce-bounces@lists.example.org", "announce-request@example.org",
    "owner-announce@example.org", "paula@lists.example.org", "support-team@groups.example.com",
    "team@googlegroups.com", "reply+abc@inbound.messagehub.localhost",
])
def test_unattended_address__blocked(address: str) -> None:
    assert unattended_address_reason(address, own_domains=["inbound.messagehub.localhost"])


@pytest.mark.parametrize("address", [
    "alice@example.org", "noreen@example.org", "bouncer@example.org",
    "taro.yamada@example.jp", "replyto.alice@example.org",
])
def test_person_address__allowed(address: str) -> None:
    assert unattended_address_reason(address) is None


def test_customer_mail__allowed() -> None:
    # The body line that looks like a header must not count.
    headers = read_headers(CUSTOMER_MAIL)

    assert automatic_mail_block("alice@example.org", answered_kind="customer",
                                answered_headers=headers) is None


@pytest.mark.parametrize("kind", ["auto_reply", "bounce", "list", "forwarding_confirmation"])
def test_automated_kind__blocked(kind: str) -> None:
    reason = automatic_mail_block("alice@example.org", answered_kind=kind, answered_headers=None)
    assert reason == f"the mail it answers is classified as {kind}"


@pytest.mark.parametrize(("header", "expected"), [
    ("Auto-Submitted: auto-generated", "Auto-Submitted"),
    ("Precedence: bulk", "Precedence: bulk"),
    ("Precedence: junk (old style)", "Precedence: junk"),
    ("List-Id: Announcements <announce.lists.example.org>", "list-id header"),
    ("X-Google-Group-Id: 12345", "x-google-group-id header"),
    ("X-Autoreply: yes", "x-autoreply header"),
    ("X-Auto-Response-Suppress: DR, OOF", "X-Auto-Response-Suppress"),
    ("Return-Path: <>", "null Return-Path"),
])
def test_automated_header__blocked(header: str, expected: str) -> None:
    raw = f"From: alice@example.org\r\n{header}\r\nSubject: x\r\n\r\nbody\r\n".encode()

    reason = automatic_mail_block("alice@example.org", answered_kind="customer",
                                  answered_headers=read_headers(raw))

    assert reason is not None
    assert expected in reason


def test_auto_submitted_no__allowed() -> None:
    raw = b"From: alice@example.org\r\nAuto-Submitted: no\r\n\r\nbody\r\n"

    assert automatic_mail_block("alice@example.org", answered_kind="customer",
                                answered_headers=read_headers(raw)) is None


def test_survey__checks_address_only() -> None:
    assert automatic_mail_block("alice@example.org", answered_kind=None,
                                answered_headers=None) is None
    assert automatic_mail_block("noreply@example.org", answered_kind=None,
                                answered_headers=None) is not None


@pytest.mark.parametrize(("case_file", "recipient", "expected"), [
    ("34-bounce-null-sender.eml", "MAILER-DAEMON@mx.example.org", "no-reply, bounce"),
    ("35-precedence-list-mailman.eml", "paula@example.org", "Precedence: list"),
    ("36-ooo-auto-submitted.eml", "alice@example.org", "Auto-Submitted: auto-replied"),
])
def test_reported_loops__blocked(cases_dir: Path, case_file: str, recipient: str,
                                 expected: str) -> None:
    raw = (cases_dir / case_file).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    reason = automatic_mail_block(recipient, answered_kind="customer",
                                  answered_headers=read_headers(raw))

    assert reason is not None
    assert expected in reason
