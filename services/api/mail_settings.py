"""The Configuration tab of an inbox: forwarding, IMAP and SMTP, and the inbox's health.

Handlers of ``/v1/inboxes/{inbox}/imap``, ``/smtp`` and ``/health``.
IMAP settings go to ``inbox_imap``, whose trigger makes ingest reconnect
with them at once; SMTP settings go to ``inbox_smtp``, which outbound reads
for every send. Passwords are encrypted with :mod:`messagehub.secrets`
before they reach the database and are never returned: responses say only
``password_set``.

SMTP is refused until IMAP is set up and on, as the product promises: mail
sent through an inbox's own server carries no messagehub reply address, so
the customer's answers come back only through the IMAP sync. For the same
reason IMAP cannot be turned off or removed while SMTP is on.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from psycopg import AsyncConnection

from messagehub import secrets, smtp_client
from services.api import access
from services.api.errors import ApiError, FieldError, conflict, invalid
from services.api.state import json_body, json_response, pool, principal

log = logging.getLogger(__name__)

IMAP_DEFAULT_PORTS = {"tls": 993, "starttls": 143, "none": 143}
_IMAP_PUBLIC = ("host", "port", "username", "security", "folders", "after_import", "move_to")
_SMTP_PUBLIC = ("host", "port", "username", "helo_domain", "encryption", "auth_method",
                "max_sends_per_minute", "save_to_sent")


# --- IMAP -----------------------------------------------------------------------------


async def get_imap(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        inbox = await access.inbox_for(conn, request)
        return json_response(imap_json(await load_imap(conn, str(inbox["id"]))))


async def patch_imap(request: web.Request) -> web.Response:
    body = await json_body(request, "ImapSettings")
    async with pool(request).connection() as conn, conn.transaction():
        inbox = await access.inbox_for(conn, request, lock=True)
        inbox_id = str(inbox["id"])
        current = await load_imap(conn, inbox_id)
        merged = merge_imap(current, body)
        if not merged["enabled"] and await smtp_enabled(conn, inbox_id):
            raise conflict("IMAP cannot be turned off while SMTP is on, because replies to "
                           "mail sent through your SMTP server arrive only through IMAP: turn "
                           "SMTP off first", "enabled")
        await _save_imap(conn, inbox_id, merged)
        saved = imap_json(await load_imap(conn, inbox_id))
    log.info("inbox %s: IMAP settings changed by %s: %s, sync %s", inbox_id,
             principal(request).name, ", ".join(sorted(body)), "on" if merged["enabled"] else "off")
    return json_response(saved)


async def delete_imap(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn, conn.transaction():
        inbox = await access.inbox_for(conn, request, lock=True)
        if await smtp_enabled(conn, str(inbox["id"])):
            raise conflict("IMAP cannot be removed while SMTP is on: turn SMTP off first")
        await conn.execute("DELETE FROM inbox_imap WHERE inbox_id = %s", (inbox["id"],))
    log.info("inbox %s: IMAP settings removed by %s", inbox["id"], principal(request).name)
    return web.Response(status=204)


async def load_imap(conn: AsyncConnection[Any], inbox_id: str) -> dict[str, Any] | None:
    """Return the inbox's ``inbox_imap`` row, or None."""
    cursor = await conn.execute("SELECT * FROM inbox_imap WHERE inbox_id = %s", (inbox_id,))
    row: dict[str, Any] | None = await cursor.fetchone()
    return row


def merge_imap(current: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """Return the stored IMAP settings with the request's changes; raise 422 per field."""
    row = current or {}
    merged = {
        "enabled": body.get("enabled", row.get("sync_enabled", True) if current else True),
        "host": body.get("host", row.get("host")),
        "username": body.get("username", row.get("username")),
        "security": body.get("security", row.get("security") or "tls"),
        "folders": body.get("folders", row.get("sync_folders") or ["INBOX"]),
        "after_import": body.get("after_import", row.get("sync_after_import") or "leave"),
        "move_to": body.get("move_to", row.get("sync_move_to")),
        "password_encrypted": _encrypt(body["password"]) if "password" in body
        else row.get("password_encrypted"),
    }
    merged["port"] = body.get("port", row.get("port") or IMAP_DEFAULT_PORTS[merged["security"]])
    _check_imap(merged)
    return merged


def _check_imap(merged: dict[str, Any]) -> None:
    errors: list[FieldError] = []
    if merged["enabled"]:
        errors += [FieldError(name, "is required to turn IMAP on")
                   for name in ("host", "username") if not merged[name]]
        if not merged["password_encrypted"]:
            errors.append(FieldError("password", "is required to turn IMAP on"))
    if merged["security"] == "none" and merged["host"] and not smtp_client.is_loopback(
            merged["host"]):
        errors.append(FieldError("security", "none sends the password in plain text and is "
                                 "allowed only for a server on this machine: choose tls or "
                                 "starttls"))
    if merged["after_import"] == "move" and not merged["move_to"]:
        errors.append(FieldError("move_to", "is required when after_import is move"))
    if errors:
        raise invalid(errors)


async def _save_imap(conn: AsyncConnection[Any], inbox_id: str, merged: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, security, "
        "sync_enabled, sync_folders, sync_after_import, sync_move_to) VALUES (%(inbox_id)s, "
        "%(host)s, %(port)s, %(username)s, %(password_encrypted)s, %(security)s, %(enabled)s, "
        "%(folders)s, %(after_import)s, %(move_to)s) ON CONFLICT (inbox_id) DO UPDATE SET "
        "host = EXCLUDED.host, port = EXCLUDED.port, username = EXCLUDED.username, "
        "password_encrypted = EXCLUDED.password_encrypted, security = EXCLUDED.security, "
        "sync_enabled = EXCLUDED.sync_enabled, sync_folders = EXCLUDED.sync_folders, "
        "sync_after_import = EXCLUDED.sync_after_import, sync_move_to = EXCLUDED.sync_move_to",
        {**merged, "inbox_id": inbox_id})


def imap_json(row: dict[str, Any] | None) -> dict[str, Any]:
    """Return the public view of IMAP settings: never the password, only whether one is set."""
    if row is None or not row.get("host"):
        return {"configured": False, "enabled": False, "password_set": False}
    return {"configured": True, "enabled": row["sync_enabled"], "host": row["host"],
            "port": row["port"], "username": row["username"],
            "password_set": bool(row["password_encrypted"]), "security": row["security"],
            "folders": list(row.get("sync_folders") or []),
            "after_import": row.get("sync_after_import"), "move_to": row.get("sync_move_to"),
            "updated_at": row.get("updated_at")}


async def imap_ready(conn: AsyncConnection[Any], inbox_id: str) -> bool:
    """Tell whether the inbox's IMAP is set up and on, as SMTP requires."""
    row = await load_imap(conn, inbox_id)
    return bool(row and row.get("sync_enabled") and row.get("host") and row.get("username")
                and row.get("password_encrypted"))


# --- SMTP -----------------------------------------------------------------------------


async def get_smtp(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        inbox = await access.inbox_for(conn, request)
        return json_response(smtp_json(await load_smtp(conn, str(inbox["id"]))))


async def patch_smtp(request: web.Request) -> web.Response:
    body = await json_body(request, "SmtpSettings")
    async with pool(request).connection() as conn, conn.transaction():
        inbox = await access.inbox_for(conn, request, lock=True)
        inbox_id = str(inbox["id"])
        merged = merge_smtp(await load_smtp(conn, inbox_id), body)
        if merged["enabled"] and not await imap_ready(conn, inbox_id):
            raise conflict("set up IMAP first: SMTP needs IMAP, because the customers' answers "
                           "to mail sent through your SMTP server arrive in your mailbox, and "
                           "messagehub reads them from there", "enabled")
        await _save_smtp(conn, inbox_id, merged)
        saved = smtp_json(await load_smtp(conn, inbox_id))
    log.info("inbox %s: SMTP settings changed by %s: %s, sending %s", inbox_id,
             principal(request).name, ", ".join(sorted(body)),
             "through it" if merged["enabled"] else "through the relay")
    return json_response(saved)


async def delete_smtp(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn, conn.transaction():
        inbox = await access.inbox_for(conn, request, lock=True)
        await conn.execute("DELETE FROM inbox_smtp WHERE inbox_id = %s", (inbox["id"],))
    log.info("inbox %s: SMTP settings removed by %s", inbox["id"], principal(request).name)
    return web.Response(status=204)


async def load_smtp(conn: AsyncConnection[Any], inbox_id: str) -> dict[str, Any] | None:
    """Return the inbox's ``inbox_smtp`` row, or None."""
    cursor = await conn.execute("SELECT * FROM inbox_smtp WHERE inbox_id = %s", (inbox_id,))
    row: dict[str, Any] | None = await cursor.fetchone()
    return row


async def smtp_enabled(conn: AsyncConnection[Any], inbox_id: str) -> bool:
    """Tell whether the inbox sends through its own SMTP server."""
    row = await load_smtp(conn, inbox_id)
    return bool(row and row["enabled"])


def merge_smtp(current: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """Return the stored SMTP settings with the request's changes; raise 422 per field."""
    row = current or {}
    merged: dict[str, Any] = {"enabled": body.get("enabled", row.get("enabled", True))}
    defaults = {"username": "", "encryption": "auto", "auth_method": "auto",
                "save_to_sent": True}
    for name in _SMTP_PUBLIC:
        merged[name] = body.get(name, row.get(name, defaults.get(name)))
    merged["username"] = (merged["username"] or "").strip()
    merged["password_encrypted"] = (_encrypt(body["password"]) if "password" in body
                                    else row.get("password_encrypted"))
    if not merged["username"]:
        merged["password_encrypted"] = None
    _check_smtp(merged)
    return merged


def _check_smtp(merged: dict[str, Any]) -> None:
    errors = [FieldError(name, "is required") for name in ("host", "port") if not merged[name]]
    if merged["username"] and not merged["password_encrypted"]:
        errors.append(FieldError("password", "is required when a username is set"))
    if errors:
        raise invalid(errors)
    try:
        smtp_client.check_settings(host=merged["host"], port=merged["port"],
                                   username=merged["username"],
                                   encryption=merged["encryption"],
                                   auth_method=merged["auth_method"])
    except smtp_client.SmtpError as exc:
        raise invalid([FieldError("encryption", str(exc))]) from None


async def _save_smtp(conn: AsyncConnection[Any], inbox_id: str, merged: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO inbox_smtp (inbox_id, enabled, host, port, username, password_encrypted, "
        "helo_domain, encryption, auth_method, max_sends_per_minute, save_to_sent) VALUES "
        "(%(inbox_id)s, %(enabled)s, %(host)s, %(port)s, %(username)s, %(password_encrypted)s, "
        "%(helo_domain)s, %(encryption)s, %(auth_method)s, %(max_sends_per_minute)s, "
        "%(save_to_sent)s) ON CONFLICT (inbox_id) DO UPDATE SET enabled = EXCLUDED.enabled, "
        "host = EXCLUDED.host, port = EXCLUDED.port, username = EXCLUDED.username, "
        "password_encrypted = EXCLUDED.password_encrypted, helo_domain = EXCLUDED.helo_domain, "
        "encryption = EXCLUDED.encryption, auth_method = EXCLUDED.auth_method, "
        "max_sends_per_minute = EXCLUDED.max_sends_per_minute, "
        "save_to_sent = EXCLUDED.save_to_sent, updated_at = now()",
        {**merged, "inbox_id": inbox_id})


def smtp_json(row: dict[str, Any] | None) -> dict[str, Any]:
    """Return the public view of SMTP settings: never the password, only whether one is set."""
    if row is None:
        return {"configured": False, "enabled": False, "password_set": False}
    return {"configured": True, "enabled": row["enabled"],
            **{name: row[name] for name in _SMTP_PUBLIC},
            "password_set": bool(row["password_encrypted"]), "updated_at": row["updated_at"]}


# --- the whole tab and health ---------------------------------------------------------


async def configuration_json(conn: AsyncConnection[Any], inbox: dict[str, Any]) -> dict[str, Any]:
    """Return the Configuration tab: the forwarding address, IMAP and SMTP."""
    inbox_id = str(inbox["id"])
    return {"forwarding_address": inbox["forwarding_address"],
            "imap": imap_json(await load_imap(conn, inbox_id)),
            "smtp": smtp_json(await load_smtp(conn, inbox_id))}


async def health_json(conn: AsyncConnection[Any], inbox: dict[str, Any]) -> dict[str, Any]:
    """Return the inbox's health: the IMAP sync per folder and the latest send failure."""
    inbox_id = str(inbox["id"])
    cursor = await conn.execute(
        "SELECT folder, state, last_sync_at, error_class, last_error, last_error_at, "
        "error_since, consecutive_failures, next_attempt_at FROM imap_sync_health "
        "WHERE inbox_id = %s ORDER BY folder", (inbox_id,))
    folders = await cursor.fetchall()
    failing = [f for f in folders if f["error_since"] is not None]
    latest_error = max(failing, key=lambda f: f["last_error_at"] or f["error_since"], default=None)
    synced = [f["last_sync_at"] for f in folders if f["last_sync_at"] is not None]

    cursor = await conn.execute(
        "SELECT finished_at, error_class, smtp_response FROM send_ledger WHERE inbox_id = %s "
        "AND status = 'failed' AND error_class <> 'rejected' AND finished_at > coalesce(("
        "SELECT max(finished_at) FROM send_ledger WHERE inbox_id = %s AND status = 'sent'), "
        "'-infinity') ORDER BY finished_at DESC LIMIT 1", (inbox_id, inbox_id))
    send_failure = await cursor.fetchone()

    imap = imap_json(await load_imap(conn, inbox_id))
    return {
        "status": "error" if failing or send_failure else (
            "ok" if imap["enabled"] or folders else "forwarding_only"),
        "last_sync_at": min(synced) if synced else None,
        "last_error": latest_error["last_error"] if latest_error else None,
        "error_since": min(f["error_since"] for f in failing) if failing else None,
        "imap_folders": [dict(f) for f in folders],
        "smtp_failure": dict(send_failure) if send_failure else None,
    }


def _encrypt(password: str) -> str:
    if not secrets.is_configured():
        raise ApiError(503, "encryption_not_configured",
                       "passwords cannot be stored: the API has no encryption keys; set "
                       "MESSAGEHUB_ENCRYPTION_KEYS and restart it")
    return secrets.encrypt(password)
