"""The IMAP sync as an operator runs it: the CLI configures it, the service syncs.

These tests go through ``messagehub inbox imap`` and ``messagehub import
--imap`` against the session stack, whose ingest service picks the settings
up without a restart.
"""

from __future__ import annotations

import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from messagehub import cli
from tests.conftest import TEST_PORT_BASE, TEST_STATE_DIR
from tests.ingest.harness import (imap_port, incoming_message_ids, mail, mailbox_client,
                                  new_imap_user, query, wait_for)
from tests.pipeline_helpers import conversations, create_inbox

pytestmark = pytest.mark.stack


def _messagehub(*args: str) -> int:
    try:
        cli.main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(autouse=True)
def _stack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGEHUB_STATE_DIR", str(TEST_STATE_DIR))
    monkeypatch.setenv("MESSAGEHUB_PORT_BASE", str(TEST_PORT_BASE))


def test_cli_imap__service_syncs(
        stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    inbox = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    login, password = new_imap_user()
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", mail("service.history@example.org"),
                      msg_time=datetime.now(timezone.utc) - timedelta(days=3))
    monkeypatch.setenv("MESSAGEHUB_IMAP_PASSWORD", password)

    code = _messagehub("inbox", "imap", "--inbox", inbox["name"], "--host", "127.0.0.1",
                       "--port", str(imap_port(stack, "imaps")), "--login", login,
                       "--security", "ssl")
    health = wait_for(lambda: (rows := query(
        stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s", inbox["id"]))
        and rows[0]["state"] == "idle" and rows[0], timeout=60, message="the service's sync")
    with mailbox_client(stack, login, password) as client:
        client.append("INBOX", mail("service.live@example.org", sender="Bo <bo@example.org>"))
    live = wait_for(lambda: incoming_message_ids(stack, inbox["id"]), timeout=60,
                    message="the live mail as a message")

    # The mail from before the settings is history: the import brings it in, once.
    first = _messagehub("import", "--imap", "--inbox", inbox["name"])
    again = _messagehub("import", "--imap", "--inbox", inbox["name"])
    both = wait_for(lambda: len(ids := incoming_message_ids(stack, inbox["id"])) >= 2 and ids,
                    timeout=60, message="the imported mail as a message")
    output = capsys.readouterr()

    assert code == 0
    assert live == ["service.live@example.org"]
    assert sorted(both) == ["service.history@example.org", "service.live@example.org"]
    assert (first, again) == (0, 0)
    assert "INBOX: 2 mails handed to the pipeline" in output.out
    assert "INBOX: 0 mails handed to the pipeline" in output.out
    assert len(conversations(stack, inbox)) == 2
    assert health["replica"]

    [row] = query(stack, "SELECT password_encrypted FROM inbox_imap WHERE inbox_id = %s",
                  inbox["id"])
    log_text = (Path(stack["state_dir"]) / "services" / "service-ingest.log").read_text()
    metrics_port = TEST_PORT_BASE + 101
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        metrics_text = page.read().decode()
    assert password not in row["password_encrypted"]
    assert password not in output.out + output.err
    assert password not in log_text
    assert password not in metrics_text
    assert 'messagehub_ingest_imap_inboxes{state="idle"}' in metrics_text


def test_cli_imap__wrong_password_health(
        stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    login, password = new_imap_user()
    base = ("inbox", "imap", "--inbox", inbox["name"], "--host", "127.0.0.1", "--port",
            str(imap_port(stack, "imaps")), "--login", login)

    monkeypatch.setenv("MESSAGEHUB_IMAP_PASSWORD", f"wrong-{password}")
    assert _messagehub(*base) == 0
    failed = wait_for(lambda: (rows := query(
        stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s", inbox["id"]))
        and rows[0]["state"] == "auth_failed" and rows[0], timeout=60,
        message="the auth failure on the inbox's health")

    # New settings restart the sync at once, whatever the backoff was.
    monkeypatch.setenv("MESSAGEHUB_IMAP_PASSWORD", password)
    assert _messagehub(*base) == 0
    fixed = wait_for(lambda: (rows := query(
        stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s", inbox["id"]))
        and rows[0]["state"] == "idle" and rows[0], timeout=60, message="the fixed sync")
    assert _messagehub("inbox", "imap", "--inbox", inbox["name"], "--disable") == 0
    stopped = wait_for(lambda: (rows := query(
        stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s", inbox["id"]))
        and rows[0]["state"] == "stopped" and rows[0], timeout=60, message="the stop")

    assert failed["error_class"] == "auth"
    assert failed["error_since"] is not None
    assert fixed["error_class"] is None
    assert fixed["error_since"] is None
    assert fixed["last_error"] == failed["last_error"]
    assert stopped["state"] == "stopped"


def test_undecryptable_password__shown_on_health(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    other_key = Fernet(Fernet.generate_key())

    query(stack, "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, "
                 "security, sync_enabled) VALUES (%s, '127.0.0.1', %s, 'nobody', %s, 'tls', true)",
          inbox["id"], imap_port(stack, "imaps"), other_key.encrypt(b"pw").decode())
    health = wait_for(lambda: (rows := query(
        stack, "SELECT * FROM imap_sync_health WHERE inbox_id = %s", inbox["id"]))
        and rows[0], timeout=60, message="the unusable settings on the inbox's health")

    assert health["state"] == "auth_failed"
    assert health["error_class"] == "auth"
    assert "cannot be decrypted" in health["last_error"]
