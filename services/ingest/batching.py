"""Group concurrent calls into one batch: one transaction, one hand-off to Kafka.

Each SMTP session stores its mail and publishes its event on its own, and
with 30 sessions at once that is 30 small transactions and 30 thread hops
a moment. :class:`Batcher` lets them share: a call waits while a batch is
in flight, and everything that arrived meanwhile goes out as the next
batch. Nothing waits for a timer, so a lone mail goes out at once and the
batches grow only with the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs ``flush`` over the items submitted while the previous batch was in flight.

    ``flush`` returns one result per item, in order. When it raises, every
    item of the batch is retried alone, all at once, so one bad item fails
    only its own caller. Callers that have gone (a dropped connection) are
    left out, and if the batcher is cancelled every waiting caller gets an
    error instead of waiting forever.
    """

    def __init__(self, flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], *,
                 max_items: int = 64) -> None:
        self._flush = flush
        self._max_items = max_items
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Add ``item`` to the next batch; return its result once the batch ran."""
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self._max_items]
                del self._pending[:self._max_items]
                await self._run(batch)
        finally:
            self._worker = None
            # Only when the drain itself was cancelled or failed: no caller waits forever.
            waiting, self._pending = self._pending, []
            for _item, done in waiting:
                _settle(done, error=RuntimeError("the batch was stopped before it ran"))

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        batch = [(item, done) for item, done in batch if not done.done()]  # callers gone
        if not batch:
            return
        try:
            results = await self._flush([item for item, _done in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the callers below
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            log.info("a batch of %d failed, retrying each item alone: %r", len(batch), exc)
            # Concurrently, so an outage fails every caller within one timeout.
            await asyncio.gather(*(self._run([entry]) for entry in batch))
            return
        except BaseException as exc:
            for _item, done in batch:
                _settle(done, error=RuntimeError(f"the batch was stopped: {exc!r}"))
            raise

        for (_item, done), result in zip(batch, results, strict=True):
            _settle(done, result=result)


def _settle(done: asyncio.Future[Result], *, result: Result | None = None,
            error: BaseException | None = None) -> None:
    if done.done():  # the caller was cancelled, for instance by a dropped connection
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)  # type: ignore[arg-type]
