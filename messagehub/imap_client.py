"""Checking an inbox's IMAP login step by step, with a classified result.

The API's connection test calls :func:`check_login` with the settings a
person typed (or the stored ones) before the sync is trusted with them. It
runs each step on its own so that a failure names the step and its cause:

1. resolve the host name (``dns``);
2. open a TCP connection (``refused``, ``timeout``, ``unreachable``);
3. with implicit TLS the handshake, then the server's greeting: a server
   that accepts the connection and stays silent is waiting for a TLS
   handshake (``tls_mismatch``), an untrusted certificate is
   ``certificate``;
4. STARTTLS when the security mode is starttls (``tls_mismatch`` when not offered);
5. LOGIN, unless the server announces LOGINDISABLED (``mechanism``);
   a rejected login is ``authentication``, or ``app_password`` when the
   server's reply says the account needs one.

The reasons are those of :data:`messagehub.smtp_client.REASONS`.
:func:`check_login` blocks; callers run it in a thread and bound it with a
total timeout as well, because the operating system's resolver has its own.
The password never appears in an error message.

NOTE: services/ingest/imap/connection.py opens the sync's connections with
the same library and classifies its errors into the coarser classes that
inbox health uses; the two should become one module.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

from imapclient import IMAPClient, SocketTimeout
from imapclient import exceptions as imap_errors

SECURITY_MODES = ("tls", "starttls", "none")
# Reply texts that mean the account must use an app password: Gmail's
# "Application-specific password required", Microsoft 365 with basic
# authentication turned off, Yahoo's "third-party app" refusals.
_APP_PASSWORD_HINTS = ("application-specific", "app password", "app-specific",
                       "basic authentication is disabled", "third-party app")


@dataclass(frozen=True)
class ImapLogin:
    """The IMAP settings of an inbox that the check uses, with the password decrypted."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: str = "tls"

    @property
    def address(self) -> str:
        """The server as ``host:port``, for messages."""
        return f"{self.host}:{self.port}"


class ImapCheckError(Exception):
    """A step of the check failed; ``reason`` classifies it and ``step`` names it."""

    def __init__(self, reason: str, step: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.step = step


def check_login(login: ImapLogin, *, timeout_seconds: float = 10.0,
                ca_file: str = "") -> str:
    """Connect, negotiate TLS and log in as the sync would, then log out; return a summary.

    Each network step waits at most ``timeout_seconds``. Raises
    :class:`ImapCheckError` for the first step that fails.
    """
    if login.security not in SECURITY_MODES:
        raise ImapCheckError("config", "settings", f"invalid IMAP security {login.security!r}: "
                             f"expected one of {', '.join(SECURITY_MODES)}")
    context = _tls_context(ca_file)
    _probe_tcp(login, timeout_seconds)

    client = _open(login, context, timeout_seconds)
    try:
        if login.security == "starttls":
            _starttls(client, login, context)
        _login(client, login)
        capabilities = _capability_names(client)
        client.logout()
    except ImapCheckError:
        _close(client)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified result
        _close(client)
        raise _classify(exc, login, "session") from None
    tls = "TLS" if login.security != "none" else "no TLS"
    idle = "IDLE" if "IDLE" in capabilities else "no IDLE (the sync polls)"
    return f"{login.address}: connected with {tls}, logged in as {login.username!r}, {idle}"


def _tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _probe_tcp(login: ImapLogin, timeout_seconds: float) -> None:
    """Resolve the host and open, then close, one TCP connection."""
    try:
        addresses = socket.getaddrinfo(login.host, login.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImapCheckError("dns", "resolve", f"IMAP host {login.host!r} cannot be resolved: "
                             f"{exc.strerror}") from None

    family, kind, protocol, _name, address = addresses[0]
    started = time.monotonic()
    try:
        with socket.socket(family, kind, protocol) as probe:
            probe.settimeout(timeout_seconds)
            probe.connect(address)
    except Exception as exc:  # noqa: BLE001 - classified below
        raise _classify(exc, login, "connect",
                        waited=time.monotonic() - started) from None


def _open(login: ImapLogin, context: ssl.SSLContext, timeout_seconds: float) -> IMAPClient:
    """Return a client that has read the server's greeting, over TLS for security tls."""
    try:
        return IMAPClient(login.host, port=login.port, ssl=login.security == "tls",
                          ssl_context=context,
                          timeout=SocketTimeout(timeout_seconds, timeout_seconds))
    except (TimeoutError, socket.timeout):
        # The TCP probe connected, so the silence is the greeting's.
        if login.security == "tls":
            raise ImapCheckError("timeout", "TLS handshake",
                                 f"{login.address}: the TLS handshake did not finish within "
                                 f"{timeout_seconds:g}s") from None
        raise ImapCheckError("tls_mismatch", "greeting",
                             f"{login.address}: the server accepted the connection but sent "
                             f"no IMAP greeting within {timeout_seconds:g}s: it likely "
                             "expects implicit TLS (as port 993 does): set security to tls"
                             ) from None
    except Exception as exc:  # noqa: BLE001 - classified below
        raise _classify(exc, login, "TLS handshake" if login.security == "tls"
                        else "greeting") from None


def _starttls(client: IMAPClient, login: ImapLogin, context: ssl.SSLContext) -> None:
    if not client.has_capability("STARTTLS"):
        raise ImapCheckError("tls_mismatch", "STARTTLS",
                             f"{login.address} does not offer STARTTLS: set security to tls if "
                             "the port expects implicit TLS (usually 993)")
    try:
        client.starttls(context)
    except Exception as exc:  # noqa: BLE001 - classified below
        raise _classify(exc, login, "STARTTLS") from None


def _login(client: IMAPClient, login: ImapLogin) -> None:
    capabilities = _capability_names(client)
    if "LOGINDISABLED" in capabilities:
        raise _login_disabled(login, capabilities)
    try:
        client.login(login.username, login.password)
    except imap_errors.LoginError as exc:
        text = _server_text(exc, login)
        if any(hint in text.lower() for hint in _APP_PASSWORD_HINTS):
            raise ImapCheckError(
                "app_password", "LOGIN",
                f"{login.address}: login {login.username!r} rejected: {text}. This account "
                "needs an app password: create one in the provider's security settings and "
                "enter it instead of the account password") from None
        raise ImapCheckError(
            "authentication", "LOGIN",
            f"{login.address}: login {login.username!r} rejected: {text}. Check the login "
            "(often the full address) and the password") from None


def _login_disabled(login: ImapLogin, capabilities: set[str]) -> ImapCheckError:
    """Return the error for a server that announces LOGINDISABLED (RFC 3501, 6.2.3)."""
    if login.security == "none" and "STARTTLS" in capabilities:
        return ImapCheckError("mechanism", "LOGIN",
                              f"{login.address} accepts logins only after STARTTLS: set "
                              "security to starttls or tls")
    offered = sorted(name for name in capabilities if name.startswith("AUTH="))
    return ImapCheckError(
        "mechanism", "LOGIN",
        f"{login.address} does not accept password logins (LOGIN) on this connection; it "
        f"offers {', '.join(offered) or 'no other mechanism'}, which messagehub does not "
        "use: allow IMAP password logins (or app passwords) for this account")


def _capability_names(client: IMAPClient) -> set[str]:
    return {name.decode("ascii", "replace").upper() if isinstance(name, bytes) else str(name)
            for name in client.capabilities()}


def _classify(exc: BaseException, login: ImapLogin, step: str, *,
              waited: float | None = None) -> ImapCheckError:
    """Return ``exc`` as an ImapCheckError; the message never contains the password."""
    where = f"{login.address}: {step} failed"
    if isinstance(exc, ImapCheckError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ImapCheckError("certificate", step,
                              f"{where}: the server's certificate failed verification "
                              f"({exc.verify_message}): the host name must match the "
                              "certificate and its CA must be trusted")
    if isinstance(exc, ssl.SSLError):
        hint = ("the port likely expects a plaintext greeting: set security to starttls "
                "(usually port 143)" if login.security == "tls"
                else "check the server's TLS versions")
        return ImapCheckError("tls_mismatch", step,
                              f"{where}: TLS handshake failed ({exc.reason}): {hint}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        seconds = f" within {waited:.0f}s" if waited is not None else ""
        return ImapCheckError("timeout", step, f"{where}: no answer{seconds}: check the host "
                              "and port, and that a firewall lets the connection through")
    if isinstance(exc, ConnectionRefusedError):
        return ImapCheckError("refused", step, f"{where}: connection refused: nothing listens "
                              f"on port {login.port}; IMAP usually uses 993 (tls) or 143 "
                              "(starttls)")
    if isinstance(exc, OSError):
        return ImapCheckError("unreachable", step,
                              f"{where}: {exc.strerror or type(exc).__name__}")
    return ImapCheckError("protocol", step, f"{where}: {type(exc).__name__}: "
                          f"{_server_text(exc, login)}")


def _server_text(exc: BaseException, login: ImapLogin) -> str:
    text = str(exc)[:300]
    # A server that echoes the command would echo the password too.
    return text.replace(login.password, "***") if login.password else text


def _close(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: BLE001, S110 - the connection is being discarded
        pass
