"""``messagehub replay``: rebuild the router's tables from the topics.

Everything the router writes is derived from ``mail.received`` and
``mail.sent`` plus the raw mail store those events point to, and every id
it writes is a UUIDv5 of the inbox and the mail's dedup key. Replaying the
topics into an empty database therefore gives the same conversations,
messages, contacts, thread keys, participants and notices; :func:`snapshot`
reads those tables so a caller can compare two databases.

The rebuild:

1. applies the schema to the target database and rejects one that already
   contains conversations or messages;
2. copies what the topics do not carry from the source database: the
   inbox configuration (inboxes, agents, inbox_agents) and the raw mail
   store (``raw_mails``, the claim-check bytes the events name);
3. reads both topics from the beginning up to their current end, merges
   them by record timestamp while keeping each partition's order, and
   feeds them in batches to the same ``BatchProcessor`` and ``RouterStage``
   the service runs, with deduplication and dead-lettering as in
   production;
4. deletes the outbox rows the replay queued, because those events are on
   the topics already.

NOTE: status changes that an agent makes (resolving a conversation) are
not replayed, because they reach PostgreSQL through the control plane and
not through these topics. A replay reproduces them once they are events the
router consumes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from messagehub import db, topics
from messagehub.localstack.postgres import APP_ROLE, SUPERUSER, PostgresServer
from messagehub.worker import BATCH_MAX, BatchProcessor, Coordinates
from services.router.stage import RouterStage

with warnings.catch_warnings():
    # kafka-python 3.0 warns about importlib.resources at import on Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

SOURCE_TOPICS = (topics.MAIL_RECEIVED, topics.MAIL_SENT)
CONFIGURATION_TABLES = ("inboxes", "agents", "inbox_agents", "raw_mails")

# The router's tables, each with the condition that limits it to some
# inboxes and its sort key. Columns other stages own are left out:
# conversations.assignee_id belongs to assign.
_IN_INBOXES = "inbox_id = ANY(%(inboxes)s)"
SNAPSHOT_QUERIES = {
    "contacts": f"SELECT * FROM contacts WHERE {_IN_INBOXES} ORDER BY id",
    "conversations": "SELECT id, inbox_id, contact_id, subject, status, reply_token, created_at, "
                     "last_message_at, subject_key, started_by_reply, superseded_by "
                     f"FROM conversations WHERE {_IN_INBOXES} ORDER BY id",
    "messages": f"SELECT * FROM messages WHERE {_IN_INBOXES} ORDER BY id",
    "thread_keys": f"SELECT * FROM thread_keys WHERE {_IN_INBOXES} ORDER BY inbox_id, message_id",
    "conversation_participants": "SELECT * FROM conversation_participants WHERE conversation_id "
                                 f"IN (SELECT id FROM conversations WHERE {_IN_INBOXES}) "
                                 "ORDER BY conversation_id, address",
    "notices": f"SELECT * FROM notices WHERE {_IN_INBOXES} ORDER BY id",
}


class ReplayError(RuntimeError):
    """The replay cannot start; the message names the database or topic that is wrong."""


@dataclass(frozen=True)
class ReplayResult:
    records: int  # records read from the topics
    applied: int  # records that changed the target (the rest were duplicates or dead letters)
    dead_letters: int


@dataclass(frozen=True)
class TimedRecord:
    timestamp_ms: int
    coordinates: Coordinates


# ---------------------------------------------------------------------------
# The target database
# ---------------------------------------------------------------------------


def create_local_database(stack: dict[str, Any], name: str) -> str:
    """Create database ``name`` on the local stack's PostgreSQL; return its URL.

    The application role may not create databases, so this connects as the
    superuser over the server's unix socket, as ``messagehub up`` does.
    """
    source = urlsplit(stack["database_url"])
    server = PostgresServer(Path(stack["state_dir"]) / "postgresql", source.port or 5432)
    with psycopg.connect(host=str(server.socket_dir), port=server.port, user=SUPERUSER,
                         dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise ReplayError(f"database {name!r} already exists: choose a new name")
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(APP_ROLE)))
    url: str = urlunsplit(source._replace(path=f"/{name}"))
    return url


def prepare_target(source_url: str, target_url: str) -> None:
    """Apply the schema to the target, check it is empty, copy configuration and raw mail."""
    db.apply_schema(target_url)
    with db.connect(target_url) as target:
        row = target.execute("SELECT (SELECT count(*) FROM conversations) + "
                             "(SELECT count(*) FROM messages) AS n").fetchone()
        if row is None or row["n"]:
            raise ReplayError("the target database is not empty, it contains conversations or messages: "
                              "replay into a new, empty database")

    with db.connect(source_url) as source, db.connect(target_url) as target:
        for table in CONFIGURATION_TABLES:
            _copy_table(source, target, table)
        target.commit()
    log.info("replay: configuration and raw mail store copied to the target database")


def _copy_table(source: psycopg.Connection[Any], target: psycopg.Connection[Any],
                table: str) -> None:
    # Columns are matched by name: the two databases may have received
    # their columns in a different order, or the target newer ones.
    columns = [name for name in _columns(source, table) if name in set(_columns(target, table))]
    column_list = sql.SQL(", ").join(sql.Identifier(name) for name in columns)
    copy_out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT BINARY)").format(
        sql.Identifier(table), column_list)
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), column_list)
    with source.cursor().copy(copy_out) as reader, target.cursor().copy(copy_in) as writer:
        for chunk in reader:
            writer.write(chunk)


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                        "table_schema = current_schema() AND table_name = %s "
                        "ORDER BY ordinal_position", (table,)).fetchall()
    return [row["column_name"] for row in rows]


# ---------------------------------------------------------------------------
# Reading the topics
# ---------------------------------------------------------------------------


def read_topics(bootstrap: str, names: Sequence[str] = SOURCE_TOPICS) -> list[TimedRecord]:
    """Return every record of ``names`` up to their end now, in replay order.

    Records are merged by timestamp; each partition keeps its offset order,
    because that is the order the router consumed it in.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                             group_id=None, client_id="messagehub-replay")
    try:
        partitions = _partitions(consumer, names)
        beginnings = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        pending = {tp: ends[tp] for tp in partitions if ends[tp] > beginnings[tp]}
        streams = _read_until(consumer, pending)
    finally:
        consumer.close()
    return list(heapq.merge(*streams.values(), key=lambda record: record.timestamp_ms))


def _partitions(consumer: KafkaConsumer, names: Sequence[str]) -> list[TopicPartition]:
    partitions: list[TopicPartition] = []
    for name in names:
        numbers = consumer.partitions_for_topic(name)
        if not numbers:
            raise ReplayError(f"topic {name!r} not found on the broker: is this the stack "
                              "whose database you replay?")
        partitions += [TopicPartition(name, number) for number in sorted(numbers)]
    return partitions


def _read_until(consumer: KafkaConsumer,
                ends: dict[TopicPartition, int]) -> dict[TopicPartition, list[TimedRecord]]:
    """Read each partition from its beginning up to (not including) its end offset."""
    streams: dict[TopicPartition, list[TimedRecord]] = {tp: [] for tp in ends}
    if not ends:
        return streams
    consumer.assign(list(ends))
    consumer.seek_to_beginning(*ends)
    remaining = set(ends)

    while remaining:
        batches = consumer.poll(timeout_ms=10_000)
        if not batches:
            raise ReplayError(f"reading the topics stalled before their end: {sorted(remaining)}")
        for tp, messages in batches.items():
            streams[tp] += [_timed(m) for m in messages if m.offset < ends[tp]]
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
    return streams


def _timed(message: Any) -> TimedRecord:
    return TimedRecord(message.timestamp, Coordinates(
        topic=message.topic, partition=message.partition, offset=message.offset,
        key=message.key, value=message.value))


# ---------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------


class _CountingSensor:
    def __init__(self) -> None:
        self.applied = 0
        self.dead_letters = 0

    def on_record(self, result: str, seconds: float) -> None:
        if result == "applied":
            self.applied += 1

    def on_dead_letter(self, error_class: str) -> None:
        self.dead_letters += 1


class _HeldRelay:
    """Stands in for the outbox relay: the replay publishes nothing."""

    async def publish_pending(self) -> int:
        return 0


def _batches(records: list[TimedRecord]) -> Iterator[list[Coordinates]]:
    for start in range(0, len(records), BATCH_MAX):
        yield [record.coordinates for record in records[start:start + BATCH_MAX]]


async def apply_records(target_url: str, stage: RouterStage,
                        records: list[TimedRecord]) -> ReplayResult:
    """Apply ``records`` to the target with the production batch loop."""
    sensor = _CountingSensor()
    pool = AsyncConnectionPool(target_url, min_size=1, max_size=1, open=False,
                               kwargs={"row_factory": psycopg.rows.dict_row, "autocommit": False})
    await pool.open(wait=True, timeout=30)
    try:
        processor = BatchProcessor(stage=stage, pool=pool, relay=_HeldRelay(),  # type: ignore[arg-type]
                                   dead_letter_topic=topics.ROUTER_DEAD_LETTER, sensor=sensor)
        for batch in _batches(records):
            await processor.process(batch)

        # These events reached the topics when the records were first applied.
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM outbox")
    finally:
        await pool.close()
    return ReplayResult(records=len(records), applied=sensor.applied,
                        dead_letters=sensor.dead_letters)


def replay(*, source_url: str, target_url: str, bootstrap: str, stage: RouterStage) -> ReplayResult:
    """Rebuild the router's tables of ``source_url`` in the empty ``target_url``."""
    prepare_target(source_url, target_url)
    records = read_topics(bootstrap)
    log.info("replay: %d records read from %s", len(records), ", ".join(SOURCE_TOPICS))
    result = asyncio.run(apply_records(target_url, stage, records))
    log.info("replay: %d records applied, %d dead-lettered", result.applied, result.dead_letters)
    return result


def snapshot(database_url: str,
             inbox_ids: Collection[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Return the router's tables in a fixed order, for comparing two databases.

    With ``inbox_ids``, only the rows of those inboxes.
    """
    with db.connect(database_url) as conn:
        if inbox_ids is None:
            inbox_ids = [str(row["id"]) for row in conn.execute("SELECT id FROM inboxes")]
        params = {"inboxes": list(inbox_ids)}
        return {table: conn.execute(query, params).fetchall()
                for table, query in SNAPSHOT_QUERIES.items()}


def differences(left: dict[str, list[dict[str, Any]]],
                right: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Return, per table, how many rows differ between two snapshots."""
    counts: dict[str, int] = {}
    for table in SNAPSHOT_QUERIES:
        left_rows, right_rows = left.get(table, []), right.get(table, [])
        differing = sum(1 for a, b in zip(left_rows, right_rows) if a != b)
        differing += abs(len(left_rows) - len(right_rows))
        if differing:
            counts[table] = differing
    return counts
