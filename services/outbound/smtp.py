"""Handing built mail to an SMTP server, with retries on temporary failures.

:class:`SmtpDelivery` is used by the outbound stage. A temporary failure
(connection refused or dropped, timeout, a 4xx reply) is retried with
exponential backoff; a 5xx reply, or temporary failures that outlast the
retry budget, raise :class:`SmtpPermanentError`, which the stage records as
``mail.failed``. Credentials never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiosmtplib

log = logging.getLogger(__name__)


class SmtpPermanentError(Exception):
    """The server rejected the mail for good, or it could not be delivered in time."""

    retriable = False

    def __init__(self, message: str, *, error_class: str, code: int | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.code = code


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    helo_domain: str | None = None
    # "none", "starttls" or "tls" (implicit TLS, usually port 465)
    encryption: str = "none"


class SmtpDelivery:
    def __init__(self, server: SmtpServer, *, timeout_seconds: float = 30.0,
                 max_attempts: int = 8, first_backoff_seconds: float = 1.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self._server = server
        self._timeout = timeout_seconds
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff_seconds
        self._tls_context = tls_context or ssl.create_default_context()

    async def send(self, raw: bytes, *, sender: str, recipients: list[str]) -> str:
        """Send ``raw``; return the server's reply to the end of DATA."""
        backoff = self._first_backoff
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await self._send_once(raw, sender, recipients)
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    raise SmtpPermanentError(f"{exc.code} {exc.message}", error_class="rejected",
                                             code=exc.code) from None
                reason = f"{exc.code} {exc.message}"
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"

            if attempt == self._max_attempts:
                break
            log.warning("smtp: %s:%d attempt %d/%d failed, retrying in %.1fs: %s",
                        self._server.host, self._server.port, attempt, self._max_attempts,
                        backoff, reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

        raise SmtpPermanentError(
            f"gave up after {self._max_attempts} attempts: {reason}", error_class="temporary")

    async def _send_once(self, raw: bytes, sender: str, recipients: list[str]) -> str:
        server = self._server
        client = aiosmtplib.SMTP(
            hostname=server.host, port=server.port, timeout=self._timeout,
            local_hostname=server.helo_domain, use_tls=server.encryption == "tls",
            start_tls=server.encryption == "starttls", tls_context=self._tls_context)
        async with client:
            if server.username:
                await client.login(server.username, server.password or "")
            errors, response = await client.sendmail(sender, recipients, raw)
        if errors:
            refused = ", ".join(f"{address}: {code} {text}"
                                for address, (code, text) in errors.items())
            raise SmtpPermanentError(f"recipients refused: {refused}", error_class="rejected")
        return response
