"""Entry point of the ingest service: ``python -m services.ingest``.

Runs the forwarding SMTP receiver; every accepted mail is stored and
published on ``mail.received``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiosmtpd.smtp import SMTP

from messagehub import db, health, logs, metrics
from messagehub import settings as settings_module
from messagehub.settings import Settings
from services.ingest.directory import PostgresInboxDirectory
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import MailPublisher
from services.ingest.receiver import ForwardingHandler
from services.ingest.store import PostgresRawMailStore

log = logging.getLogger("services.ingest")


async def serve(settings: Settings, process_health: health.Health | None = None) -> None:
    """Run the receiver until SIGTERM or SIGINT, then drain and close."""
    process_health = process_health or health.Health()
    listening = process_health.condition("smtp receiver", reason="not listening yet")
    pool = await db.open_pool(settings.database_url, max_size=8)
    publisher = MailPublisher(settings.kafka_bootstrap)
    handler = ForwardingHandler(directory=PostgresInboxDirectory(pool),
                                store=PostgresRawMailStore(pool), publisher=publisher,
                                sensor=IngestMetrics())

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=settings.ingest_max_message_bytes,
                     enable_SMTPUTF8=True, ident="messagehub ingest"),
        host=settings.ingest_smtp_host, port=settings.ingest_smtp_port)
    log.info("ingest: forwarding receiver listening on %s:%d",
             settings.ingest_smtp_host, settings.ingest_smtp_port)
    listening.set()
    health.watch_event_loop(loop, process_health.heartbeat(
        "event loop", stale_after_seconds=health.LOOP_STALE_SECONDS))

    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    log.info("ingest: stopping, no new connections")
    listening.clear("stopping")
    server.close()
    await server.wait_closed()
    publisher.close()
    await pool.close()
    log.info("ingest: stopped")


def main() -> None:
    settings = settings_module.load()
    logs.setup(settings.log_level)
    process_health = metrics.serve(settings.metrics_host, settings.metrics_port)
    asyncio.run(serve(settings, process_health))


if __name__ == "__main__":
    main()
