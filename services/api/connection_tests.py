"""Connection tests of an inbox's IMAP and SMTP settings, with a hint a person can act on.

``POST /v1/inboxes/{inbox}/imap/test`` and ``…/smtp/test`` take the stored
settings, with any fields of the request body put over them (so a person
can test before saving), and run the same steps the sync and the sender
run: :func:`messagehub.imap_client.check_login` and
:meth:`messagehub.smtp_client.SmtpDelivery.verify`. The whole test is
bounded by ``MESSAGEHUB_CONNECTION_TEST_TIMEOUT_SECONDS``. The answer is
200 whether the test passed or not, with ``ok``, the classified ``reason``
and a ``hint``. Settings that fail validation get a 422, as for saving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from messagehub import imap_client, secrets, smtp_client
from services.api import access, mail_settings
from services.api.errors import ApiError, FieldError, invalid
from services.api.state import json_body, json_response, pool, principal, state

log = logging.getLogger(__name__)


async def check_imap(request: web.Request) -> web.Response:
    body = await json_body(request, "ImapSettings", optional=True)
    async with pool(request).connection() as conn:
        inbox = await access.inbox_for(conn, request)
        stored = await mail_settings.load_imap(conn, str(inbox["id"]))
    merged = mail_settings.merge_imap(stored, {**body, "enabled": True})
    login = imap_client.ImapLogin(
        host=merged["host"], port=merged["port"], username=merged["username"],
        password=body.get("password") or _decrypt(merged["password_encrypted"], "IMAP"),
        security=merged["security"])

    settings = state(request).settings
    total = settings.connection_test_timeout_seconds
    started = time.monotonic()
    try:
        summary = await asyncio.wait_for(asyncio.to_thread(
            imap_client.check_login, login, timeout_seconds=_step_timeout(total),
            ca_file=settings.tls_ca_file), total)
        result = _passed(summary, started)
    except imap_client.ImapCheckError as exc:
        result = _failed(exc.reason, exc.step, str(exc), started,
                         imap_hint(exc.reason, login.security, login.port, str(exc)))
    except asyncio.TimeoutError:
        result = _timed_out(total, started)
    _log(inbox, "IMAP", login.address, result, request)
    return json_response(result)


async def check_smtp(request: web.Request) -> web.Response:
    body = await json_body(request, "SmtpSettings", optional=True)
    async with pool(request).connection() as conn:
        inbox = await access.inbox_for(conn, request)
        stored = await mail_settings.load_smtp(conn, str(inbox["id"]))
    merged = _merge_smtp_for_test(stored, body)
    settings = state(request).settings
    total = settings.connection_test_timeout_seconds
    started = time.monotonic()

    try:
        server = smtp_client.SmtpServer(
            host=merged["host"], port=merged["port"], username=merged["username"],
            password=body.get("password") or _decrypt(merged["password_encrypted"], "SMTP"),
            helo_domain=merged["helo_domain"], encryption=merged["encryption"],
            auth_method=merged["auth_method"])
        delivery = smtp_client.SmtpDelivery(
            command_timeout_seconds=_step_timeout(total),
            greeting_timeout_seconds=_step_timeout(total), max_attempts=1,
            default_helo=settings.message_id_domain,
            tls_context=smtp_client.tls_context(settings.tls_ca_file))
        summary = await asyncio.wait_for(delivery.verify(server), total)
        result = _passed(summary, started)
    except smtp_client.SmtpError as exc:
        result = _failed(exc.reason, None, str(exc), started,
                         smtp_hint(exc.reason, merged["encryption"], merged["port"], str(exc)))
    except asyncio.TimeoutError:
        result = _timed_out(total, started)
    _log(inbox, "SMTP", f"{merged['host']}:{merged['port']}", result, request)
    return json_response(result)


def _merge_smtp_for_test(stored: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """Return the settings to test; unlike saving, a test never needs IMAP first."""
    try:
        return mail_settings.merge_smtp(stored, body)
    except ApiError as exc:
        # Port and encryption that cannot work together are the test's result, not a 422.
        if [f.field for f in exc.fields] == ["encryption"]:
            raw = {**(stored or {}), **body}
            return {**raw, "password_encrypted": (stored or {}).get("password_encrypted"),
                    "username": raw.get("username") or "", "helo_domain": raw.get("helo_domain"),
                    "encryption": raw.get("encryption", "auto"),
                    "auth_method": raw.get("auth_method", "auto")}
        raise


def _step_timeout(total: float) -> float:
    # Each network step gets part of the budget, so that a silent server is
    # reported by the step that waited and not by the overall limit.
    return max(1.0, min(10.0, total / 2))


def _decrypt(token: str | None, service: str) -> str:
    if not token:
        return ""
    try:
        return secrets.decrypt(token)
    except secrets.SecretsError:
        raise invalid([FieldError("password", f"the stored {service} password cannot be "
                                  "decrypted with the current encryption keys: enter it again")]
                      ) from None


def _passed(summary: str, started: float) -> dict[str, Any]:
    return {"ok": True, "reason": None, "step": None, "message": summary, "hint": None,
            "seconds": round(time.monotonic() - started, 3)}


def _failed(reason: str, step: str | None, message: str, started: float,
            hint: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "step": step, "message": message, "hint": hint,
            "seconds": round(time.monotonic() - started, 3)}


def _timed_out(total: float, started: float) -> dict[str, Any]:
    return _failed("timeout", None, f"the test did not finish within {total:g}s", started,
                   "The server did not answer in time. Check the host name and port, and that "
                   "a firewall lets messagehub reach the server.")


def _log(inbox: dict[str, Any], service: str, address: str, result: dict[str, Any],
         request: web.Request) -> None:
    log.info("inbox %s: %s connection test of %s by %s: %s%s", inbox["id"], service, address,
             principal(request).name, "ok" if result["ok"] else "failed, ",
             result["reason"] or "")


# --- hints -------------------------------------------------------------------------------

_COMMON_HINTS = {
    "dns": "The server name cannot be found. Check the spelling of the host, for example "
           "{example}.",
    "timeout": "The server did not answer in time. Check the host name and port, and that a "
               "firewall lets messagehub reach the server.",
    "certificate": "The server's certificate is not trusted or is not made out to this host "
                   "name. Use the exact host name your provider documents, not an IP address "
                   "or an alias.",
    "authentication": "The login or the password is wrong. The login is often the full email "
                      "address; if you just changed the password, enter the new one.",
    "app_password": "This account needs an app password: create one in your provider's "
                    "security settings (for example Google Account, Security, App passwords) "
                    "and enter it here instead of your normal password.",
    "unreachable": "messagehub cannot reach the server. Check the host name and that the "
                   "server accepts connections from this network.",
    "protocol": "The server answered in an unexpected way. Check that the host and port "
                "belong to an {service} server.",
    "config": "These settings cannot work together; see the message for the field to change.",
}


def imap_hint(reason: str, security: str, port: int, message: str) -> str:
    """Return advice for a failed IMAP test that a person without mail expertise can follow."""
    if reason == "refused":
        return (f"Nothing answers on port {port}. IMAP usually uses port 993 with SSL/TLS or "
                "port 143 with STARTTLS.")
    if reason == "tls_mismatch":
        if security == "tls":
            return (f"Port {port} expects STARTTLS (or no encryption) at first, not SSL/TLS: "
                    "choose STARTTLS, or use port 993 with SSL/TLS.")
        if "STARTTLS" in message and "not offer" in message:
            return (f"The server on port {port} does not offer STARTTLS: choose SSL/TLS, "
                    "usually on port 993.")
        return f"Port {port} expects SSL/TLS from the start: choose SSL/TLS as security."
    if reason == "mechanism":
        if "after STARTTLS" in message:
            return "The server accepts logins only over an encrypted connection: choose STARTTLS."
        return ("The server does not allow password logins for this account. Allow IMAP access "
                "with a password (or an app password) in the provider's or server's settings; "
                "accounts that allow only OAuth sign-in cannot be used.")
    return _COMMON_HINTS[reason].format(example="imap.example.com", service="IMAP")


def smtp_hint(reason: str, encryption: str, port: int, message: str) -> str:
    """Return advice for a failed SMTP test that a person without mail expertise can follow."""
    mode = encryption if encryption != "auto" else (
        "tls" if port in smtp_client.IMPLICIT_TLS_PORTS else "starttls")
    if reason == "refused":
        return (f"Nothing answers on port {port}. SMTP submission usually uses port 587 with "
                "STARTTLS or port 465 with SSL/TLS.")
    if reason == "tls_mismatch":
        if mode == "tls":
            return f"Port {port} expects STARTTLS, not SSL/TLS: choose STARTTLS as encryption."
        if "does not offer STARTTLS" in message:
            return (f"The server on port {port} does not offer STARTTLS: choose SSL/TLS, "
                    "usually on port 465, or the provider's STARTTLS port 587.")
        if "only after STARTTLS" in message:
            return "The server asks for STARTTLS before the login: choose STARTTLS."
        return f"Port {port} expects SSL/TLS from the start: choose SSL/TLS as encryption."
    if reason == "mechanism":
        if "offers no AUTH" in message:
            return (f"The server offers no login on port {port}: use the submission port (587 "
                    "or 465), or clear the username if this server needs no login.")
        return ("The server does not offer the chosen authentication method: set "
                "authentication to auto, or to a method the message lists.")
    return _COMMON_HINTS[reason].format(example="smtp.example.com", service="SMTP")
