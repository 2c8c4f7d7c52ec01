"""Unit tests of ingest's pure parts: routing, the sync's plans, summaries, progress."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient import exceptions as imap_errors
from imapclient import imap_utf7

from services.ingest.imap import plan
from services.ingest.imap.connection import ImapAccount, ImapSyncError, classify
from services.ingest.imap.folder_sync import SyncOptions
from services.ingest.imap.history import format_progress
from services.ingest.intake import ImapOrigin, mail_received
from services.ingest.routing import header_addresses, normalize_address
from services.ingest.summary import header_block, summarize


# --- routing ----------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("Support-Fwd-7F3A@Inbound.Example.com", "support-fwd-7f3a@inbound.example.com"),
    ("<support-fwd-7f3a@inbound.example.com>", "support-fwd-7f3a@inbound.example.com"),
    ("support-fwd-7f3a+gmail@inbound.example.com", "support-fwd-7f3a@inbound.example.com"),
    ("+only@inbound.example.com", "+only@inbound.example.com"),
    ("no-at-sign", "no-at-sign"),
])
def test_normalize_address(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


def test_header_addresses__forwarded_mail(cases_dir: Path) -> None:
    raw = (cases_dir / "42-gmail-x-forwarded-to.eml").read_bytes()

    addresses = header_addresses(raw)

    assert addresses[0] == "support-fwd-7f3a@inbound.example.com"
    assert "helpdesk.legacy@legacy.example.org" in addresses
    assert addresses.count("support-fwd-7f3a@inbound.example.com") == 1


def test_header_addresses__most_specific_first() -> None:
    raw = (b"To: Sales <sales@example.com>\r\nCc: a@example.org, \"B, b\" <b@example.org>\r\n"
           b"X-Original-To: orig@inbound.example.com\r\n"
           b"Delivered-To: delivered@inbound.example.com\r\n\r\nbody\r\n")

    assert header_addresses(raw) == ["delivered@inbound.example.com",
                                     "orig@inbound.example.com", "sales@example.com",
                                     "a@example.org", "b@example.org"]


def test_header_addresses__none() -> None:
    assert header_addresses(b"Subject: nothing\r\n\r\nbody\r\n") == []


# --- the sync's plans ---------------------------------------------------------

def test_plan_batches__count_and_bytes_bounded() -> None:
    sizes = [(1, 10), (2, 10), (3, 10), (4, 80), (5, 500), (6, 5)]

    assert plan.plan_batches(sizes, max_count=2, max_bytes=100) == [[1, 2], [3, 4], [5], [6]]


def test_plan_batches__empty() -> None:
    assert plan.plan_batches([], max_count=10, max_bytes=10) == []


@pytest.mark.parametrize("after_uid, uidnext, window, expected", [
    (0, 1, 500, None),
    (0, 2, 500, (1, 1)),
    (0, 1000, 500, (1, 500)),
    (500, 1000, 500, (501, 999)),
    (999, 1000, 500, None),
    (150000, 150002, 500, (150001, 150001)),
])
def test_uid_window(after_uid: int, uidnext: int, window: int,
                    expected: tuple[int, int] | None) -> None:
    assert plan.uid_window(after_uid, uidnext, window) == expected


def test_first_at_or_after__reads_log2_positions() -> None:
    uids = [u for u in range(1, 300_000, 2)]
    reads: list[int] = []

    def uid_at(position: int) -> int:
        reads.append(position)
        return uids[position - 1]

    position = plan.first_at_or_after(len(uids), uid_at, 150_001)

    assert position is not None
    assert uids[position - 1] == 150_001
    assert len(reads) <= 18


def test_first_at_or_after__none_and_all() -> None:
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    dates = [start + timedelta(days=n) for n in range(10)]

    assert plan.first_at_or_after(10, lambda p: dates[p - 1], start + timedelta(days=20)) is None
    assert plan.first_at_or_after(10, lambda p: dates[p - 1], start) == 1
    assert plan.first_at_or_after(10, lambda p: dates[p - 1], start + timedelta(hours=36)) == 3
    assert plan.first_at_or_after(0, lambda p: dates[p - 1], start) is None


def test_first_at_or_after__vanished_message_counts_below() -> None:
    keys: list[int | None] = [1, 2, None, 4, 5]

    assert plan.first_at_or_after(5, lambda p: keys[p - 1], 3) == 4


def test_reconnect_delay__doubles_and_caps() -> None:
    delays = [plan.reconnect_delay("connect", n, first_seconds=1, max_seconds=300,
                                   slow_first_seconds=300) for n in range(1, 12)]

    assert 1 <= delays[0] <= 1.1
    assert 2 <= delays[1] <= 2.2
    assert 300 <= delays[-1] <= 330


def test_reconnect_delay__auth_starts_slow_and_caps_at_an_hour() -> None:
    first = plan.reconnect_delay("auth", 1, first_seconds=1, max_seconds=300,
                                 slow_first_seconds=300)
    late = plan.reconnect_delay("tls", 20, first_seconds=1, max_seconds=300,
                                slow_first_seconds=300)

    assert 300 <= first <= 330
    assert 3600 <= late <= 3960


def test_retry_delay() -> None:
    assert [plan.retry_delay(n, 60) for n in (1, 2, 3)] == [60, 120, 240]


def test_idle_responses() -> None:
    assert plan.is_new_mail((4, b"EXISTS"))
    assert not plan.is_new_mail((4, b"EXPUNGE"))
    assert not plan.is_new_mail((b"OK", b"Still here"))
    assert plan.is_bye((b"BYE", b"Server shutting down"))
    assert not plan.is_bye((1, b"EXISTS"))


def test_sync_options__idle_bounded_by_29_minutes() -> None:
    with pytest.raises(ValueError, match="29 minutes"):
        SyncOptions(idle_reissue_seconds=30 * 60)


# --- accounts and errors ----------------------------------------------------

def _account(**changes: object) -> ImapAccount:
    values: dict[str, object] = {"inbox_id": "inbox-1", "host": "imap.example.com", "port": 993,
                                 "username": "support@example.com", "password": "s3cret-Pw"}
    values.update(changes)
    return ImapAccount(**values)  # type: ignore[arg-type]


def test_account__password_not_in_repr() -> None:
    assert "s3cret-Pw" not in repr(_account())


def test_account__invalid_security() -> None:
    with pytest.raises(ValueError, match="use tls, starttls or none"):
        _account(security="ssl3")


def test_account__move_needs_folder() -> None:
    with pytest.raises(ValueError, match="needs a folder"):
        _account(after_import="move")


def test_account__read_only_unless_told() -> None:
    assert _account().read_only
    assert not _account(after_import="mark_read").read_only


def test_classify__login_failure_hides_echoed_password() -> None:
    error = classify(imap_errors.LoginError("[AUTHENTICATIONFAILED] bad s3cret-Pw"), _account())

    assert error.error_class == "auth"
    assert "s3cret-Pw" not in str(error)
    assert "support@example.com" in str(error)
    assert "app password" in str(error)


@pytest.mark.parametrize("exc, error_class", [
    (TimeoutError(), "timeout"),
    (ConnectionRefusedError(111, "Connection refused"), "connect"),
    (imap_errors.IMAPClientAbortError("socket error: EOF"), "connect"),
    (imap_errors.CapabilityError("Server does not support STARTTLS"), "tls"),
    (imap_errors.ProtocolError("unexpected token"), "protocol"),
    (ImapSyncError("folder", "SELECT failed"), "folder"),
])
def test_classify(exc: BaseException, error_class: str) -> None:
    assert classify(exc, _account()).error_class == error_class


# --- folder names ----------------------------------------------------------

FOLDERS = {
    b"INBOX": "INBOX",
    b"Entw&APw-rfe": "Entwürfe",
    b"&VU8wRFQIMI8wWw-": "問い合わせ",
    b"&VU8wRFQIMI8wWw-/&kc2JgQ-": "問い合わせ/重要",
    b"R&-D": "R&D",
    b"&iYt6TQ- &- &istsQg-": "見積 & 請求",
    b"R&AOk-ponses 1200+1201": "Réponses 1200+1201",
}


@pytest.mark.parametrize("wire, name", FOLDERS.items())
def test_folder_name__modified_utf7_round_trip(wire: bytes, name: str) -> None:
    assert imap_utf7.decode(wire) == name
    assert imap_utf7.encode(name) == wire
    assert imap_utf7.decode(imap_utf7.encode(name)) == name


# --- summaries and records ---------------------------------------------------

def test_summary__raw_utf8_subject(cases_dir: Path) -> None:
    summary = summarize((cases_dir / "25-raw-utf8-headers.eml").read_bytes())

    assert summary.subject == "請求書の再発行について"
    assert summary.from_address == "taro.yamada@example.jp"


def test_summary__raw_shift_jis_subject() -> None:
    summary = summarize("Subject: 見積\r\nFrom: a@example.jp\r\n\r\nbody\r\n".encode("cp932"))

    assert summary.subject == "見積"


def test_summary__bracket_message_id(cases_dir: Path) -> None:
    summary = summarize((cases_dir / "06-exchange-bracket-message-id.eml").read_bytes())

    assert summary.message_id == (
        "[7c1e0f3a9b2d4e6f8a1b3c5d7e9f0a2b-QkFTRTY0U0FNUExF]@mail.example.org")


def test_mail_received__same_mail_same_event_id_per_inbox() -> None:
    summary = summarize(b"Message-ID: <a@example.org>\r\n\r\nbody\r\n")
    origin = ImapOrigin("INBOX", 7, 42, datetime(2024, 3, 1, tzinfo=timezone.utc))

    by_imap = mail_received("inbox-1", "ab" * 32, 10, summary, source="imap", imap=origin)
    by_smtp = mail_received("inbox-1", "ab" * 32, 10, summary, source="smtp")
    other_inbox = mail_received("inbox-2", "ab" * 32, 10, summary, source="smtp")

    assert by_imap["event_id"] == by_smtp["event_id"]
    assert other_inbox["event_id"] != by_smtp["event_id"]
    assert (by_imap["imap_folder"], by_imap["imap_uidvalidity"], by_imap["imap_uid"]) == (
        "INBOX", 7, 42)
    assert by_smtp["imap_uid"] is None


# --- history progress --------------------------------------------------------

def test_format_progress__rate_and_eta() -> None:
    assert format_progress("INBOX", 500, 2000, 10.0) == (
        "INBOX: 500/2000 mails (25%), 50 mails/s, ETA 0:30")


def test_format_progress__hours_and_start() -> None:
    assert format_progress("INBOX", 10, 40010, 10.0).endswith("ETA 11:06:40")
    assert format_progress("INBOX", 0, 10, 0.0).endswith("ETA --:--")
    assert format_progress("INBOX", 0, 0, 1.0) == "INBOX: 0/0 mails (100%), 0 mails/s, ETA --:--"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"Subject: a\r\nFrom: b@example.org\r\n\r\nSubject: in the body\r\n",
     b"Subject: a\r\nFrom: b@example.org\r\n"),
    (b"Subject: a\n\nbody\n\n", b"Subject: a\n"),
    (b"Subject: a\r\n\r\nbare\n\nline feeds\r\n", b"Subject: a\r\n"),
    (b"Subject: only headers\r\n", b"Subject: only headers\r\n"),
])
def test_header_block__stops_at_the_first_empty_line(raw: bytes, expected: bytes) -> None:
    assert header_block(raw) == expected


def test_summary__ignores_headers_quoted_in_the_body() -> None:
    raw = (b"From: Ann <ann@example.org>\r\n\r\n"
           b"Subject: forwarded text\r\nMessage-ID: <quoted@example.org>\r\n")

    summary = summarize(raw)

    assert (summary.subject, summary.message_id) == (None, None)
    assert summary.from_address == "ann@example.org"
