"""PostgreSQL access shared by the services: the schema and the connections.

Services call :func:`open_pool` once at start, which also applies the
schema: every ``sql/NNN-*.sql`` file in name order, each idempotent, under an
advisory lock so replicas starting together do not race. A file runs only
when its text changed since it last ran (its SHA-256 is kept in
``schema_files``), and its DDL waits at most ``SCHEMA_LOCK_TIMEOUT`` for a
table lock before it is tried again. Rows come back as dicts.

Both matter when services restart beside running ones. ``ALTER TABLE ... ADD
COLUMN IF NOT EXISTS`` takes an ACCESS EXCLUSIVE lock even when the column
exists, and while it waits for a long transaction every later statement on
that table queues behind it. When the long transaction's owner waits for one
of those statements on another connection (outbound keeps its batch open
while it writes the send ledger), nothing can move again: PostgreSQL's
deadlock detector cannot see the wait inside the application.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "sql"
# An arbitrary constant that names "messagehub schema migration" among advisory locks.
_SCHEMA_LOCK_ID = 0x6D68_7363
SCHEMA_LOCK_TIMEOUT = "5s"
SCHEMA_ATTEMPTS = 6
_SCHEMA_FILES_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_files ("
    " name text PRIMARY KEY, sha256 text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())")


class SchemaLockTimeout(RuntimeError):
    """A schema file could not get its table locks; a later start can try again."""


def apply_schema(database_url: str) -> list[str]:
    """Apply the schema files that changed, then refresh planner statistics; return their names.

    Statistics matter on a fresh database: a statement planned on a
    never-analyzed table keeps a sequential scan long after it has grown.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_ID,))
        try:
            applied = _apply_changed_files(conn)
            if applied:
                conn.execute("ANALYZE")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_ID,))
    if applied:
        log.info("schema: applied %s", ", ".join(applied))
    return applied


def _apply_changed_files(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    conn.execute(_SCHEMA_FILES_TABLE)
    known = dict(conn.execute("SELECT name, sha256 FROM schema_files").fetchall())
    applied = []
    for path in sorted(SCHEMA_DIR.glob("[0-9][0-9][0-9]-*.sql")):
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if known.get(path.name) == digest:
            continue
        _run_with_lock_timeout(conn, path.name, text)
        conn.execute("INSERT INTO schema_files (name, sha256) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, "
                     "applied_at = now()", (path.name, digest))
        applied.append(path.name)
    return applied


def _run_with_lock_timeout(conn: psycopg.Connection[tuple[object, ...]], name: str,
                           text: str) -> None:
    """Run one schema file in a transaction that gives up on a busy table, and retry."""
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{SCHEMA_LOCK_TIMEOUT}'")
                conn.execute(text)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == SCHEMA_ATTEMPTS:
                raise SchemaLockTimeout(
                    f"schema: {name}: tables stayed locked by other transactions through "
                    f"{SCHEMA_ATTEMPTS} attempts: start again later, or look for long "
                    "transactions in pg_stat_activity") from None
            log.warning("schema: %s: a table is locked by another transaction, attempt %d "
                        "of %d, trying again in %ds", name, attempt, SCHEMA_ATTEMPTS, attempt)
            time.sleep(attempt)


def connect(database_url: str, *, autocommit: bool = False) -> psycopg.Connection[dict]:
    """Open one synchronous connection that returns rows as dicts."""
    return psycopg.connect(database_url, autocommit=autocommit, row_factory=dict_row)


async def open_pool(database_url: str, *, max_size: int = 4) -> AsyncConnectionPool:
    """Apply the schema and open an async pool of dict-row connections."""
    apply_schema(database_url)
    pool = AsyncConnectionPool(
        database_url, min_size=1, max_size=max_size, open=False,
        kwargs={"row_factory": dict_row, "autocommit": False})
    await pool.open(wait=True, timeout=30)
    log.info("database pool open: max_size=%d", max_size)
    return pool
