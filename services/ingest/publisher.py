"""Publishing ``mail.received`` with kafka-python, awaited from asyncio.

The receiver answers 250 only after the broker has acknowledged the event
(acks=all, idempotent producer), so :meth:`MailPublisher.publish` resolves
only then. kafka-python's producer is thread based; its futures are bridged
onto the event loop with callbacks instead of a blocking executor thread
per mail, and the sends of concurrent callers share one hop to the thread
that calls ``send`` (see batching.py).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

from messagehub import codec, topics
from services.ingest.batching import Batcher

with warnings.catch_warnings():
    # kafka-python 3.0 warns about importlib.resources at import on Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

ACK_TIMEOUT_SECONDS = 30.0


class MailPublisher:
    """Sends records to ``topic``: ``mail.received`` unless a test sets another."""

    def __init__(self, bootstrap_servers: str, *, topic: str = topics.MAIL_RECEIVED,
                 max_block_ms: int = 10_000) -> None:
        self._topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id="messagehub-ingest",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_block_ms=max_block_ms,
            request_timeout_ms=15_000,
        )
        self._sends: Batcher[list[tuple[bytes, bytes]], list[asyncio.Future[None]]] = \
            Batcher(self._send_batch)

    async def publish(self, record: dict[str, Any]) -> None:
        """Send a MailReceived record keyed by its inbox; return once acknowledged."""
        await self.publish_many([record])

    async def publish_many(self, records: Sequence[dict[str, Any]]) -> None:
        """Send several records; return once Kafka acknowledged every one of them."""
        values = [(record["inbox_id"].encode(), codec.encode("MailReceived", record))
                  for record in records]
        acknowledgements = await self._sends.submit(values)
        await asyncio.wait_for(asyncio.gather(*acknowledgements), ACK_TIMEOUT_SECONDS)

    async def _send_batch(self, batches: Sequence[list[tuple[bytes, bytes]]]
                          ) -> list[list[asyncio.Future[None]]]:
        """Hand every record of ``batches`` to the producer; return their acknowledgements."""
        loop = asyncio.get_running_loop()
        acknowledgements = [[loop.create_future() for _ in values] for values in batches]

        def send_all() -> None:
            # send() may block while the producer's buffer is full, so off the loop.
            # It raises for one record (too large, say), which fails only that
            # record, or times out when Kafka is away, which fails the rest too.
            unavailable: KafkaTimeoutError | None = None
            for values, futures in zip(batches, acknowledgements):
                for (key, value), acknowledged in zip(values, futures):
                    if unavailable is not None:
                        loop.call_soon_threadsafe(_resolve, acknowledged, unavailable)
                        continue
                    try:
                        future = self._producer.send(self._topic, key=key, value=value)
                    except KafkaTimeoutError as exc:
                        unavailable = exc
                        loop.call_soon_threadsafe(_resolve, acknowledged, exc)
                        continue
                    except Exception as exc:  # noqa: BLE001 - this record's caller gets it
                        loop.call_soon_threadsafe(_resolve, acknowledged, exc)
                        continue
                    future.add_callback(_resolver(loop, acknowledged, None))
                    future.add_errback(lambda exc, done=acknowledged: loop.call_soon_threadsafe(
                        _resolve, done, exc))

        await loop.run_in_executor(None, send_all)
        return acknowledgements

    def close(self) -> None:
        self._producer.close(timeout=10)


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None],
              error: BaseException | None) -> Any:
    return lambda _metadata: loop.call_soon_threadsafe(_resolve, future, error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
