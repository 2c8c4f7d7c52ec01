"""The IMAP sync against the real Dovecot, PostgreSQL and Kafka of the stack.

Each test runs :class:`FolderSync` threads in the test process (see
``harness.py``), with intervals shortened so that waits stay short. It
checks what reached ``mail.received``, the cursor and failure rows, and,
where it matters, the conversations the router made.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from messagehub import secrets
from services.ingest.imap.backend import FetchedMail, LoopBackend
from services.ingest.imap.connection import ImapSyncError, connect, folder_names
from services.ingest.imap.folder_sync import FolderSync
from services.ingest.imap.history import import_history
from services.ingest.imap.state import Cursor
from tests.ingest.harness import (BULK_TOPIC, IngestRig, SyncThread, TcpProxy, account, doveadm,
                                  fast_options, imap_port, incoming_message_ids, iter_commands,
                                  mail, mailbox_client, new_imap_user, published, query,
                                  scenario_messages, wait_for, wait_published)
from tests.pipeline_helpers import conversations, create_inbox

pytestmark = pytest.mark.stack

# CI runs a smaller mailbox; set MESSAGEHUB_TEST_MAILBOX_SIZE=20000 for the full one.
LARGE_MAILBOX = int(os.environ.get("MESSAGEHUB_TEST_MAILBOX_SIZE", "2000"))


def _inbox(stack: dict[str, Any], greeting: bool = False) -> dict[str, Any]:
    return create_inbox(stack, email_address="support@example.com", agents=["Kim"],
                        greeting=greeting)


def _cursor(stack: dict[str, Any], inbox_id: str, folder: str = "INBOX",
            name: str = "live") -> Cursor | None:
    rows = query(stack, "SELECT uidvalidity, last_uid FROM imap_cursors WHERE inbox_id = %s "
                        "AND folder = %s AND cursor_name = %s", inbox_id, folder, name)
    return Cursor(rows[0]["uidvalidity"], rows[0]["last_uid"]) if rows else None


def _health(stack: dict[str, Any], inbox_id: str, folder: str = "INBOX") -> dict[str, Any]:
    rows = query(stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s AND folder = %s",
                 inbox_id, folder)
    return rows[0] if rows else {}


def _wait_idle(sync: SyncThread) -> None:
    wait_for(lambda: sync.sync.state == "idle", timeout=30, message="the sync to reach IDLE")


def _wait_router(stack: dict[str, Any], inbox_id: str, count: int) -> list[str]:
    def enough() -> list[str] | None:
        found = incoming_message_ids(stack, inbox_id)
        return found if len(found) >= count else None

    ids: list[str] = wait_for(enough, timeout=120,
                              message=f"{count} incoming messages in inbox {inbox_id}")
    return ids


def test_idle__new_mail_reaches_kafka(stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    started = datetime.now(timezone.utc)
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", mail("idle.before@example.org"),
                      msg_time=started - timedelta(days=2))
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, password, start_at=started),
                                 "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_idle(sync)
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("idle.after@example.org"))
        [record] = wait_published(stack, inbox["id"], 1, timeout=20)
    finally:
        sync.stop()

    assert record["message_id"] == "idle.after@example.org"
    assert record["source"] == "imap"
    assert record["imap_folder"] == "INBOX"
    assert record["imap_uid"] == 2
    assert record["imap_internal_date"] is not None
    cursor = _cursor(stack, inbox["id"])
    assert cursor is not None
    assert cursor.uidvalidity == record["imap_uidvalidity"]
    assert cursor.last_uid == 2
    assert _health(stack, inbox["id"])["last_sync_at"] is not None


def test_reconnect__after_server_drop(stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, password), "INBOX",
                                 rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_idle(sync)
        doveadm(stack, "kick", login)
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("after.kick@example.org"))
        records = wait_published(stack, inbox["id"], 1, timeout=30)
        _wait_idle(sync)
    finally:
        sync.stop()

    assert [r["message_id"] for r in records] == ["after.kick@example.org"]
    assert _health(stack, inbox["id"])["consecutive_failures"] == 0


def test_uidvalidity_change__no_duplicates(
        stack: dict[str, Any], rig: IngestRig, cases_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    messages = scenario_messages(cases_dir / "10-uidvalidity-reset.txt")
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.create_folder("Support")
        client.append("Support", messages["M1"])
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, password), "Support",
                                 rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_router(stack, inbox["id"], 1)
        old = _cursor(stack, inbox["id"], "Support")

        # The admin re-creates the folder: new UIDVALIDITY, and new mail gets UID 1 again.
        caplog.set_level(logging.WARNING, logger="services.ingest.imap.folder_sync")
        with mailbox_client(stack, login, password) as client:
            client.delete_folder("Support")
            client.create_folder("Support")
            client.append("Support", messages["M2"])
        _wait_router(stack, inbox["id"], 2)
        with mailbox_client(stack, login, password) as client:
            client.append("Support", messages["M1"])
        wait_for(lambda: (c := _cursor(stack, inbox["id"], "Support")) and c.last_uid == 2,
                 message="the cursor to pass the restored mail")
        # One more mail after the restored one: once it is in, the restored copy was seen.
        with mailbox_client(stack, login, password) as client:
            client.append("Support", mail("u10.sentinel@example.org"))
        ids = _wait_router(stack, inbox["id"], 3)
    finally:
        sync.stop()

    assert sorted(ids) == ["u10.first@mail.example.org", "u10.second@mail.example.org",
                           "u10.sentinel@example.org"]
    assert len(conversations(stack, inbox)) == 3
    new = _cursor(stack, inbox["id"], "Support")
    assert old is not None and new is not None
    assert new.uidvalidity != old.uidvalidity
    changes = [r for r in caplog.records if "UIDVALIDITY changed" in r.getMessage()]
    assert len(changes) == 1
    assert changes[0].levelno == logging.WARNING
    assert str(old.uidvalidity) in changes[0].getMessage()
    assert str(new.uidvalidity) in changes[0].getMessage()


def _padded(raw: bytes, size: int) -> bytes:
    """Return ``raw`` with an X-Pad header that makes it exactly ``size`` bytes."""
    header = b"X-Pad: \r\n"
    pad = size - len(raw) - len(header)
    assert pad > 0
    return b"X-Pad: " + b"p" * pad + b"\r\n" + raw


def test_poison_message__quarantined(
        stack: dict[str, Any], rig: IngestRig, cases_dir: Path) -> None:
    poison = _padded(scenario_messages(cases_dir / "16-imap-poison-message.txt")["M1"], 3333)
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.multiappend("INBOX", [poison] + [mail(f"c16.{n}@example.org") for n in range(2, 81)])

    # The proxy breaks the literal of the poison's body, which imaplib cannot read past.
    def malform(data: bytes) -> bytes:
        return data.replace(b"BODY[] {3333}\r\n", b"BODY[] {3333}x\r\n")

    proxy = TcpProxy(imap_port(stack), rewrite=malform)
    sync = SyncThread(FolderSync(
        account(stack, inbox["id"], login, password, port=proxy.port, security="none"),
        "INBOX", rig.backend(inbox["id"], max_attempts=3, retry_base_seconds=1),
        fast_options(stack)))
    try:
        records = wait_published(stack, inbox["id"], 79, timeout=60)
        row = wait_for(lambda: (rows := query(
            stack, "SELECT * FROM imap_failed_mails WHERE inbox_id = %s", inbox["id"]))
            and rows[0]["status"] == "quarantined" and rows[0], timeout=60,
            message="the poison mail to be quarantined")
        time.sleep(3)
        [after] = query(stack, "SELECT attempts FROM imap_failed_mails WHERE inbox_id = %s",
                        inbox["id"])
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("c16.later@example.org"))
        later = wait_published(stack, inbox["id"], 80, timeout=30)
    finally:
        sync.stop()
        proxy.close()

    ids = {r["message_id"] for r in records}
    assert "c16.jack.broken@mail.example.org" not in ids
    assert ids == {f"c16.{n}@example.org" for n in range(2, 81)}
    assert row["uid"] == 1
    assert row["attempts"] == 3
    assert "FETCH failed" in row["last_error"]
    assert row["uidvalidity"] == records[0]["imap_uidvalidity"]
    assert after["attempts"] == 3
    assert "c16.later@example.org" in {r["message_id"] for r in later}


def test_large_mailbox__bounded_sync(
        stack: dict[str, Any], rig: IngestRig) -> None:
    login, password = new_imap_user()
    old = datetime.now(timezone.utc) - timedelta(days=30)
    with mailbox_client(stack, login, password) as client:
        for start in range(0, LARGE_MAILBOX, 500):
            client.multiappend("INBOX", [{"msg": mail(f"big.{n}@example.org"), "date": old}
                                         for n in range(start, min(start + 500, LARGE_MAILBOX))])

    # A first sync from now imports nothing old, then only the new mail.
    recent = _inbox(stack)
    proxy = TcpProxy(imap_port(stack))
    options = fast_options(stack, search_window=500, fetch_batch=50)
    sync = SyncThread(FolderSync(
        account(stack, recent["id"], login, password, port=proxy.port, security="none",
                start_at=datetime.now(timezone.utc)),
        "INBOX", rig.backend(recent["id"], bulk=True), options))
    try:
        _wait_idle(sync)
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("big.new@example.org"))
        [record] = wait_published(stack, recent["id"], 1, timeout=20, topic=BULK_TOPIC)
    finally:
        sync.stop()
    assert record["message_id"] == "big.new@example.org"
    assert record["imap_uid"] == LARGE_MAILBOX + 1

    # A backfill walks every mail in bounded windows and batches.
    backfill = _inbox(stack)
    proxy.client_bytes.clear()
    started = time.monotonic()
    sync = SyncThread(FolderSync(
        account(stack, backfill["id"], login, password, port=proxy.port, security="none"),
        "INBOX", rig.backend(backfill["id"], bulk=True), options))
    try:
        wait_for(lambda: (c := _cursor(stack, backfill["id"])) and
                 c.last_uid == LARGE_MAILBOX + 1, timeout=600, interval=1,
                 message="the backfill to finish")
        seconds = time.monotonic() - started
    finally:
        sync.stop()
        proxy.close()

    records = published(stack, backfill["id"], BULK_TOPIC)
    assert len(records) == LARGE_MAILBOX + 1
    assert len({r["event_id"] for r in records}) == LARGE_MAILBOX + 1
    commands = list(iter_commands(proxy.client_bytes))
    assert not [c for c in commands if b"SEARCH ALL" in c.upper()]
    for command in commands:
        assert len(command) < 10_000, command[:200]
    fetches = [c for c in commands if b"BODY.PEEK[]" in c]
    assert max(c.count(b",") + 1 for c in fetches) <= 50
    print(f"backfill of {LARGE_MAILBOX + 1} mails: {seconds:.1f} s, "
          f"{(LARGE_MAILBOX + 1) / seconds:.0f} mails/s")


class Crash(BaseException):
    """Stands for the process dying: nothing in the sync catches it."""


class CrashBeforeCursorWrite:
    """A backend that dies right after Kafka acknowledged a batch, before the cursor write."""

    def __init__(self, backend: LoopBackend) -> None:
        self._backend = backend
        self._accepted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def accept(self, folder: str, uidvalidity: int, mails: Sequence[FetchedMail]) -> None:
        self._backend.accept(folder, uidvalidity, mails)
        self._accepted = True

    def advance_cursor(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        if self._accepted:
            raise Crash("the process died between the Kafka acknowledgement and the cursor write")
        self._backend.advance_cursor(folder, uidvalidity, last_uid)


def test_crash_before_cursor_write__no_loss(
        stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.multiappend("INBOX", [mail(f"crash.{n}@example.org") for n in range(5)])
    acct = account(stack, inbox["id"], login, password)

    crashing = SyncThread(FolderSync(acct, "INBOX", CrashBeforeCursorWrite(
        rig.backend(inbox["id"])), fast_options(stack)))
    crashing.thread.join(30)
    assert isinstance(crashing.error, Crash)
    assert len(published(stack, inbox["id"])) == 5
    assert _cursor(stack, inbox["id"]) == Cursor(published(stack, inbox["id"])[0]
                                                 ["imap_uidvalidity"], 0)

    restarted = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]),
                                      fast_options(stack)))
    try:
        _wait_idle(restarted)
    finally:
        restarted.stop()
    ids = _wait_router(stack, inbox["id"], 5)
    time.sleep(2)

    records = published(stack, inbox["id"])
    assert len(records) == 10
    assert len({r["event_id"] for r in records}) == 5
    assert sorted(incoming_message_ids(stack, inbox["id"])) == sorted(ids)
    assert len(ids) == 5
    cursor = _cursor(stack, inbox["id"])
    assert cursor is not None and cursor.last_uid == 5


def test_overlapping_syncs__one_conversation(
        stack: dict[str, Any], rig: IngestRig, cases_dir: Path) -> None:
    message = scenario_messages(cases_dir / "11-overlapping-pollers.txt")["M1"]
    inbox = _inbox(stack, greeting=True)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", message)
    acct = account(stack, inbox["id"], login, password)

    # Two replicas fetch the same mail at once.
    first = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    second = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_idle(first)
        _wait_idle(second)
    finally:
        first.stop()
        second.stop()

    # Later the mail is listed as new again and fetched a third time.
    rig.run(rig.state.reset_cursor(inbox["id"], "INBOX", "live", _cursor(
        stack, inbox["id"]).uidvalidity, 0))  # type: ignore[union-attr]
    third = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_idle(third)
    finally:
        third.stop()
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", mail("c11.sentinel@example.org", sender="Ivy <ivy@example.org>"))
    fourth = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        _wait_router(stack, inbox["id"], 2)
    finally:
        fourth.stop()

    assert len(published(stack, inbox["id"])) >= 3
    henry = [c for c in conversations(stack, inbox) if c["contact"] == "henry@example.org"]
    assert len(henry) == 1
    assert henry[0]["message_ids"].count("c11.henry.driver@mail.example.org") == 1
    wait_for(lambda: conversations(stack, inbox)[0]["greetings_sent"] >= 1, timeout=30,
             message="the greeting")
    time.sleep(2)
    henry = [c for c in conversations(stack, inbox) if c["contact"] == "henry@example.org"]
    assert henry[0]["greetings_sent"] == 1


def test_folder_names__modified_utf7_round_trip(stack: dict[str, Any], rig: IngestRig) -> None:
    names = ["Entwürfe", "問い合わせ", "問い合わせ/重要", "R&D", "見積 & 請求",
             "Réponses 1200+1201"]
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        for name in names:
            if name != "問い合わせ":
                client.create_folder(name)
        client.append("問い合わせ/重要", mail("c13.folder@example.org"))

    proxy = TcpProxy(imap_port(stack))
    acct = account(stack, inbox["id"], login, password, port=proxy.port, security="none")
    client = connect(acct, fast_options(stack).connect)
    try:
        listed = folder_names(client)
    finally:
        client.logout()
    sync = SyncThread(FolderSync(acct, "問い合わせ/重要", rig.backend(inbox["id"]),
                                 fast_options(stack)))
    try:
        [record] = wait_published(stack, inbox["id"], 1, timeout=20)
    finally:
        sync.stop()
        proxy.close()

    assert sorted(listed) == sorted(["INBOX", *names])
    assert b'EXAMINE "&VU8wRFQIMI8wWw-/&kc2JgQ-"' in proxy.client_bytes
    assert record["imap_folder"] == "問い合わせ/重要"
    assert _cursor(stack, inbox["id"], "問い合わせ/重要") is not None


def test_silent_hang__mail_caught_up(stack: dict[str, Any],
                                                       rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    proxy = TcpProxy(imap_port(stack, "imaps"))
    options = fast_options(stack, idle_reissue_seconds=2)
    options = dataclasses.replace(options, connect=dataclasses.replace(
        options.connect, read_timeout_seconds=2))
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, password, port=proxy.port),
                                 "INBOX", rig.backend(inbox["id"]), options))
    try:
        _wait_idle(sync)
        # The server stops responding but keeps the TCP connection open.
        proxy.freeze()
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("c14.hang@example.org"))
        [record] = wait_published(stack, inbox["id"], 1, timeout=30)
        health = _health(stack, inbox["id"])
    finally:
        sync.stop()
        proxy.close()

    assert record["message_id"] == "c14.hang@example.org"
    assert health["last_error"] is not None
    assert health["error_class"] in (None, "timeout", "connect")
    assert sync.error is None


def test_auth_failure__recorded_and_secret(
        stack: dict[str, Any], rig: IngestRig, caplog: pytest.LogCaptureFixture) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    wrong = f"wrong-{password}"
    errors: list[str] = []
    caplog.set_level(logging.DEBUG)
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, wrong), "INBOX",
                                 rig.backend(inbox["id"]), fast_options(stack,
                                                                        auth_retry_seconds=30),
                                 on_error=errors.append))
    try:
        health = wait_for(lambda: (h := _health(stack, inbox["id"])) and
                          h["state"] == "auth_failed" and h, timeout=20,
                          message="the auth failure on the inbox's health")
        time.sleep(3)
    finally:
        sync.stop()

    assert health["error_class"] == "auth"
    assert health["error_since"] is not None
    assert health["consecutive_failures"] == 1
    assert (health["next_attempt_at"] - health["last_error_at"]).total_seconds() >= 29
    assert login in health["last_error"]
    assert errors == ["auth"]
    assert wrong not in health["last_error"]
    assert wrong not in caplog.text
    assert password not in caplog.text


@pytest.mark.parametrize("security, port_name, expected", [
    ("tls", "imap", "tls"),
    ("starttls", "imaps", "timeout"),
])
def test_tls_mismatch__classified(stack: dict[str, Any], security: str, port_name: str,
                                  expected: str) -> None:
    login, password = new_imap_user()
    options = fast_options(stack)
    options = dataclasses.replace(options, connect=dataclasses.replace(
        options.connect, read_timeout_seconds=3, connect_timeout_seconds=3))
    acct = account(stack, "00000000-0000-0000-0000-000000000000", login, password,
                   port=imap_port(stack, port_name), security=security)
    with pytest.raises(ImapSyncError) as failure:
        connect(acct, options.connect)
    assert failure.value.error_class == expected


def test_untrusted_certificate__rejected(stack: dict[str, Any]) -> None:
    login, password = new_imap_user()
    acct = account(stack, "00000000-0000-0000-0000-000000000000", login, password)
    options = dataclasses.replace(fast_options(stack).connect, ca_file="")
    with pytest.raises(ImapSyncError) as failure:
        connect(acct, options)
    assert failure.value.error_class == "tls"
    assert "not trusted" in str(failure.value)


def test_starttls__syncs(stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", mail("starttls.1@example.org"))
    sync = SyncThread(FolderSync(account(stack, inbox["id"], login, password,
                                         security="starttls"),
                                 "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        [record] = wait_published(stack, inbox["id"], 1, timeout=20)
    finally:
        sync.stop()
    assert record["message_id"] == "starttls.1@example.org"


@pytest.mark.parametrize("after_import", ["leave", "mark_read", "move"])
def test_after_import__option_applied(
        stack: dict[str, Any], rig: IngestRig, after_import: str) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.create_folder("Imported")
        client.append("INBOX", mail(f"after.{after_import}@example.org"))
    acct = account(stack, inbox["id"], login, password, after_import=after_import,
                   move_to="Imported" if after_import == "move" else None)
    sync = SyncThread(FolderSync(acct, "INBOX", rig.backend(inbox["id"]), fast_options(stack)))
    try:
        wait_published(stack, inbox["id"], 1, timeout=20)
        _wait_idle(sync)
    finally:
        sync.stop()

    with mailbox_client(stack, login, password) as client:
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(client.search(["ALL"]))
        moved = client.folder_status("Imported", ["MESSAGES"])[b"MESSAGES"]
    if after_import == "move":
        assert flags == {}
        assert moved == 1
    else:
        [(_uid, message_flags)] = flags.items()
        assert (b"\\Seen" in message_flags) == (after_import == "mark_read")
        assert moved == 0


def test_history_import__resumes(
        stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.multiappend("INBOX", [mail(f"history.{n}@example.org") for n in range(250)])
    secrets.configure(stack["encryption_keys"])
    query(stack, "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, "
                 "security, sync_enabled) VALUES (%s, '127.0.0.1', %s, %s, %s, 'tls', false)",
          inbox["id"], imap_port(stack, "imaps"), login, secrets.encrypt(password))
    options = fast_options(stack, fetch_batch=100)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    history = FolderSync(account(stack, inbox["id"], login, password), "INBOX",
                         rig.backend(inbox["id"], cursor_name="history"), options)
    with pytest.raises(KeyboardInterrupt):
        history.catch_up_once(interrupt)
    interrupted = _cursor(stack, inbox["id"], name="history")

    first = import_history(database_url=stack["database_url"],
                           kafka_bootstrap=stack["kafka_bootstrap"], inbox_id=inbox["id"],
                           options=options)
    again = import_history(database_url=stack["database_url"],
                           kafka_bootstrap=stack["kafka_bootstrap"], inbox_id=inbox["id"],
                           options=options)

    assert interrupted is not None and interrupted.last_uid == 100
    assert [(r.folder, r.imported, r.last_uid) for r in first] == [("INBOX", 150, 250)]
    assert [(r.folder, r.imported, r.last_uid) for r in again] == [("INBOX", 0, 250)]
    records = published(stack, inbox["id"])
    assert len(records) == 250
    assert {r["source"] for r in records} == {"import"}
    assert _cursor(stack, inbox["id"]) is None


def test_server_without_idle__polls(stack: dict[str, Any], rig: IngestRig) -> None:
    inbox = _inbox(stack)
    login, password = new_imap_user()

    # The proxy hides IDLE from every CAPABILITY list the server sends.
    proxy = TcpProxy(imap_port(stack), rewrite=lambda data: data.replace(b" IDLE", b""))
    sync = SyncThread(FolderSync(
        account(stack, inbox["id"], login, password, port=proxy.port, security="none"),
        "INBOX", rig.backend(inbox["id"]), fast_options(stack, poll_interval_seconds=1)))
    try:
        _wait_idle(sync)
        with mailbox_client(stack, login, password) as client:
            client.append("INBOX", mail("polled@example.org"))
        [record] = wait_published(stack, inbox["id"], 1, timeout=20)
    finally:
        sync.stop()
        proxy.close()

    assert record["message_id"] == "polled@example.org"
    assert b" IDLE\r\n" not in proxy.client_bytes
    assert b"EXAMINE" in proxy.client_bytes
