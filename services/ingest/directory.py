"""Finding the inboxes that forwarding addresses belong to.

The forwarding receiver and the HTTP upload look recipients up here. Known
addresses are cached for a short time; unknown ones are not, so an inbox
created a moment ago receives mail at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from psycopg_pool import AsyncConnectionPool

CACHE_SECONDS = 30.0


class PostgresInboxDirectory:
    """Looks forwarding addresses and inbox ids up in the inboxes table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[str, float]] = {}

    async def inbox_for_address(self, address: str) -> str | None:
        """Return the id of the inbox whose forwarding address is ``address``."""
        found = await self.inboxes_for_addresses([address])
        return found.get(address.strip().lower())

    async def inboxes_for_addresses(self, addresses: Iterable[str]) -> dict[str, str]:
        """Return ``{address: inbox id}`` for those of ``addresses`` that are known."""
        wanted = {address.strip().lower() for address in addresses}
        now = time.monotonic()
        found = {address: cached[0] for address in wanted
                 if (cached := self._cache.get(address)) is not None and cached[1] > now}
        missing = sorted(wanted - found.keys())
        if not missing:
            return found

        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT forwarding_address, id FROM inboxes WHERE forwarding_address = ANY(%s)",
                (missing,))
            rows = await cursor.fetchall()
        for row in rows:
            address, inbox_id = row["forwarding_address"].lower(), str(row["id"])
            found[address] = inbox_id
            self._cache[address] = (inbox_id, now + CACHE_SECONDS)
        return found

    async def inbox_exists(self, inbox_id: str) -> bool:
        """Tell whether an inbox with this id exists."""
        async with self._pool.connection() as conn:
            cursor: Any = await conn.execute(
                "SELECT 1 FROM inboxes WHERE id::text = %s", (inbox_id,))
            return await cursor.fetchone() is not None
