"""SMTP servers on loopback for the outbound tests, set up like real providers.

:class:`SmtpTestServer` runs an aiosmtpd server in a background thread with
its own event loop, so both async unit tests and synchronous stack tests can
use it. Modes, as in the port/TLS matrix of real providers:

- ``implicit_tls``: the TLS handshake comes first, no STARTTLS (port 465);
- ``starttls``: plaintext greeting, STARTTLS offered, AUTH offered only
  after STARTTLS (port 587);
- ``relay``: plaintext greeting, STARTTLS offered, no AUTH at all (port 25).

Every session is recorded: how often STARTTLS was sent, each AUTH with its
mechanism and whether the connection had TLS at that moment, and each mail.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

MODES = ("implicit_tls", "starttls", "relay")


@dataclass
class AuthAttempt:
    mechanism: str
    over_tls: bool
    login: str | None = None
    success: bool = False


@dataclass
class SessionRecord:
    starttls_count: int = 0
    auth: list[AuthAttempt] = field(default_factory=list)
    tls_at_mail: bool = False


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    over_tls: bool
    login: str | None


class _RecordingSMTP(SMTP):
    """aiosmtpd's server with a record of STARTTLS and AUTH per session."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.record = SessionRecord()
        handler.sessions.append(self.record)

    @property
    def has_tls(self) -> bool:
        return self._tls_protocol is not None or self.transport is not None and \
            self.transport.get_extra_info("sslcontext") is not None

    async def smtp_STARTTLS(self, arg: str) -> None:
        self.record.starttls_count += 1
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        mechanism = arg.split()[0].upper() if arg else ""
        attempt = AuthAttempt(mechanism, self.has_tls)
        self.record.auth.append(attempt)
        await super().smtp_AUTH(arg)
        attempt.success = bool(self.session and self.session.authenticated)
        attempt.login = _text(self.session.login_data) if self.session else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None


class _Handler:
    def __init__(self, server: SmtpTestServer) -> None:
        self.server = server
        self.sessions: list[SessionRecord] = []

    async def handle_DATA(self, smtp: _RecordingSMTP, session: Session,
                          envelope: Envelope) -> str:
        if self.server.data_reply is not None:
            return self.server.data_reply
        self.server.mails.append(ReceivedMail(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"", over_tls=smtp.has_tls,
            login=_text(session.login_data)))
        return "250 2.0.0 Ok: queued"

    async def auth_CRAM__MD5(self, smtp: _RecordingSMTP, args: list[str]) -> AuthResult:
        challenge = f"<{secrets.token_hex(8)}@localhost>".encode()
        response = await smtp.challenge_auth(challenge)
        if not isinstance(response, bytes) or b" " not in response:
            return AuthResult(success=False, handled=False)
        login, digest = response.decode().rsplit(" ", 1)
        expected = hmac.new(self.server.password.encode(), challenge, hashlib.md5).hexdigest()
        ok = login == self.server.username and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login.encode(), b""))


class SmtpTestServer:
    """One SMTP server on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, mode: str, *, cert_file: Path, key_file: Path,
                 username: str = "agent@acme.example", password: str = "correct horse",
                 mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN", "CRAM-MD5"),
                 auth_reply: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"invalid mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.username = username
        self.password = password
        self.mechanisms = mechanisms if mode != "relay" else ()
        # A reply that replaces every AUTH outcome, e.g. an app-password demand.
        self.auth_reply = auth_reply
        # A reply that replaces the 250 to DATA, e.g. "550 5.1.1 No such user".
        self.data_reply: str | None = None
        self.mails: list[ReceivedMail] = []
        self._handler = _Handler(self)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert_file, key_file)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def sessions(self) -> list[SessionRecord]:
        return self._handler.sessions

    def __enter__(self) -> SmtpTestServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        excluded = [m for m in ("LOGIN", "PLAIN", "CRAM-MD5") if m not in self.mechanisms]
        implicit = self.mode == "implicit_tls"

        def factory() -> _RecordingSMTP:
            return _RecordingSMTP(
                self._handler, hostname="localhost", loop=self._loop,
                tls_context=None if implicit else self._context,
                # aiosmtpd counts only STARTTLS as TLS, so an implicit-TLS
                # server must be told that AUTH is safe from the start.
                auth_require_tls=not implicit, auth_exclude_mechanism=excluded,
                authenticator=self._authenticate)

        self._server = await self._loop.create_server(
            factory, host="127.0.0.1", port=0, ssl=self._context if implicit else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _authenticate(self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if self.auth_reply is not None:
            return AuthResult(success=False, handled=False, message=self.auth_reply)
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.username
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)
