"""Process wiring of a consuming stage: faust worker, database, outbox, metrics.

``services/router``, ``services/assign`` and ``services/outbound`` each call
:func:`run_stage_service` from their ``main()`` with their stage object. It
sets up logging and ``/metrics``, builds the faust app with one agent over
the source topics, opens the database pool on the worker's event loop, and
runs the outbox relay's sweep beside the agent. Faust handles SIGTERM: the
agent finishes its batch, offsets are committed and the worker leaves the
consumer group. The metrics port also serves ``/healthz`` (the worker's event
loop beats) and ``/readyz`` (the stage has opened its database pool and its
consumer has joined the group), see :mod:`messagehub.stage_monitor`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import faust
from psycopg_pool import AsyncConnectionPool

from messagehub import db, health, logs, metrics, outbox
from messagehub.settings import Settings
from messagehub.stage_monitor import StageMonitor
from messagehub.worker import BatchProcessor, Stage, create_app, kafka_sender, raw_topic, run_agent

log = logging.getLogger(__name__)

OUTBOX_SWEEP_SECONDS = 2.0


class _StageRuntime:
    """The database pool and the outbox relay, created once on the worker's loop."""

    def __init__(self, app: faust.App, settings: Settings, stage: Stage,
                 dead_letter_topic: str, process_health: health.Health, lanes: int) -> None:
        self._app = app
        self._settings = settings
        self._stage = stage
        self._dead_letter_topic = dead_letter_topic
        self._lanes = lanes
        self._sensor = metrics.StageMetrics(stage.name)
        app.sensors.add(StageMonitor(self._sensor, process_health))
        self._started = process_health.condition(
            "stage", reason="database schema and pool not ready yet")
        self.pool: AsyncConnectionPool | None = None
        self.relay: outbox.OutboxRelay | None = None
        self.processor: BatchProcessor | None = None

    async def start(self) -> BatchProcessor:
        if self.processor is None:
            # One connection per lane, and one for the outbox relay.
            self.pool = await db.open_pool(self._settings.database_url,
                                           max_size=max(4, self._lanes + 1))
            bind = getattr(self._stage, "bind", None)
            if bind is not None:
                # Stages with side effects outside the batch transaction keep
                # their own bookkeeping (the outbound send ledger) on the pool.
                bind(self.pool)
            self.relay = outbox.OutboxRelay(self.pool, kafka_sender(self._app),
                                            on_published=self._sensor.on_published)
            self.processor = BatchProcessor(
                stage=self._stage, pool=self.pool, relay=self.relay,
                dead_letter_topic=self._dead_letter_topic, sensor=self._sensor,
                lanes=self._lanes)
            self._started.set()
            log.info("%s: started, consuming with batches into the database", self._stage.name)
        return self.processor

    async def sweep(self) -> None:
        if self.relay is not None:
            await run_outbox_sweep(self.relay, self._stage.name)


async def run_outbox_sweep(relay: outbox.OutboxRelay, stage_name: str) -> None:
    """Publish outbox rows that no batch published; log a failure instead of raising.

    An exception escaping a faust timer crashes the whole worker, so a
    database or broker outage would kill the process. The rows stay in the
    table and the next sweep sends them.
    """
    try:
        await relay.publish_pending()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - retried at the next sweep
        log.warning("%s: outbox sweep failed, retried in %.0fs: %r", stage_name,
                    OUTBOX_SWEEP_SECONDS, exc)


def run_stage_service(app_id: str, settings: Settings, stage: Stage, *,
                      source_topics: Sequence[str], dead_letter_topic: str,
                      lanes: int = 1) -> None:
    """Run ``stage`` as a faust worker until SIGTERM or SIGINT.

    ``lanes`` above 1 applies the records of different inboxes concurrently
    (see :class:`~messagehub.worker.BatchProcessor`). It suits a stage whose
    records of different inboxes write different rows; the rare deadlock
    over a shared row is rolled back by PostgreSQL and retried.
    """
    logs.setup(settings.log_level)
    process_health = metrics.serve(settings.metrics_host, settings.metrics_port)
    loop_beat = process_health.heartbeat("event loop",
                                         stale_after_seconds=health.LOOP_STALE_SECONDS)

    Path(settings.faust_data_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(app_id, settings)
    runtime = _StageRuntime(app, settings, stage, dead_letter_topic, process_health, lanes)
    source = raw_topic(app, source_topics[0]) if len(source_topics) == 1 else app.topic(
        *source_topics, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw")
    run_agent(app, source, runtime.start)

    @app.timer(interval=OUTBOX_SWEEP_SECONDS)
    async def sweep_outbox() -> None:
        await runtime.sweep()

    @app.task
    async def watch_event_loop() -> None:
        health.watch_event_loop(asyncio.get_running_loop(), loop_beat)

    log.info("%s: consuming %s, metrics on %s:%d", stage.name, ", ".join(source_topics),
             settings.metrics_host, settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=False)
    # The start-up spinner writes terminal escapes into the service's log file.
    worker.spinner = None
    worker.execute_from_commandline()
