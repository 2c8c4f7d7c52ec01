"""Entry point of the ingest service: ``python -m services.ingest``.

Runs, on one event loop, every way mail comes in: the forwarding SMTP
receiver, the HTTP upload, and the IMAP sync of the inboxes this replica
owns (one thread per synced folder, see :mod:`services.ingest.imap`). Every
accepted mail is stored and published on ``mail.received`` before it is
acknowledged to its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

import psycopg
from aiohttp import web

from messagehub import db, health, logs, metrics, secrets
from messagehub import settings as settings_module
from messagehub.settings import Settings
from services.ingest import http
from services.ingest.directory import PostgresInboxDirectory
from services.ingest.imap.assignment import InboxAssignment
from services.ingest.imap.connection import ConnectOptions
from services.ingest.imap.folder_sync import SyncOptions
from services.ingest.imap.state import SyncState
from services.ingest.imap.supervisor import ImapSupervisor
from services.ingest.intake import MailIntake
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import MailPublisher
from services.ingest.receiver import ForwardingHandler
from services.ingest.smtp_data import ForwardingSMTP
from services.ingest.store import PostgresRawMailStore

log = logging.getLogger("services.ingest")

NOTIFY_CHANNEL = "inbox_imap_changed"
STATE_METRICS_SECONDS = 5.0


def sync_options(settings: Settings) -> SyncOptions:
    """Return the IMAP sync's bounds and intervals from the settings."""
    return SyncOptions(
        connect=ConnectOptions(connect_timeout_seconds=settings.imap_connect_timeout_seconds,
                               read_timeout_seconds=settings.imap_read_timeout_seconds,
                               ca_file=settings.tls_ca_file),
        fetch_batch=settings.imap_fetch_batch,
        max_message_bytes=settings.ingest_max_message_bytes,
        idle_reissue_seconds=settings.imap_idle_reissue_seconds,
        poll_interval_seconds=settings.imap_poll_interval_seconds,
        max_attempts=settings.imap_max_attempts,
        retry_base_seconds=settings.imap_retry_base_seconds,
        reconnect_max_seconds=settings.imap_reconnect_max_seconds,
        auth_retry_seconds=settings.imap_auth_retry_seconds)


async def serve(settings: Settings, process_health: health.Health | None = None) -> None:
    """Run every ingest path until SIGTERM or SIGINT, then drain and close."""
    process_health = process_health or health.Health()
    listening = process_health.condition("smtp receiver", reason="not listening yet")
    pool = await db.open_pool(settings.database_url, max_size=10)
    publisher = MailPublisher(settings.kafka_bootstrap)
    sensor = IngestMetrics()
    directory = PostgresInboxDirectory(pool)
    intake = MailIntake(store=PostgresRawMailStore(pool), publisher=publisher)

    smtp_server = await _start_smtp(settings, directory, intake, sensor)
    http_runner = await _start_http(settings, directory, intake, sensor)
    listening.set()
    health.watch_event_loop(asyncio.get_running_loop(), process_health.heartbeat(
        "event loop", stale_after_seconds=health.LOOP_STALE_SECONDS))
    supervisor = ImapSupervisor(
        state=SyncState(pool, replica=f"{socket.gethostname()}:{os.getpid()}"),
        intake=intake, options=sync_options(settings), sensor=sensor)
    assignment = InboxAssignment(bootstrap_servers=settings.kafka_bootstrap,
                                 supervisor=supervisor)
    await assignment.start()
    tasks = [asyncio.create_task(coroutine, name=name) for name, coroutine in (
        ("imap-assignment", assignment.run()),
        ("imap-notifications", _follow_notifications(settings.database_url, supervisor)),
        ("imap-reconcile", _every(settings.imap_reconcile_seconds, supervisor.reconcile_all)),
        ("imap-state-metrics", _every(STATE_METRICS_SECONDS,
                                      lambda: _report_states(supervisor, sensor))))]
    for task in tasks:
        task.add_done_callback(_log_task_end)

    await _wait_for_signal()
    log.info("stopping: no new connections, stopping the IMAP syncs")
    listening.clear("stopping")
    smtp_server.close()
    await smtp_server.wait_closed()
    await http_runner.cleanup()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await assignment.stop()
    publisher.close()
    await pool.close()
    log.info("stopped")


async def _start_smtp(settings: Settings, directory: PostgresInboxDirectory,
                      intake: MailIntake, sensor: IngestMetrics) -> asyncio.AbstractServer:
    handler = ForwardingHandler(directory=directory, intake=intake, sensor=sensor,
                                inbound_domain=settings.inbound_domain)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ForwardingSMTP(handler, data_size_limit=settings.ingest_max_message_bytes,
                               enable_SMTPUTF8=True, ident="messagehub ingest"),
        host=settings.ingest_smtp_host, port=settings.ingest_smtp_port)
    log.info("forwarding receiver listening on %s:%d", settings.ingest_smtp_host,
             settings.ingest_smtp_port)
    return server


async def _start_http(settings: Settings, directory: PostgresInboxDirectory,
                      intake: MailIntake, sensor: IngestMetrics) -> web.AppRunner:
    app = http.create_app(intake=intake, directory=directory, sensor=sensor,
                          token=settings.ingest_http_token,
                          max_message_bytes=settings.ingest_max_message_bytes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.ingest_http_host, settings.ingest_http_port).start()
    log.info("HTTP upload listening on %s:%d%s", settings.ingest_http_host,
             settings.ingest_http_port, "" if settings.ingest_http_token else
             " (closed: MESSAGEHUB_INGEST_HTTP_TOKEN is not set)")
    return runner


async def _follow_notifications(database_url: str, supervisor: ImapSupervisor) -> None:
    """Reconcile an inbox as soon as its IMAP settings change; reconnect when the database goes."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url,
                                                             autocommit=True) as conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                # Changes made while not listening are found here.
                await supervisor.reconcile_all()
                async for notification in conn.notifies():
                    await supervisor.reconcile(notification.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the periodic reconcile covers the gap
            log.warning("following IMAP settings changes failed, retrying in 5 s: %r", exc)
            await asyncio.sleep(5)


async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - tried again at the next interval
            log.warning("periodic %s failed, retried in %.0f s: %r",
                        getattr(action, "__name__", "task"), seconds, exc)


async def _report_states(supervisor: ImapSupervisor, sensor: IngestMetrics) -> None:
    sensor.on_imap_states(supervisor.states())


def _log_task_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task %s failed: %r", task.get_name(), error,
                  exc_info=error)


async def _wait_for_signal() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()


def main() -> None:
    settings = settings_module.load()
    logs.setup(settings.log_level)
    if settings.encryption_keys:
        secrets.configure(settings.encryption_keys)
    else:
        log.warning("MESSAGEHUB_ENCRYPTION_KEYS is not set: inboxes with IMAP passwords "
                    "cannot be synced")
    process_health = metrics.serve(settings.metrics_host, settings.metrics_port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, process_health))


if __name__ == "__main__":
    main()
