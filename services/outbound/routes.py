"""Which server a mail of an inbox goes through, and where its Sent copy goes.

The outbound stage calls :func:`load_route` for each send. An inbox with
enabled SMTP settings (table ``inbox_smtp``) sends through its own server
and gets a copy in its IMAP Sent folder when it has an IMAP login
(``inbox_imap``). Any other inbox only forwards: its mail goes through the
operator's relay, with the inbox address as From and the conversation's
reply address as Reply-To, so that the customer's answer comes back to
messagehub. Passwords are decrypted here, with messagehub.secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from messagehub import secrets
from messagehub.smtp_client import SmtpPermanentError, SmtpServer
from services.outbound.sentcopy import ImapAccount


@dataclass(frozen=True)
class Route:
    """How one inbox sends: the server, the rate limit and the Sent-copy login."""

    server: SmtpServer
    forwarding: bool
    max_sends_per_minute: int
    sent_copy: ImapAccount | None


async def load_route(conn: AsyncConnection[Any], inbox_id: str, *, relay: SmtpServer,
                     default_max_per_minute: int) -> Route:
    """Return the inbox's route; raise SmtpPermanentError for settings that cannot work."""
    cursor = await conn.execute(
        "SELECT * FROM inbox_smtp WHERE inbox_id = %s AND enabled", (inbox_id,))
    smtp = await cursor.fetchone()
    if smtp is None:
        return Route(server=relay, forwarding=True, max_sends_per_minute=default_max_per_minute,
                     sent_copy=None)

    server = SmtpServer(
        host=smtp["host"], port=smtp["port"], username=smtp["username"] or "",
        password=_decrypt(smtp["password_encrypted"], "SMTP", inbox_id),
        helo_domain=smtp["helo_domain"] or None, encryption=smtp["encryption"],
        auth_method=smtp["auth_method"])
    sent_copy = await _load_imap(conn, inbox_id) if smtp["save_to_sent"] else None
    return Route(server=server, forwarding=False,
                 max_sends_per_minute=smtp["max_sends_per_minute"] or default_max_per_minute,
                 sent_copy=sent_copy)


async def _load_imap(conn: AsyncConnection[Any], inbox_id: str) -> ImapAccount | None:
    cursor = await conn.execute(
        "SELECT host, port, username, password_encrypted, security, sent_folder "
        "FROM inbox_imap WHERE inbox_id = %s", (inbox_id,))
    imap = await cursor.fetchone()
    if imap is None or not imap["host"] or not imap["username"] or not imap["port"]:
        return None
    try:
        return ImapAccount(
            host=imap["host"], port=imap["port"], username=imap["username"],
            password=_decrypt(imap["password_encrypted"], "IMAP", inbox_id),
            security=imap["security"] or "tls", sent_folder=imap["sent_folder"] or None)
    except ValueError as exc:
        raise SmtpPermanentError(f"inbox {inbox_id}: IMAP settings for the Sent copy are "
                                 f"invalid: {exc}", error_class="config") from None


def _decrypt(token: str | None, service: str, inbox_id: str) -> str:
    if not token:
        return ""
    try:
        return secrets.decrypt(token)
    except secrets.SecretsError as exc:
        raise SmtpPermanentError(f"inbox {inbox_id}: the stored {service} password cannot be "
                                 f"used: {exc}", error_class="auth") from None
