"""The raw mail store: MIME bytes kept by their SHA-256.

Events carry the digest, never the bytes (mails can be tens of megabytes).
:class:`RawMailStore` is the small interface the receiver needs, so an
object store can replace PostgreSQL; :class:`PostgresRawMailStore` is the
default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from psycopg_pool import AsyncConnectionPool

from services.ingest.batching import Batcher


def digest(raw: bytes) -> str:
    """Return the store key of ``raw``: its lowercase hex SHA-256."""
    return hashlib.sha256(raw).hexdigest()


class RawMailStore(Protocol):
    async def put(self, raw: bytes) -> str:
        """Store ``raw`` durably (idempotent); return its digest."""
        ...

    async def put_many(self, raws: Sequence[bytes]) -> list[str]:
        """Store several mails durably in one go (idempotent); return their digests."""
        ...


class PostgresRawMailStore:
    """Stores mail in ``raw_mails``; concurrent puts share a transaction (batching.py)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._puts: Batcher[bytes, str] = Batcher(self.put_many)

    async def put(self, raw: bytes) -> str:
        return await self._puts.submit(raw)

    async def put_many(self, raws: Sequence[bytes]) -> list[str]:
        digests = [digest(raw) for raw in raws]
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                    "ON CONFLICT (sha256) DO NOTHING",
                    [(sha256, len(raw), raw) for sha256, raw in zip(digests, raws)])
        return digests
