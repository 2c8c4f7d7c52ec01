"""The IMAP sync's rows in PostgreSQL: settings, cursors, failed mails, health.

:class:`SyncState` is called on the ingest event loop, by the supervisor
(settings) and, through :mod:`services.ingest.imap.backend`, by the folder
sync threads. The tables are in ``messagehub/sql/010-ingest.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg_pool import AsyncConnectionPool

from messagehub import secrets
from services.ingest.imap.connection import ImapAccount
from services.ingest.imap.plan import retry_delay

_ACCOUNT_QUERY = (
    "SELECT inbox_id::text AS inbox_id, host, port, username, password_encrypted, security, "
    "sync_folders, sync_start_at, sync_after_import, sync_move_to, settings_version "
    "FROM inbox_imap WHERE sync_enabled AND host IS NOT NULL AND port IS NOT NULL "
    "AND username IS NOT NULL")


@dataclass(frozen=True)
class Cursor:
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True)
class FailureOutcome:
    status: str
    attempts: int


class SyncState:
    """Reads and writes the sync's tables on the service's connection pool."""

    def __init__(self, pool: AsyncConnectionPool, *, replica: str) -> None:
        self._pool = pool
        self._replica = replica

    # --- settings --------------------------------------------------------

    async def enabled_versions(self) -> dict[str, int]:
        """Return ``{inbox id: settings version}`` of every inbox whose sync is on."""
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT inbox_id::text AS inbox_id, settings_version FROM inbox_imap "
                "WHERE sync_enabled AND host IS NOT NULL")
            return {row["inbox_id"]: row["settings_version"] for row in await cursor.fetchall()}

    async def account(self, inbox_id: str) -> ImapAccount | None:
        """Return the inbox's IMAP account with its password decrypted; None when sync is off.

        Raises :class:`messagehub.secrets.SecretsError` when no configured key
        decrypts the stored password.
        """
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(_ACCOUNT_QUERY + " AND inbox_id::text = %s",
                                             (inbox_id,))
            row = await cursor.fetchone()
        return account_from_row(row) if row is not None else None

    async def folders(self, inbox_id: str) -> list[str]:
        """Return the folders the inbox's settings name, [] when it has no settings."""
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT sync_folders FROM inbox_imap WHERE inbox_id::text = %s", (inbox_id,))
            row = await cursor.fetchone()
        return list(row["sync_folders"] or ["INBOX"]) if row else []

    # --- cursors ---------------------------------------------------------

    async def load_cursor(self, inbox_id: str, folder: str, name: str) -> Cursor | None:
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT uidvalidity, last_uid FROM imap_cursors "
                "WHERE inbox_id = %s AND folder = %s AND cursor_name = %s",
                (inbox_id, folder, name))
            row = await cursor.fetchone()
        return Cursor(row["uidvalidity"], row["last_uid"]) if row else None

    async def advance_cursor(self, inbox_id: str, folder: str, name: str, uidvalidity: int,
                             last_uid: int) -> None:
        """Move the cursor forward; a lower UID under the same UIDVALIDITY never moves it back."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO imap_cursors (inbox_id, folder, cursor_name, uidvalidity, last_uid) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (inbox_id, folder, cursor_name) DO UPDATE "
                "SET last_uid = CASE WHEN imap_cursors.uidvalidity = EXCLUDED.uidvalidity "
                "THEN greatest(imap_cursors.last_uid, EXCLUDED.last_uid) "
                "ELSE EXCLUDED.last_uid END, "
                "uidvalidity = EXCLUDED.uidvalidity, updated_at = now()",
                (inbox_id, folder, name, uidvalidity, last_uid))

    async def reset_cursor(self, inbox_id: str, folder: str, name: str, uidvalidity: int,
                           last_uid: int) -> None:
        """Set the cursor as given: for a first sync or a changed UIDVALIDITY."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO imap_cursors (inbox_id, folder, cursor_name, uidvalidity, last_uid) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (inbox_id, folder, cursor_name) DO UPDATE "
                "SET uidvalidity = EXCLUDED.uidvalidity, last_uid = EXCLUDED.last_uid, "
                "updated_at = now()", (inbox_id, folder, name, uidvalidity, last_uid))

    # --- failed mails ----------------------------------------------------

    async def record_failure(self, inbox_id: str, folder: str, uidvalidity: int, uid: int,
                             error: str, *, max_attempts: int, retry_base_seconds: float,
                             final: bool = False, raw_sha256: str | None = None
                             ) -> FailureOutcome:
        """Count one more failed attempt at a mail; quarantine it after the last one."""
        async with self._pool.connection() as conn, conn.transaction():
            cursor: Any = await conn.execute(
                "SELECT attempts FROM imap_failed_mails WHERE inbox_id = %s AND folder = %s "
                "AND uidvalidity = %s AND uid = %s FOR UPDATE",
                (inbox_id, folder, uidvalidity, uid))
            row = await cursor.fetchone()
            attempts = (row["attempts"] if row else 0) + 1
            quarantined = final or attempts >= max_attempts
            status = "quarantined" if quarantined else "retrying"
            next_attempt = None if quarantined else datetime.now(timezone.utc) + timedelta(
                seconds=retry_delay(attempts, retry_base_seconds))
            await conn.execute(
                "INSERT INTO imap_failed_mails (inbox_id, folder, uidvalidity, uid, status, "
                "attempts, last_error, next_attempt_at, raw_sha256) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (inbox_id, folder, uidvalidity, uid) DO UPDATE SET "
                "status = EXCLUDED.status, attempts = EXCLUDED.attempts, "
                "last_error = EXCLUDED.last_error, last_failed_at = now(), "
                "next_attempt_at = EXCLUDED.next_attempt_at, "
                "raw_sha256 = coalesce(EXCLUDED.raw_sha256, imap_failed_mails.raw_sha256)",
                (inbox_id, folder, uidvalidity, uid, status, attempts, error[:2000],
                 next_attempt, raw_sha256))
        return FailureOutcome(status, attempts)

    async def due_failures(self, inbox_id: str, folder: str, uidvalidity: int
                           ) -> tuple[list[int], float | None]:
        """Return the UIDs due for another attempt, and seconds until the next one after."""
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT uid, extract(epoch FROM next_attempt_at - now()) AS wait "
                "FROM imap_failed_mails WHERE inbox_id = %s AND folder = %s AND uidvalidity = %s "
                "AND status = 'retrying' ORDER BY next_attempt_at, uid LIMIT 100",
                (inbox_id, folder, uidvalidity))
            rows = await cursor.fetchall()
        due = [row["uid"] for row in rows if row["wait"] <= 0]
        waits = [float(row["wait"]) for row in rows if row["wait"] > 0]
        return due, min(waits) if waits else None

    async def forget_failure(self, inbox_id: str, folder: str, uidvalidity: int,
                             uid: int) -> None:
        """Drop a failed mail's row once a retry got it into Kafka."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM imap_failed_mails WHERE inbox_id = %s AND folder = %s "
                "AND uidvalidity = %s AND uid = %s", (inbox_id, folder, uidvalidity, uid))

    # --- health ----------------------------------------------------------

    async def report(self, inbox_id: str, folder: str, state: str, *,
                     error_class: str | None = None, error: str | None = None,
                     next_attempt_in: float | None = None, synced: bool = False) -> None:
        """Record what a folder sync does now; an error extends the streak, a sync ends it."""
        next_attempt = (datetime.now(timezone.utc) + timedelta(seconds=next_attempt_in)
                        if next_attempt_in is not None else None)
        failed = error is not None
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO imap_sync_health AS h (inbox_id, folder, state, last_sync_at, "
                "error_class, last_error, last_error_at, error_since, consecutive_failures, "
                "next_attempt_at, replica) VALUES (%(inbox)s, %(folder)s, %(state)s, "
                "CASE WHEN %(synced)s THEN now() END, %(class)s, %(error)s, "
                "CASE WHEN %(failed)s THEN now() END, CASE WHEN %(failed)s THEN now() END, "
                "CASE WHEN %(failed)s THEN 1 ELSE 0 END, %(next)s, %(replica)s) "
                "ON CONFLICT (inbox_id, folder) DO UPDATE SET state = EXCLUDED.state, "
                "last_sync_at = CASE WHEN %(synced)s THEN now() ELSE h.last_sync_at END, "
                "error_class = CASE WHEN %(failed)s THEN EXCLUDED.error_class "
                "  WHEN %(synced)s THEN NULL ELSE h.error_class END, "
                "last_error = CASE WHEN %(failed)s THEN EXCLUDED.last_error ELSE h.last_error END, "
                "last_error_at = CASE WHEN %(failed)s THEN now() ELSE h.last_error_at END, "
                "error_since = CASE WHEN %(failed)s THEN coalesce(h.error_since, now()) "
                "  WHEN %(synced)s THEN NULL ELSE h.error_since END, "
                "consecutive_failures = CASE WHEN %(failed)s THEN h.consecutive_failures + 1 "
                "  WHEN %(synced)s THEN 0 ELSE h.consecutive_failures END, "
                "next_attempt_at = EXCLUDED.next_attempt_at, replica = EXCLUDED.replica, "
                "updated_at = now()",
                {"inbox": inbox_id, "folder": folder, "state": state, "synced": synced,
                 "class": error_class, "error": error[:2000] if error else None,
                 "failed": failed, "next": next_attempt, "replica": self._replica})


def account_from_row(row: dict[str, Any]) -> ImapAccount:
    """Return the :class:`ImapAccount` of one ``inbox_imap`` row, decrypting the password."""
    token = row["password_encrypted"]
    return ImapAccount(
        inbox_id=row["inbox_id"], host=row["host"], port=row["port"], username=row["username"],
        password=secrets.decrypt(token) if token else "",
        security=row["security"] or "tls", folders=tuple(row["sync_folders"] or ("INBOX",)),
        start_at=row["sync_start_at"], after_import=row["sync_after_import"],
        move_to=row["sync_move_to"], settings_version=row["settings_version"])
