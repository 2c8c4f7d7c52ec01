"""The copy of each sent mail in the inbox's IMAP Sent folder.

After the SMTP server accepted a mail, the outbound stage calls
:func:`save_sent_copy` (in a worker thread, because IMAPClient blocks) so
that people who also read the mailbox in their own client see what
messagehub answered. The Sent folder is the one the server marks
``\\Sent`` (RFC 6154 SPECIAL-USE), else the first of the usual names, else
a new folder "Sent". The copy is flagged ``\\Seen``.

The save is idempotent: a mail whose Message-ID is already in the folder
is not appended again, so a retried save leaves one copy.

IMAP sync must not import these copies as customer mail. It can recognise
them by their Message-ID, which always ends in ``@`` plus messagehub's
``message_id_domain``, and by their row in ``send_ledger`` (column
``rfc_message_id``).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from datetime import datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from messagehub.smtp_client import is_loopback

log = logging.getLogger(__name__)

SENT_FLAG = b"\\Sent"
DEFAULT_SENT_FOLDER = "Sent"
# Usual names of the Sent folder, compared case-insensitively, for servers
# without SPECIAL-USE: Dovecot and Courier defaults, Outlook, Apple Mail,
# Gmail, and the Japanese and German names of common clients.
USUAL_SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "Sent Mail", "INBOX.Sent",
                    "INBOX/Sent", "[Gmail]/Sent Mail", "送信済み", "送信済みアイテム",
                    "送信済みメール", "Gesendet", "Gesendete Elemente", "Gesendete Objekte")


class SentCopyError(Exception):
    """The copy could not be saved; the mail itself was sent. Retrying may help."""

    retriable = True


@dataclass(frozen=True)
class ImapAccount:
    """The IMAP login of an inbox: security is tls (implicit), starttls or none."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: str = "tls"
    sent_folder: str | None = None

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "none"):
            raise ValueError(f"invalid IMAP security {self.security!r}: expected tls, "
                             "starttls or none")
        if self.security == "none" and not is_loopback(self.host):
            raise ValueError(f"IMAP {self.host}:{self.port}: the password is never sent over "
                             "plaintext: set security to tls or starttls")


def save_sent_copy(account: ImapAccount, raw: bytes, message_id: str, *, sent_at: datetime,
                   ssl_context: ssl.SSLContext, timeout_seconds: float = 30.0) -> str:
    """Append ``raw`` to the Sent folder, flagged seen, unless it is there; return the folder.

    Raises SentCopyError naming the step that failed.
    """
    try:
        client = _connect(account, ssl_context, timeout_seconds)
    except (IMAPClientError, OSError, ssl.SSLError) as exc:
        raise SentCopyError(f"IMAP {account.host}:{account.port}: login as "
                            f"{account.username!r} failed: {exc}") from None
    try:
        folder = account.sent_folder or find_sent_folder(client)
        if folder is None:
            folder = DEFAULT_SENT_FOLDER
            client.create_folder(folder)
            log.info("sentcopy: %s: no Sent folder found, created %r", account.username, folder)

        client.select_folder(folder)
        if client.search(["HEADER", "Message-ID", f"<{message_id}>"]):
            log.info("sentcopy: Message-ID %s: already in %r, not appended again", message_id,
                     folder)
            return folder
        client.append(folder, raw, flags=[b"\\Seen"], msg_time=sent_at)
        return folder
    except (IMAPClientError, OSError, ssl.SSLError) as exc:
        raise SentCopyError(f"IMAP {account.host}:{account.port}: saving Message-ID "
                            f"{message_id} to the Sent folder failed: {exc}") from None
    finally:
        _logout(client)


def find_sent_folder(client: IMAPClient) -> str | None:
    """Return the folder flagged \\Sent, else the first folder with a usual Sent name."""
    if client.has_capability("SPECIAL-USE"):
        for flags, _delimiter, name in _list_special_use(client):
            if SENT_FLAG in flags:
                return str(name)

    folders = client.list_folders()
    for flags, _delimiter, name in folders:
        if SENT_FLAG in flags:
            return str(name)

    by_name = {str(name).casefold(): str(name) for _flags, _delimiter, name in folders}
    for usual in USUAL_SENT_NAMES:
        if usual.casefold() in by_name:
            return by_name[usual.casefold()]
    return None


def _list_special_use(client: IMAPClient) -> list[tuple[tuple[bytes, ...], bytes, str]]:
    """Return every folder with its flags, asking for SPECIAL-USE flags (RFC 6154).

    RFC 6154 obliges a server to send the flags only when LIST asks for
    them with RETURN (SPECIAL-USE). IMAPClient 4.1 cannot add that option,
    so the command goes through its imaplib connection.
    """
    # NOTE: uses private helpers of IMAPClient 4.1 (pinned in pyproject.toml).
    typ, data = client._imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
    client._checkok("list", typ, data)
    typ, data = client._imap._untagged_response(typ, data, "LIST")
    return list(client._proc_folder_list(data))


def _connect(account: ImapAccount, ssl_context: ssl.SSLContext,
             timeout_seconds: float) -> IMAPClient:
    client = IMAPClient(account.host, port=account.port, ssl=account.security == "tls",
                        ssl_context=ssl_context, timeout=timeout_seconds)
    try:
        if account.security == "starttls":
            client.starttls(ssl_context)
        client.login(account.username, account.password)
    except BaseException:
        _logout(client)
        raise
    return client


def _logout(client: IMAPClient) -> None:
    try:
        client.logout()
    except (IMAPClientError, OSError, ssl.SSLError):
        client.shutdown()
