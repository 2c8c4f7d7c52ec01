"""What only admins do: API tokens, dead letters and the rotation of the encryption key.

Handlers of ``/v1/tokens``, ``/v1/dead-letters`` and
``/v1/encryption/rotate``. Dead letters are read from the stages'
dead-letter topics on each request (see :mod:`services.api.dead_letters`).
A retry writes the original record back to its source topic through the
outbox, in the transaction that records the retry, so that a dead letter
is retried once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from messagehub import ids, secrets
from services.api import access, auth, dead_letters
from services.api.errors import ApiError, FieldError, conflict, invalid, not_found
from services.api.state import json_body, json_response, pool, principal, state

log = logging.getLogger(__name__)

_UUID_LENGTH = 36


# --- tokens --------------------------------------------------------------------------


async def list_tokens(request: web.Request) -> web.Response:
    async with pool(request).connection() as conn:
        cursor = await conn.execute(
            "SELECT t.id, t.name, t.scope, t.agent_id, a.email AS agent, t.created_at, "
            "t.last_used_at, t.revoked_at FROM api_tokens t LEFT JOIN agents a "
            "ON a.id = t.agent_id ORDER BY t.created_at, t.id")
        rows = await cursor.fetchall()
    return json_response({"tokens": [_token_json(row) for row in rows]})


async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request, "TokenCreate")
    token = auth.new_token()
    async with pool(request).connection() as conn, conn.transaction():
        agent_id = await _token_agent(conn, body)
        cursor = await conn.execute(
            "INSERT INTO api_tokens (id, name, scope, token_sha256, agent_id) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id, name, scope, agent_id, created_at, "
            "last_used_at, revoked_at, (SELECT email FROM agents WHERE id = agent_id) AS agent",
            (ids.new_id(), body["name"].strip(), body["scope"], auth.token_digest(token),
             agent_id))
        row = await cursor.fetchone()
    assert row is not None
    log.info("token %s: created %r with scope %s by %s", row["id"], row["name"], row["scope"],
             principal(request).name)
    # The only time the token itself is shown.
    return json_response({**_token_json(row), "token": token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"].lower()
    if len(token_id) != _UUID_LENGTH:
        raise not_found("token", token_id)
    async with pool(request).connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id::text = %s RETURNING id", (token_id,))
        if await cursor.fetchone() is None:
            raise not_found("token", token_id)
    log.info("token %s: revoked by %s", token_id, principal(request).name)
    return web.Response(status=204)


async def _token_agent(conn: Any, body: dict[str, Any]) -> str | None:
    reference = (body.get("agent") or "").strip()
    if body["scope"] != "agent":
        if reference:
            raise invalid([FieldError("agent", "is only for tokens with scope agent")])
        return None
    if not reference:
        raise invalid([FieldError("agent", "is required for scope agent")])
    agent = await access.find_agent(conn, reference)
    if agent is None:
        raise invalid([FieldError("agent", "no agent has this id or email")])
    return str(agent["id"])


def _token_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "scope": row["scope"],
            "agent_id": str(row["agent_id"]) if row["agent_id"] else None,
            "agent": row["agent"], "created_at": row["created_at"],
            "last_used_at": row["last_used_at"], "revoked_at": row["revoked_at"]}


# --- dead letters --------------------------------------------------------------------


async def list_dead_letters(request: web.Request) -> web.Response:
    stage, limit = _dead_letter_filters(request)
    letters = await asyncio.to_thread(dead_letters.read, state(request).settings.kafka_bootstrap,
                                      dead_letters.topics_of(stage))
    async with pool(request).connection() as conn:
        retried = await _retries(conn, [letter.event_id for letter in letters])
    newest = sorted(letters, key=lambda letter: letter.occurred_at, reverse=True)[:limit]
    return json_response({"dead_letters": [
        {**letter.summary(), "retried_at": retried.get(letter.event_id)} for letter in newest]})


async def retry_dead_letter(request: web.Request) -> web.Response:
    letter_id = request.match_info["dead_letter_id"]
    letters = await asyncio.to_thread(dead_letters.read, state(request).settings.kafka_bootstrap,
                                      dead_letters.topics_of(None))
    letter = next((item for item in letters if item.event_id == letter_id), None)
    if letter is None:
        raise not_found("dead letter", letter_id)
    if letter.original_value is None:
        raise conflict("this dead letter kept no copy of the original record, so it cannot "
                       "be retried")

    async with pool(request).connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "INSERT INTO dead_letter_retries (dead_letter_id, stage, source_topic, retried_by) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING retried_at",
            (letter.event_id, letter.stage, letter.source_topic, principal(request).token_id))
        if await cursor.fetchone() is None:
            raise conflict(f"dead letter {letter.event_id} was already retried")
        await conn.execute(
            "INSERT INTO outbox (topic, key, value, event_id) VALUES (%s, %s, %s, %s)",
            (letter.source_topic, letter.original_key, letter.original_value, letter.event_id))
    log.info("dead letter %s: %s %s partition %d offset %d sent back for a retry by %s",
             letter.event_id, letter.stage, letter.source_topic, letter.source_partition,
             letter.source_offset, principal(request).name)
    return json_response({**letter.summary(), "status": "retry queued"}, status=202)


def _dead_letter_filters(request: web.Request) -> tuple[str | None, int]:
    query = request.rel_url.query
    errors = []
    stage = query.get("stage")
    if stage is not None and stage not in dead_letters.STAGES:
        errors.append(FieldError("stage", f"must be one of: {', '.join(dead_letters.STAGES)}"))
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        errors.append(FieldError("limit", "must be a whole number from 1 to 1000"))
    if errors:
        raise invalid(errors)
    return stage, int(limit_text)


async def _retries(conn: Any, letter_ids: list[str]) -> dict[str, Any]:
    cursor = await conn.execute("SELECT dead_letter_id, retried_at FROM dead_letter_retries "
                                "WHERE dead_letter_id = ANY(%s)", (letter_ids,))
    return {row["dead_letter_id"]: row["retried_at"] for row in await cursor.fetchall()}


# --- key rotation ------------------------------------------------------------------------


async def rotate_encryption(request: web.Request) -> web.Response:
    if not secrets.is_configured():
        raise ApiError(503, "encryption_not_configured", "the API has no encryption keys: set "
                       "MESSAGEHUB_ENCRYPTION_KEYS and restart it")
    rotated = 0
    failed: list[dict[str, str]] = []
    async with pool(request).connection() as conn, conn.transaction():
        for table, service in (("inbox_imap", "IMAP"), ("inbox_smtp", "SMTP")):
            cursor = await conn.execute(f"SELECT inbox_id, password_encrypted FROM {table} "
                                        "WHERE password_encrypted IS NOT NULL FOR UPDATE")
            for row in await cursor.fetchall():
                try:
                    token = secrets.rotate(row["password_encrypted"])
                except secrets.SecretsError:
                    failed.append({"inbox_id": str(row["inbox_id"]), "service": service})
                    continue
                await conn.execute(f"UPDATE {table} SET password_encrypted = %s "
                                   "WHERE inbox_id = %s", (token, row["inbox_id"]))
                rotated += 1
    log.info("encryption: %d stored passwords encrypted again with the newest key by %s; "
             "%d cannot be decrypted", rotated, principal(request).name, len(failed))
    return json_response({"rotated": rotated, "failed": failed})
