"""Finding the inbox a forwarding address belongs to."""

from __future__ import annotations

import time

from psycopg_pool import AsyncConnectionPool

CACHE_SECONDS = 30.0


class PostgresInboxDirectory:
    """Looks forwarding addresses up in the inboxes table.

    Known addresses are cached for a short time; unknown ones are not, so an
    inbox created a moment ago receives mail at once.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[str, float]] = {}

    async def inbox_for_address(self, address: str) -> str | None:
        address = address.strip().lower()
        cached = self._cache.get(address)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]

        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM inboxes WHERE forwarding_address = %s", (address,))
            row = await cursor.fetchone()
        if row is None:
            self._cache.pop(address, None)
            return None

        inbox_id = str(row["id"])
        self._cache[address] = (inbox_id, time.monotonic() + CACHE_SECONDS)
        return inbox_id
