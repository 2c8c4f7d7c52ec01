"""Handing built mail to an SMTP server: TLS, authentication, retries and error classes.

The outbound stage calls :meth:`SmtpDelivery.send` with the :class:`SmtpServer`
of the sending inbox (its own server, or the operator's relay), and the
API's connection test calls :meth:`SmtpDelivery.verify` and
:func:`check_settings`; it lives in the shared package because a service
never imports another. The session
is driven step by step so that each step can fail with a clear, classified
error instead of a hang:

1. connect; with implicit TLS the handshake comes first. The greeting must
   arrive within ``greeting_timeout_seconds``: a server that accepts the
   connection and stays silent is waiting for a TLS handshake;
2. EHLO, then STARTTLS when the mode asks for it, exactly once, then EHLO
   again (RFC 3207 discards what the server said before TLS);
3. AUTH only when a username is set, only over TLS (or on a loopback relay
   the operator set to "none"), with the pinned mechanism or the best one
   the server offers;
4. MAIL, RCPT, DATA.

Errors are :class:`SmtpError` with ``error_class`` (rejected, auth, tls,
connect, timeout), the SMTP ``code`` when the server answered, and the
finer ``reason`` that a connection test shows (see :data:`REASONS`).
Temporary ones (4xx replies, refused or dropped connections, timeouts) are
retried with exponential backoff; permanent ones (5xx replies, TLS and
authentication failures, settings that cannot work) are raised at once.
An open connection is kept per server for a short idle time and reused by
the next send. Passwords never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import aiosmtplib

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ENCRYPTIONS = ("auto", "tls", "starttls", "none")
AUTH_METHODS = ("auto", "login", "plain", "cram-md5")
IMPLICIT_TLS_PORTS = frozenset({465})
STARTTLS_PORTS = frozenset({25, 587})
MAX_BACKOFF_SECONDS = 60.0
# Mechanisms in the order "auto" tries them: CRAM-MD5 keeps the password
# off the wire, and PLAIN is one round trip where LOGIN needs two.
_AUTO_MECHANISMS = ("cram-md5", "plain", "login")
# Reply texts that mean the account must use an app password (Gmail
# 534 5.7.9, Microsoft 365 535 5.7.139 when basic authentication is off).
_APP_PASSWORD_HINTS = ("application-specific password", "app password", "5.7.9",
                       "basic authentication is disabled", "5.7.139")
# The finer cause of a failure, shared with messagehub.imap_client: the host
# name does not resolve, nothing listens on the port, no response in time, the
# TLS mode does not match the port, the certificate is not trusted, login
# and password were rejected, the account needs an app password, the server
# offers no usable login mechanism, another network or protocol failure, or
# settings that cannot work.
REASONS = ("dns", "refused", "timeout", "tls_mismatch", "certificate", "authentication",
           "app_password", "mechanism", "unreachable", "protocol", "config")


class SmtpError(Exception):
    """A send failed; ``error_class`` says why and ``retriable`` whether a retry can help."""

    retriable = False

    def __init__(self, message: str, *, error_class: str, code: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.code = code
        self.reason = reason or _DEFAULT_REASONS.get(error_class, "protocol")


_DEFAULT_REASONS = {"auth": "authentication", "tls": "tls_mismatch", "connect": "unreachable",
                    "timeout": "timeout", "config": "config", "rejected": "protocol"}


class SmtpPermanentError(SmtpError):
    """The server rejected the mail for good, or the settings cannot work; the stage records ``mail.failed``."""


class SmtpTemporaryError(SmtpError):
    """The server or the network failed for now; the send is tried again."""

    retriable = True


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to send: one inbox's SMTP settings or the operator's relay."""

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    helo_domain: str | None = None
    encryption: str = "auto"
    auth_method: str = "auto"

    def __post_init__(self) -> None:
        check_settings(host=self.host, port=self.port, username=self.username,
                       encryption=self.encryption, auth_method=self.auth_method)

    @property
    def address(self) -> str:
        """The server as ``host:port``, for messages."""
        return f"{self.host}:{self.port}"

    @property
    def tls_mode(self) -> str:
        """The TLS mode in effect: tls (implicit), starttls or none."""
        if self.encryption != "auto":
            return self.encryption
        return "tls" if self.port in IMPLICIT_TLS_PORTS else "starttls"


def check_settings(*, host: str, port: int, username: str, encryption: str,
                   auth_method: str) -> None:
    """Raise SmtpPermanentError with a hint for SMTP settings that cannot work.

    The control plane can call this before saving; the stage meets the same
    errors when a bad row reaches it.
    """
    if not host or any(character.isspace() for character in host):
        raise _settings_error(f"invalid SMTP host {host!r}: expected a host name or IP address")
    if not 1 <= port <= 65535:
        raise _settings_error(f"invalid SMTP port {port!r}: expected 1 to 65535")
    if encryption not in ENCRYPTIONS:
        raise _settings_error(f"invalid SMTP encryption {encryption!r}: expected one of "
                              f"{', '.join(ENCRYPTIONS)}")
    if auth_method not in AUTH_METHODS:
        raise _settings_error(f"invalid SMTP authentication method {auth_method!r}: expected "
                              f"one of {', '.join(AUTH_METHODS)}")

    if encryption == "tls" and port in STARTTLS_PORTS:
        raise _settings_error(f"port {port} expects STARTTLS, not implicit TLS: set encryption "
                              "to starttls or auto", error_class="tls", reason="tls_mismatch")
    if encryption in ("starttls", "none") and port in IMPLICIT_TLS_PORTS:
        raise _settings_error(f"port {port} expects implicit TLS: set encryption to tls or auto",
                              error_class="tls", reason="tls_mismatch")
    if encryption == "none" and username and not is_loopback(host):
        raise _settings_error(f"{host}:{port}: AUTH is never sent over plaintext: set "
                              "encryption to starttls or tls", error_class="tls", reason="config")


def _settings_error(message: str, *, error_class: str = "config",
                    reason: str = "config") -> SmtpPermanentError:
    return SmtpPermanentError(message, error_class=error_class, reason=reason)


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names this machine (localhost or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Return a verifying client context that also trusts the CA certificates in ``ca_file``."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    last_used: float


class SmtpDelivery:
    """Sends mail to SMTP servers, keeping one idle connection per server for reuse."""

    def __init__(self, *, command_timeout_seconds: float = 30.0,
                 greeting_timeout_seconds: float = 10.0, max_attempts: int = 8,
                 first_backoff_seconds: float = 1.0, default_helo: str = "localhost",
                 tls_context: ssl.SSLContext | None = None, idle_seconds: float = 20.0) -> None:
        if max_attempts < 1:
            raise ValueError(f"invalid max_attempts {max_attempts!r}: expected at least 1")
        self._command_timeout = command_timeout_seconds
        self._greeting_timeout = greeting_timeout_seconds
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff_seconds
        self._default_helo = default_helo
        self._tls_context = tls_context or ssl.create_default_context()
        self._idle_seconds = idle_seconds
        self._connections: dict[SmtpServer, _Connection] = {}
        self._locks: dict[SmtpServer, asyncio.Lock] = {}

    async def send(self, server: SmtpServer, raw: bytes, *, sender: str,
                   recipients: list[str]) -> str:
        """Send ``raw``; return the server's reply to the end of DATA, e.g. "250 2.0.0 Ok".

        Raises SmtpPermanentError when the mail cannot be delivered to the
        server, also after the temporary failures outlasted the attempts.
        """
        backoff = self._first_backoff
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._send_once(server, raw, sender, recipients)
            except SmtpTemporaryError as exc:
                last_error = exc
            if attempt == self._max_attempts:
                break
            log.warning("smtp: %s attempt %d/%d failed, retrying in %.1fs: %s", server.address,
                        attempt, self._max_attempts, backoff, last_error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

        raise SmtpPermanentError(
            f"gave up after {self._max_attempts} attempts: {last_error}",
            error_class=last_error.error_class, code=last_error.code,
            reason=last_error.reason) from None

    async def verify(self, server: SmtpServer) -> str:
        """Connect, negotiate TLS and log in as a send would, then quit; return a summary.

        Raises SmtpError with the class of the first step that failed, for
        connection tests of the settings screen.
        """
        client = await self._open(server)
        tls = "TLS" if _uses_tls(client) else "no TLS"
        auth = f"authenticated as {server.username!r}" if server.username else "no AUTH"
        await _quit(client)
        return f"{server.address}: connected with {tls}, {auth}"

    async def close(self) -> None:
        """Close every idle connection."""
        for connection in self._connections.values():
            await _quit(connection.client)
        self._connections.clear()

    async def _send_once(self, server: SmtpServer, raw: bytes, sender: str,
                         recipients: list[str]) -> str:
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            client, reused = await self._connection(server)
            try:
                response = await self._transaction(client, server, raw, sender, recipients)
            except SmtpTemporaryError as exc:
                self._drop(server)
                if not (reused and exc.error_class == "connect"):
                    raise
                # The server closed the idle connection: one fresh try, not an attempt.
                client, _ = await self._connection(server)
                response = await self._transaction(client, server, raw, sender, recipients)
            except BaseException:
                self._drop(server)
                raise
            self._connections[server] = _Connection(client, time.monotonic())
            return response

    async def _connection(self, server: SmtpServer) -> tuple[aiosmtplib.SMTP, bool]:
        kept = self._connections.pop(server, None)
        if kept is not None:
            if kept.client.is_connected and time.monotonic() - kept.last_used < self._idle_seconds:
                return kept.client, True
            await _quit(kept.client)
        return await self._open(server), False

    def _drop(self, server: SmtpServer) -> None:
        kept = self._connections.pop(server, None)
        if kept is not None:
            kept.client.close()

    async def _open(self, server: SmtpServer) -> aiosmtplib.SMTP:
        """Return a client that is connected, in TLS as configured, and logged in."""
        client = aiosmtplib.SMTP(
            hostname=server.host, port=server.port, timeout=self._command_timeout,
            local_hostname=server.helo_domain or self._default_helo,
            use_tls=server.tls_mode == "tls", start_tls=False, tls_context=self._tls_context)
        try:
            await self._step(server, "connect", client.connect(timeout=self._greeting_timeout))
            await self._step(server, "EHLO", client.ehlo())
            if server.tls_mode == "starttls":
                await self._starttls(client, server)
            if server.username:
                await self._authenticate(client, server)
        except BaseException:
            client.close()
            raise
        log.debug("smtp: %s connected, %s", server.address,
                  "TLS" if _uses_tls(client) else "no TLS")
        return client

    async def _starttls(self, client: aiosmtplib.SMTP, server: SmtpServer) -> None:
        # STARTTLS on a connection that already has TLS fails with "Connection
        # already using TLS", so it is sent only on a plaintext connection.
        if _uses_tls(client):
            return
        if not client.supports_extension("starttls"):
            raise SmtpPermanentError(
                f"{server.address} does not offer STARTTLS: check the port, or set encryption "
                "to tls if the server expects implicit TLS", error_class="tls")
        await self._step(server, "STARTTLS", client.starttls())
        await self._step(server, "EHLO after STARTTLS", client.ehlo())

    async def _authenticate(self, client: aiosmtplib.SMTP, server: SmtpServer) -> None:
        if not _uses_tls(client) and not (server.tls_mode == "none" and is_loopback(server.host)):
            raise SmtpPermanentError(f"{server.address}: AUTH is never sent over plaintext: set "
                                     "encryption to starttls or tls", error_class="tls")

        offered = [method.lower() for method in client.supported_auth_methods]
        if not offered and not _uses_tls(client) and client.supports_extension("starttls"):
            raise SmtpPermanentError(
                f"{server.address} offers AUTH only after STARTTLS: set encryption to starttls",
                error_class="tls")
        if not client.supports_extension("auth") or not offered:
            raise SmtpPermanentError(
                f"{server.address} offers no AUTH to this connection: clear the username for a "
                "relay that needs no login, or use the submission port (587 or 465)",
                error_class="auth", reason="mechanism")

        mechanism = _choose_mechanism(server, offered)
        authenticate = {"cram-md5": client.auth_crammd5, "plain": client.auth_plain,
                        "login": client.auth_login}[mechanism]
        await self._step(server, f"AUTH {mechanism.upper()}",
                         authenticate(server.username, server.password))

    async def _transaction(self, client: aiosmtplib.SMTP, server: SmtpServer, raw: bytes,
                           sender: str, recipients: list[str]) -> str:
        errors, response = await self._step(server, "sending",
                                            client.sendmail(sender, recipients, raw))
        if errors:
            refused = ", ".join(f"{address}: {code} {text}"
                                for address, (code, text) in errors.items())
            codes = [code for code, _ in errors.values()]
            raise SmtpPermanentError(f"{server.address} refused recipients: {refused}",
                                     error_class="rejected", code=codes[0])
        # aiosmtplib returns the text of the final reply; DATA succeeds only with 250.
        return f"250 {response}"

    async def _step(self, server: SmtpServer, step: str, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except SmtpError:
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise _auth_error(server, exc) from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise classify(exc, server, step, greeting_timeout=self._greeting_timeout) from None


def _uses_tls(client: aiosmtplib.SMTP) -> bool:
    return client.get_transport_info("sslcontext") is not None


def _choose_mechanism(server: SmtpServer, offered: list[str]) -> str:
    if server.auth_method != "auto":
        if server.auth_method not in offered:
            raise SmtpPermanentError(
                f"{server.address} does not offer AUTH {server.auth_method.upper()}; it offers "
                f"{', '.join(m.upper() for m in offered)}: set the authentication method to "
                "auto or to one of those", error_class="auth", reason="mechanism")
        return server.auth_method
    for mechanism in _AUTO_MECHANISMS:
        if mechanism in offered:
            return mechanism
    raise SmtpPermanentError(
        f"{server.address} offers only AUTH {', '.join(m.upper() for m in offered)}, which "
        "messagehub does not support: enable PLAIN, LOGIN or CRAM-MD5", error_class="auth",
        reason="mechanism")


def _auth_error(server: SmtpServer, exc: aiosmtplib.SMTPAuthenticationError) -> SmtpError:
    reply = f"{exc.code} {exc.message}"
    if exc.code < 500:
        return SmtpTemporaryError(f"{server.address}: authentication failed for now: {reply}",
                                  error_class="auth", code=exc.code)
    if any(hint in exc.message.lower() for hint in _APP_PASSWORD_HINTS):
        return SmtpPermanentError(
            f"{server.address}: authentication failed for {server.username!r}: {reply}. This "
            "account needs an app password: create one in the provider's security settings "
            "and enter it instead of the account password", error_class="auth", code=exc.code,
            reason="app_password")
    return SmtpPermanentError(
        f"{server.address}: authentication failed for {server.username!r}: {reply}. Check the "
        "username and password", error_class="auth", code=exc.code)


def classify(exc: BaseException, server: SmtpServer, step: str, *,
             greeting_timeout: float) -> SmtpError:
    """Return the SmtpError for a library or network error raised during ``step``."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    where = f"{server.address}: {step} failed"

    if isinstance(cause, ssl.SSLCertVerificationError):
        return SmtpPermanentError(
            f"{where}: the server's certificate failed verification ({cause.verify_message}): "
            "the host name must match the certificate and its CA must be trusted",
            error_class="tls", reason="certificate")
    if isinstance(cause, ssl.SSLError):
        hint = (f"port {server.port} does not speak implicit TLS; it likely expects STARTTLS: "
                "set encryption to starttls" if server.tls_mode == "tls"
                else "check the server's TLS versions and ciphers")
        return SmtpPermanentError(f"{where}: TLS handshake failed ({cause.reason}): {hint}",
                                  error_class="tls", reason="tls_mismatch")
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError) and "ready message" in str(exc):
        return SmtpPermanentError(
            f"{where}: the server accepted the connection but sent no SMTP greeting within "
            f"{greeting_timeout:g}s: it likely expects implicit TLS (as port 465 does): set "
            "encryption to tls", error_class="tls")

    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        code = exc.recipients[0].code if exc.recipients else None
        error = SmtpPermanentError if code is None or code >= 500 else SmtpTemporaryError
        return error(f"{where}: recipients refused: {refused}", error_class="rejected", code=code)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        error = SmtpPermanentError if exc.code >= 500 else SmtpTemporaryError
        return error(f"{where}: {exc.code} {exc.message}", error_class="rejected", code=exc.code)

    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return SmtpTemporaryError(f"{where}: timed out: {exc}", error_class="timeout")
    return SmtpTemporaryError(f"{where}: {type(exc).__name__}: {exc}", error_class="connect",
                              reason=_network_reason(cause))


def _network_reason(cause: BaseException) -> str:
    """Return the reason of a failed connect: dns, refused or unreachable."""
    if isinstance(cause, socket.gaierror):
        return "dns"
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    return "unreachable"


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=5.0)
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        client.close()
