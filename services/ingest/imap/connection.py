"""Opening an authenticated IMAP connection, and naming what went wrong.

The folder sync and the history import call :func:`connect` with an
:class:`ImapAccount`. Certificates are always checked (against the system's
CAs plus an optional CA file, as for the local stack's self-signed
Dovecot). Every socket operation has a timeout, and TCP keepalive is on, so
a connection that dies silently fails within a bounded time instead of
hanging. :func:`classify` turns an exception into the error class that the
inbox's health, the metrics and the retry policy use.
"""

from __future__ import annotations

import functools
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime

from imapclient import IMAPClient, SocketTimeout
from imapclient import exceptions as imap_errors

SECURITY_MODES = ("tls", "starttls", "none")


@dataclass(frozen=True)
class ImapAccount:
    """The IMAP settings of one inbox, with the password decrypted."""

    inbox_id: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: str = "tls"
    folders: tuple[str, ...] = ("INBOX",)
    # The first sync imports mail from this INTERNALDATE on; None is everything.
    start_at: datetime | None = None
    after_import: str = "leave"
    move_to: str | None = None
    settings_version: int = 1

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValueError(f"invalid IMAP security {self.security!r} for inbox "
                             f"{self.inbox_id}: use tls, starttls or none")
        if self.after_import == "move" and not self.move_to:
            raise ValueError(f"inbox {self.inbox_id}: moving mail after import needs a folder")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def read_only(self) -> bool:
        """True when the sync leaves the mailbox as it was (EXAMINE, BODY.PEEK)."""
        return self.after_import == "leave"


@dataclass(frozen=True)
class ConnectOptions:
    connect_timeout_seconds: float = 15.0
    read_timeout_seconds: float = 60.0
    ca_file: str = ""


class ImapSyncError(Exception):
    """A failure of the sync, with its error class; retrying later can succeed."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class

    retriable = True


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Return a verifying client context: the system's CAs, plus ``ca_file`` when given.

    One context serves every connection, because each context contains the
    parsed CA store (about 0.8 MB), which a context per IDLE connection repeats.
    """
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def connect(account: ImapAccount, options: ConnectOptions,
            context: ssl.SSLContext | None = None) -> IMAPClient:
    """Return a logged-in client for ``account``; raise :class:`ImapSyncError` on failure."""
    try:
        client = IMAPClient(account.host, port=account.port, ssl=account.security == "tls",
                            ssl_context=context or tls_context(options.ca_file),
                            timeout=SocketTimeout(options.connect_timeout_seconds,
                                                  options.read_timeout_seconds))
    except Exception as exc:  # noqa: BLE001 - classified, the caller retries
        raise classify(exc, account) from None

    try:
        _enable_keepalive(client.socket())
        if account.security == "starttls":
            client.starttls(context or tls_context(options.ca_file))
        client.login(account.username, account.password)
    except Exception as exc:  # noqa: BLE001 - classified, the caller retries
        close_quietly(client)
        raise classify(exc, account) from None
    client.normalise_times = False
    return client


def folder_names(client: IMAPClient) -> list[str]:
    """Return the names of the account's folders as people read them.

    Servers send names in modified UTF-7 (RFC 3501, 5.1.3). imapclient
    decodes them here and encodes them again in SELECT, so a name such as
    ``問い合わせ/重要`` or ``R&D`` round-trips exactly.
    """
    return [name for _flags, _delimiter, name in client.list_folders()]


def _enable_keepalive(sock: socket.socket) -> None:
    # A peer that vanishes without FIN or RST (a NAT timeout, a cut link) is
    # noticed after about 60 + 4 * 15 s even while the client sits in IDLE.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def close_quietly(client: IMAPClient) -> None:
    """Close ``client`` without waiting on a dead server: shut the socket down first."""
    interrupt(client)
    try:
        client.shutdown()
    except Exception:  # noqa: BLE001, S110 - the connection is being discarded
        pass


def interrupt(client: IMAPClient) -> None:
    """Wake a thread blocked on ``client``'s socket; its call then fails at once.

    The plain socket's shutdown is called even on a TLS socket, because the
    TLS object belongs to the blocked thread and must not be touched here.
    """
    try:
        socket.socket.shutdown(client.socket(), socket.SHUT_RDWR)
    except (OSError, AttributeError, ValueError):
        pass


def classify(exc: BaseException, account: ImapAccount) -> ImapSyncError:
    """Return ``exc`` as an :class:`ImapSyncError` with a message safe to store and log."""
    where = f"IMAP {account.address} login {account.username!r}"
    if isinstance(exc, ImapSyncError):
        return exc
    if isinstance(exc, imap_errors.LoginError):
        return ImapSyncError("auth", f"{where}: authentication failed: "
                             f"{_server_text(exc, account)}; check the login and password "
                             "(some providers need an app password)")
    if isinstance(exc, imap_errors.CapabilityError) and "STARTTLS" in str(exc).upper():
        return ImapSyncError("tls", f"{where}: the server does not offer STARTTLS; "
                             "use security tls (usually port 993)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ImapSyncError("tls", f"{where}: the server certificate is not trusted: "
                             f"{exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return ImapSyncError("tls", f"{where}: TLS failed ({exc.reason}); check that security "
                             "matches the port: tls for 993, starttls for 143")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ImapSyncError("timeout", f"{where}: timed out waiting for the server; if "
                             "the port expects implicit TLS (usually 993), use security tls")
    if isinstance(exc, imap_errors.IMAPClientAbortError):
        return ImapSyncError("connect", f"{where}: the connection was lost: "
                             f"{_server_text(exc, account)}")
    if isinstance(exc, OSError):
        return ImapSyncError("connect", f"{where}: cannot connect: {exc.strerror or exc!r}")
    return ImapSyncError("protocol", f"{where}: {type(exc).__name__}: "
                         f"{_server_text(exc, account)}")


def _server_text(exc: BaseException, account: ImapAccount) -> str:
    text = str(exc)[:500]
    # A server that echoes the command would echo the password too.
    return text.replace(account.password, "***") if account.password else text
