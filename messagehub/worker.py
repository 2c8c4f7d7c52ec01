"""The consuming loop shared by router, assign and outbound.

Each of those services is a faust worker with one agent. The agent takes
events from its topic in small batches and hands each record to the stage's
``apply`` inside one PostgreSQL transaction, so a batch's rows and the events
they imply (through the outbox) commit together, and only then are the
offsets acknowledged. Around that:

- a record already applied (its event id is in ``processed_events``) is
  skipped, so redelivery after a rebalance or a crash changes nothing;
- a record that cannot be decoded or that the stage rejects goes to the
  stage's dead-letter topic with the reason and its coordinates, through the
  same transaction, and the partition moves on;
- a database outage is retried with backoff and nothing is acknowledged
  until the batch commits, so no record is lost while PostgreSQL is away;
- a stage that defines ``wants(record_name, record)`` is not given the
  records it does not want: they are acknowledged without a transaction,
  which spares the five database round trips (BEGIN, SAVEPOINT, the
  ``processed_events`` row, RELEASE, COMMIT) of a record it would ignore;
- a stage whose ``apply`` touches nothing but the connection it is given
  (``all_or_nothing = True``: router and assign, not outbound, which talks
  to SMTP servers) has its batch applied first without a savepoint per
  record and with one ``processed_events`` insert for the whole batch. Only
  when a record fails is the batch rolled back and applied again record by
  record with savepoints, so the failing one is dead-lettered alone. The
  stage's own metrics of a batch that is redone count it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import faust
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from messagehub import codec, ids, outbox
from messagehub.settings import Settings

log = logging.getLogger(__name__)

BATCH_MAX = 200
BATCH_WITHIN_SECONDS = 0.02
RETRY_MAX_SECONDS = 30.0
# How long the group coordinator waits for heartbeats from a worker before
# it hands the worker's partitions to another. A worker killed without
# leaving the group holds its partitions this long, so it bounds the
# recovery after a crash; faust's default of 60 s made every crashed stage
# stand still for a minute. Heartbeats go out every 3 s from their own
# task, so only an event loop blocked for this long loses the partitions.
SESSION_TIMEOUT_SECONDS = 15.0


# SQLSTATE classes of the OperationalErrors that a later attempt can outlive:
# connection exception, transaction rollback (deadlock, serialization
# failure), insufficient resources, operator intervention (shutdown,
# restart) and system error. Others, such as program limit exceeded (54),
# fail the same way every time.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def is_transient(exc: psycopg.OperationalError) -> bool:
    """Tell whether a batch that failed with ``exc`` can succeed when tried again.

    An error without SQLSTATE comes from the client side (a lost connection,
    a pool timeout), which is transient too.
    """
    return exc.sqlstate is None or exc.sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


class StageError(Exception):
    """A record the stage cannot apply; it goes to the dead-letter topic.

    ``retriable`` is False: applying the same record again fails the same way.
    """

    retriable = False


@dataclass(frozen=True)
class Coordinates:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Stage(Protocol):
    """One step of the pipeline, applied to one decoded record."""

    name: str

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None: ...


class StageSensor(Protocol):
    def on_record(self, result: str, seconds: float) -> None: ...

    def on_dead_letter(self, error_class: str) -> None: ...


def create_app(app_id: str, settings: Settings) -> faust.App:
    """Return a faust app for one service, with no web server and no tables."""
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap.split(',')[0]}",
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        datadir=f"{settings.faust_data_dir}/{app_id}",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=100,
        broker_commit_interval=0.5,
        broker_session_timeout=SESSION_TIMEOUT_SECONDS,
    )


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """Return a faust topic whose keys and values stay as bytes."""
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


def kafka_sender(app: faust.App) -> outbox.SendFunction:
    """Return an outbox send function that uses the app's producer."""
    async def send(topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        return await app.producer.send(topic, key, value, partition=None,
                                       timestamp=None, headers=None)
    return send


class BatchProcessor:
    """Applies batches of events to a stage, transactionally and idempotently."""

    def __init__(self, *, stage: Stage, pool: AsyncConnectionPool, relay: outbox.OutboxRelay,
                 dead_letter_topic: str, sensor: StageSensor, lanes: int = 1) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1: {lanes!r}")
        self._stage = stage
        self._pool = pool
        self._relay = relay
        self._dead_letter_topic = dead_letter_topic
        self._sensor = sensor
        self._lanes = lanes

    async def process(self, batch: Sequence[Coordinates]) -> None:
        """Apply ``batch`` until it commits, then publish what it implied.

        With several lanes the batch is split by record key (the inbox id),
        and the lanes commit concurrently, each in its own transaction. One
        inbox's records stay in one lane, in order, and every lane has
        committed before the batch's offsets can be acknowledged.
        """
        queued_before = outbox.queued_total()
        wanted = [coordinates for coordinates in batch if self._wanted(coordinates)]
        for _ in range(len(batch) - len(wanted)):
            self._sensor.on_record("ignored", 0.0)
        if wanted:
            await asyncio.gather(*(self._commit(lane) for lane in self._split(wanted)))

        # A batch that queued nothing skips the relay. Rows that an earlier
        # failed publish left behind go out with the service's periodic sweep.
        if outbox.queued_total() != queued_before:
            await self._publish_with_retry()

    def _wanted(self, coordinates: Coordinates) -> bool:
        wants = getattr(self._stage, "wants", None)
        if wants is None:
            return True
        try:
            record_name, record = codec.decode(coordinates.value)
        except codec.CodecError:
            return True  # on to its dead letter
        return bool(wants(record_name, record))

    def _split(self, batch: Sequence[Coordinates]) -> list[list[Coordinates]]:
        if self._lanes == 1:
            return [list(batch)]
        lanes: dict[int, list[Coordinates]] = {}
        for coordinates in batch:
            lane = zlib.crc32(coordinates.key or b"") % self._lanes
            lanes.setdefault(lane, []).append(coordinates)
        return list(lanes.values())

    async def _commit(self, records: Sequence[Coordinates]) -> None:
        """Apply ``records`` in one transaction, retrying while the database is away."""
        delay = 0.5
        while True:
            try:
                await self._apply_batch(records)
                return
            except psycopg.OperationalError as exc:
                # Also a deadlock between two lanes: PostgreSQL rolls one back, which retries.
                log.warning("%s: database unavailable, batch of %d retried in %.1fs: %s",
                            self._stage.name, len(records), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _publish_with_retry(self) -> None:
        # The rows are committed: a failure here only delays them, and the
        # relay's periodic sweep would send them too.
        try:
            await self._relay.publish_pending()
        except Exception as exc:  # noqa: BLE001 - retried by the sweep
            log.warning("%s: outbox publish failed, left for the sweep: %r", self._stage.name, exc)

    async def _apply_batch(self, batch: Sequence[Coordinates]) -> None:
        async with self._pool.connection() as conn:
            whole = getattr(self._stage, "all_or_nothing", False)
            if whole and await self._apply_whole(conn, batch):
                return
            async with conn.transaction():
                for coordinates in batch:
                    await self._apply_one(conn, coordinates)

    async def _apply_whole(self, conn: AsyncConnection[Any],
                           batch: Sequence[Coordinates]) -> bool:
        """Apply ``batch`` in one transaction without savepoints; False if a record failed.

        A transient database error is raised, to retry the batch; any other
        failure rolls everything back for the record-by-record path.
        """
        started = time.perf_counter()
        try:
            records = [codec.decode(coordinates.value) for coordinates in batch]
        except codec.CodecError:
            return False
        try:
            async with conn.transaction():
                fresh = await self._claim(conn, [record["event_id"] for _name, record in records])
                results = []
                for record_name, record in records:
                    if record["event_id"] in fresh:
                        fresh.discard(record["event_id"])  # a second copy in the batch is a duplicate
                        await self._stage.apply(conn, record_name, record)
                        results.append("applied")
                    else:
                        results.append("duplicate")
        except psycopg.OperationalError as exc:
            if is_transient(exc):
                raise
            log.info("%s: batch of %d failed (%s), applied again record by record",
                     self._stage.name, len(batch), exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the record-by-record path finds the culprit
            log.info("%s: batch of %d failed (%r), applied again record by record",
                     self._stage.name, len(batch), exc)
            return False

        seconds_each = (time.perf_counter() - started) / len(batch)
        for result in results:
            self._sensor.on_record(result, seconds_each)
        return True

    async def _claim(self, conn: AsyncConnection[Any], event_ids: list[str]) -> set[str]:
        """Record ``event_ids`` as processed; return those that were not already."""
        cursor = await conn.execute(
            "INSERT INTO processed_events (consumer, event_id) "
            "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
            (self._stage.name, event_ids))
        return {row["event_id"] for row in await cursor.fetchall()}

    async def _apply_one(self, conn: AsyncConnection[Any], coordinates: Coordinates) -> None:
        started = time.perf_counter()
        try:
            record_name, record = codec.decode(coordinates.value)
        except codec.CodecError as exc:
            await self._dead_letter(conn, coordinates, None, "UndecodableRecord", str(exc))
            return

        try:
            async with conn.transaction():
                applied = await self._apply_once(conn, record_name, record)
        except psycopg.OperationalError as exc:
            if is_transient(exc):
                raise
            # Retrying cannot help (an index row over PostgreSQL's size
            # limit, say), and retrying forever would stop the partition.
            await self._dead_letter(conn, coordinates, record, type(exc).__name__, str(exc))
            return
        except StageError as exc:
            await self._dead_letter(conn, coordinates, record, type(exc).__name__, str(exc))
            return
        except Exception as exc:
            # The loop boundary: a bug in a stage must not block the partition.
            log.exception("%s: %s offset %d: unexpected error, sent to %s",
                          self._stage.name, coordinates.topic, coordinates.offset,
                          self._dead_letter_topic)
            await self._dead_letter(conn, coordinates, record, type(exc).__name__, repr(exc))
            return

        self._sensor.on_record("applied" if applied else "duplicate", time.perf_counter() - started)

    async def _apply_once(self, conn: AsyncConnection[Any], record_name: str,
                          record: dict[str, Any]) -> bool:
        cursor = await conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING", (self._stage.name, record["event_id"]))
        if cursor.rowcount == 0:
            return False
        await self._stage.apply(conn, record_name, record)
        return True

    async def _dead_letter(self, conn: AsyncConnection[Any], coordinates: Coordinates,
                           record: dict[str, Any] | None, error_class: str, reason: str) -> None:
        inbox_id = record.get("inbox_id") if record else None
        log.error("%s: %s partition %d offset %d inbox %s: dead-lettered, %s: %s",
                  self._stage.name, coordinates.topic, coordinates.partition,
                  coordinates.offset, inbox_id, error_class, reason)
        await outbox.add(conn, self._dead_letter_topic, inbox_id, "DeadLetter", {
            "event_id": ids.derive_id("dead-letter", self._stage.name, coordinates.topic,
                                      str(coordinates.partition), str(coordinates.offset)),
            "occurred_at": datetime.now(timezone.utc),
            "inbox_id": inbox_id,
            "stage": self._stage.name,
            "source_topic": coordinates.topic,
            "source_partition": coordinates.partition,
            "source_offset": coordinates.offset,
            "error_class": error_class,
            "reason": reason[:2000],
            "original_key": coordinates.key,
            "original_value": coordinates.value,
        })
        self._sensor.on_dead_letter(error_class)


def coordinates_of(event: faust.EventT) -> Coordinates:
    """Return where a faust event came from, with its raw key and value."""
    message = event.message
    return Coordinates(topic=message.topic, partition=message.partition, offset=message.offset,
                       key=message.key, value=message.value)


def run_agent(app: faust.App, topic: faust.TopicT,
              processor_factory: Callable[[], Awaitable[BatchProcessor]]) -> None:
    """Register the agent that feeds ``topic`` to the processor in batches."""
    processor: BatchProcessor | None = None

    @app.agent(topic, name="process")
    async def process(stream: faust.StreamT) -> None:
        nonlocal processor
        if processor is None:
            processor = await processor_factory()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_SECONDS):
            await processor.process([coordinates_of(event) for event in events])
