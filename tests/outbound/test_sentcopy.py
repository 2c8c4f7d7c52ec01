"""The Sent-folder copy against a Dovecot that marks its Sent folder with SPECIAL-USE.

The stack's Dovecot has no SPECIAL-USE folders, so this module starts its
own instance whose config flags "Outbox Archive" as ``\\Sent``, a name no
usual-name fallback would pick.
"""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from messagehub.localstack._files import write_atomically
from messagehub.localstack.dovecot import DOVECOT_BIN, DovecotServer
from services.outbound.sentcopy import ImapAccount, save_sent_copy
from tests.conftest import TEST_PORT_BASE, TEST_STATE_DIR

pytestmark = pytest.mark.stack

LOGIN, PASSWORD = "support@example.com", "imap secret"
SPECIAL_FOLDER = "Outbox Archive"
MAIL = (b"From: Support <support@example.com>\r\nTo: alice@example.org\r\nSubject: Re: Parcel\r\n"
        b"Message-ID: <copy.1@messagehub.localhost>\r\nDate: Tue, 05 Mar 2024 10:30:00 +0000\r\n"
        b"\r\nA new lamp is on its way.\r\n")


class SpecialUseDovecot(DovecotServer):
    """The local stack's Dovecot, with one folder flagged \\Sent."""

    def _write_config(self, mail_user: Any) -> None:
        super()._write_config(mail_user)
        config = self.config_path.read_text()
        assert "  inbox = yes\n" in config, "the stack's Dovecot config changed its inbox namespace"
        config = config.replace(
            "  inbox = yes\n",
            f'  inbox = yes\n  mailbox "{SPECIAL_FOLDER}" {{\n    special_use = \\Sent\n  }}\n', 1)
        write_atomically(self.config_path, config.encode())


@pytest.fixture(scope="module")
def dovecot() -> Iterator[SpecialUseDovecot]:
    if os.geteuid() != 0 or not Path(DOVECOT_BIN).exists():
        pytest.skip("needs root and Dovecot, as the local stack does")
    root = TEST_STATE_DIR / "dovecot-special-use"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server = SpecialUseDovecot(root, TEST_PORT_BASE + 150, TEST_PORT_BASE + 950)
    server.start()
    server.add_user(LOGIN, PASSWORD)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def client(dovecot: SpecialUseDovecot) -> IMAPClient:
    context = ssl.create_default_context(cafile=str(dovecot.cert_path))
    imap = IMAPClient("127.0.0.1", port=dovecot.imaps_port, ssl=True, ssl_context=context)
    imap.login(LOGIN, PASSWORD)
    return imap


def test_sent_copy__special_use_folder(dovecot: SpecialUseDovecot) -> None:
    imap = client(dovecot)
    imap.create_folder(SPECIAL_FOLDER)
    imap.create_folder("Sent")
    imap.logout()
    account = ImapAccount("127.0.0.1", dovecot.imaps_port, LOGIN, PASSWORD, security="tls")
    context = ssl.create_default_context(cafile=str(dovecot.cert_path))

    first = save_sent_copy(account, MAIL, "copy.1@messagehub.localhost",
                           sent_at=datetime.now(timezone.utc), ssl_context=context)
    second = save_sent_copy(account, MAIL, "copy.1@messagehub.localhost",
                            sent_at=datetime.now(timezone.utc), ssl_context=context)

    imap = client(dovecot)
    try:
        imap.select_folder(SPECIAL_FOLDER, readonly=True)
        uids = imap.search(["ALL"])
        flags = imap.get_flags(uids)
        imap.select_folder("Sent", readonly=True)
        in_sent = imap.search(["ALL"])
    finally:
        imap.logout()
    assert first == SPECIAL_FOLDER
    assert second == SPECIAL_FOLDER
    assert len(uids) == 1
    assert b"\\Seen" in flags[uids[0]]
    assert in_sent == []
