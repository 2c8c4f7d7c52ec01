"""The transactional outbox: events commit with the rows that imply them.

A stage writes its rows and calls :func:`add` for each event in the same
transaction. After the commit, :class:`OutboxRelay` sends the pending events
to Kafka, waits for the broker's acknowledgement and only then commits their
deletion.
A crash between the commit and the send leaves the rows in place, and the
next relay run sends them; event ids are deterministic, so a row sent twice
reaches subscribers as a duplicate they already know how to drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from messagehub import codec

log = logging.getLogger(__name__)

SendFunction = Callable[[str, bytes | None, bytes], Awaitable[Any]]

# Rows this process has queued so far, committed or not. The batch loop
# compares it before and after a batch and skips the relay when nothing was
# queued, which saves a transaction per batch of a stage that writes no event.
_queued_total = 0


async def add(conn: AsyncConnection[Any], topic: str, key: str | None,
              record_name: str, record: dict[str, Any]) -> None:
    """Queue ``record`` for ``topic`` inside the caller's transaction."""
    global _queued_total
    value = codec.encode(record_name, record)
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, event_id) VALUES (%s, %s, %s, %s)",
        (topic, key.encode() if key is not None else None, value, record["event_id"]))
    _queued_total += 1


def queued_total() -> int:
    """Return how many rows :func:`add` has queued in this process, including rolled-back ones."""
    return _queued_total


class OutboxRelay:
    """Sends committed outbox rows to Kafka in the order they were written.

    ``send`` must return an awaitable that completes when the broker has
    acknowledged the record (acks=all). Rows are locked with SKIP LOCKED, so
    two relays never send the same row at the same time.
    """

    def __init__(self, pool: AsyncConnectionPool, send: SendFunction, *,
                 batch_size: int = 500,
                 on_published: Callable[[str, int], None] | None = None) -> None:
        self._pool = pool
        self._send = send
        self._batch_size = batch_size
        self._on_published = on_published
        self._lock = asyncio.Lock()

    async def publish_pending(self) -> int:
        """Send every pending row; return how many were sent."""
        total = 0
        async with self._lock:
            while True:
                sent = await self._publish_batch()
                total += sent
                if sent < self._batch_size:
                    return total

    async def _publish_batch(self) -> int:
        # The rows are deleted and sent in one transaction that commits only
        # after every acknowledgement, so a failed send rolls the delete back.
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT %s "
                "FOR UPDATE SKIP LOCKED) RETURNING id, topic, key, value", (self._batch_size,))
            # RETURNING has no defined order; events go out in the order written.
            rows = sorted(await cursor.fetchall(), key=lambda row: row["id"])
            if not rows:
                return 0

            acknowledgements = [await self._send(row["topic"], row["key"], bytes(row["value"]))
                                for row in rows]
            await asyncio.gather(*acknowledgements)

        if self._on_published is not None:
            for row in rows:
                self._on_published(row["topic"], 1)
        return len(rows)

    async def run(self, interval_seconds: float = 1.0) -> None:
        """Sweep for rows left behind by a crash until cancelled."""
        while True:
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The rows stay in the table and the next sweep sends them.
                log.exception("outbox: sending pending events failed; retrying in %.1fs",
                              interval_seconds)
            await asyncio.sleep(interval_seconds)
