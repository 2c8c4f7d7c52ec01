"""PostgreSQL access shared by the services: the schema and the connections.

Services call :func:`open_pool` once at start, which also applies the
schema: every ``sql/NNN-*.sql`` file in name order, each idempotent, under an
advisory lock so replicas starting together do not race. Rows come back as
dicts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "sql"
# An arbitrary constant that names "messagehub schema migration" among advisory locks.
_SCHEMA_LOCK_ID = 0x6D68_7363


def apply_schema(database_url: str) -> None:
    """Create or update the tables, then refresh planner statistics.

    Statistics matter on a fresh database: a statement planned on a
    never-analyzed table keeps a sequential scan long after it has grown.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK_ID,))
        try:
            for path in sorted(SCHEMA_DIR.glob("[0-9][0-9][0-9]-*.sql")):
                conn.execute(path.read_text(encoding="utf-8"))
            conn.execute("ANALYZE")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK_ID,))


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
