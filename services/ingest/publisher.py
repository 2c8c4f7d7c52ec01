"""Publishing ``mail.received`` with kafka-python, awaited from asyncio.

The receiver answers 250 only after the broker has acknowledged the event
(acks=all, idempotent producer), so :meth:`MailPublisher.publish` resolves
only then. kafka-python's producer is thread based; its futures are bridged
onto the event loop with callbacks instead of a blocking executor thread
per mail.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

from messagehub import codec, topics

with warnings.catch_warnings():
    # kafka-python 3.0 warns about importlib.resources at import on Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer

ACK_TIMEOUT_SECONDS = 30.0


class MailPublisher:
    """Sends ``MailReceived`` records to ``topic`` (``mail.received`` unless a test says otherwise)."""

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

    async def publish(self, record: dict[str, Any]) -> None:
        """Send a MailReceived record keyed by its inbox; return once acknowledged."""
        value = codec.encode("MailReceived", record)
        loop = asyncio.get_running_loop()
        acknowledged: asyncio.Future[None] = loop.create_future()

        def on_success(_metadata: Any) -> None:
            loop.call_soon_threadsafe(_resolve, acknowledged, None)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_resolve, acknowledged, exc)

        future = await loop.run_in_executor(
            None, lambda: self._producer.send(self._topic, key=record["inbox_id"].encode(),
                                              value=value))
        future.add_callback(on_success)
        future.add_errback(on_error)
        await asyncio.wait_for(acknowledged, ACK_TIMEOUT_SECONDS)

    def close(self) -> None:
        self._producer.close(timeout=10)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
