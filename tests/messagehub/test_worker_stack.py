"""The batch loop on the stack's PostgreSQL: whole batches, and the redo when a record fails.

A stage marked ``all_or_nothing`` gets its batch in one transaction with one
``processed_events`` insert. When a record fails, the batch is rolled back
and applied again record by record, so the failing record alone is
dead-lettered and every other record is applied exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from psycopg import AsyncConnection

from messagehub import codec, db, topics
from messagehub.events import conversation_event
from messagehub.worker import BatchProcessor, Coordinates, StageError

pytestmark = pytest.mark.stack

SOURCE_TOPIC = f"tests.worker-batch.{uuid.uuid4().hex[:8]}"


class RowStage:
    """Writes one row per record; a record whose reason is "bad" fails."""

    all_or_nothing = True

    def __init__(self, table: str) -> None:
        self.name = f"test-{table}"
        self.table = table
        self.calls: list[str] = []

    async def apply(self, conn: AsyncConnection[Any], record_name: str,
                    record: dict[str, Any]) -> None:
        self.calls.append(record["event_id"])
        await conn.execute(f"INSERT INTO {self.table} (event_id) VALUES (%s)",
                           (record["event_id"],))
        if record["reason"] == "bad":
            raise StageError(f"record {record['event_id']} is bad")


class Sensor:
    def __init__(self) -> None:
        self.results: list[str] = []
        self.dead_letters: list[str] = []

    def on_record(self, result: str, seconds: float) -> None:
        self.results.append(result)

    def on_dead_letter(self, error_class: str) -> None:
        self.dead_letters.append(error_class)


class NoRelay:
    async def publish_pending(self) -> int:
        return 0  # the stack's own relays send the dead letter


def coordinates(offset: int, event_id: str, verdict: str) -> Coordinates:
    event = conversation_event("MESSAGE_ADDED", fact=event_id, inbox_id=str(uuid.uuid4()),
                               conversation_id=str(uuid.uuid4()), reason=verdict)
    event["event_id"] = event_id
    return Coordinates(topic=SOURCE_TOPIC, partition=0, offset=offset, key=b"inbox",
                       value=codec.encode("ConversationEvent", event))


def run_batch(stack: dict[str, Any], stage: RowStage, sensor: Sensor,
              batch: list[Coordinates], *, processed_before: list[str] = ()) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        pool = await db.open_pool(stack["database_url"])
        try:
            async with pool.connection() as conn:
                await conn.execute(f"CREATE TABLE {stage.table} (event_id text NOT NULL)")
                for event_id in processed_before:
                    await conn.execute("INSERT INTO processed_events (consumer, event_id) "
                                       "VALUES (%s, %s)", (stage.name, event_id))
                await conn.commit()
            processor = BatchProcessor(stage=stage, pool=pool, relay=NoRelay(),  # type: ignore[arg-type]
                                       dead_letter_topic=topics.ROUTER_DEAD_LETTER, sensor=sensor)
            await processor.process(batch)
            async with pool.connection() as conn:
                rows = await (await conn.execute(
                    f"SELECT event_id FROM {stage.table} ORDER BY event_id")).fetchall()
                processed = await (await conn.execute(
                    "SELECT event_id FROM processed_events WHERE consumer = %s "
                    "ORDER BY event_id", (stage.name,))).fetchall()
                await conn.execute(f"DROP TABLE {stage.table}")
                await conn.commit()
            return {"rows": [row["event_id"] for row in rows],
                    "processed": [row["event_id"] for row in processed]}
        finally:
            await pool.close()

    return asyncio.run(run())


def test_whole_batch__applied_once_with_duplicates_skipped(stack: dict[str, Any]) -> None:
    stage, sensor = RowStage(f"worker_rows_{uuid.uuid4().hex[:8]}"), Sensor()
    batch = [coordinates(0, "e1", "ok"), coordinates(1, "e2", "ok"),
             coordinates(2, "e1", "ok"), coordinates(3, "e0", "ok")]

    state = run_batch(stack, stage, sensor, batch, processed_before=["e0"])

    assert state["rows"] == ["e1", "e2"]
    assert state["processed"] == ["e0", "e1", "e2"]
    assert stage.calls == ["e1", "e2"]  # one pass: no redo
    assert sorted(sensor.results) == ["applied", "applied", "duplicate", "duplicate"]


def test_whole_batch__failing_record_dead_lettered(stack: dict[str, Any]) -> None:
    stage, sensor = RowStage(f"worker_rows_{uuid.uuid4().hex[:8]}"), Sensor()
    batch = [coordinates(10, "e1", "ok"), coordinates(11, "bad1", "bad"),
             coordinates(12, "e2", "ok"), coordinates(13, "e1", "ok")]

    state = run_batch(stack, stage, sensor, batch)

    assert state["rows"] == ["e1", "e2"]
    assert state["processed"] == ["e1", "e2"]
    # The whole pass stopped at the bad record; the redo applied each record once.
    assert stage.calls == ["e1", "bad1", "e1", "bad1", "e2"]
    assert sensor.dead_letters == ["StageError"]
    assert sorted(sensor.results) == ["applied", "applied", "duplicate"]
    [letter] = dead_letters(stack, SOURCE_TOPIC, offset=11)
    assert letter["error_class"] == "StageError"
    assert letter["reason"] == "record bad1 is bad"


def dead_letters(stack: dict[str, Any], source_topic: str, *, offset: int) -> list[dict[str, Any]]:
    """Read router.dead-letter, which the stack's relays fill, for the letters of one record."""
    consumer = KafkaConsumer(bootstrap_servers=stack["kafka_bootstrap"], group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        partitions = [TopicPartition(topics.ROUTER_DEAD_LETTER, partition) for partition
                      in consumer.partitions_for_topic(topics.ROUTER_DEAD_LETTER)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while not found and time.monotonic() < deadline:
            for message in consumer:
                _name, letter = codec.decode(message.value)
                if (letter["source_topic"], letter["source_offset"]) == (source_topic, offset):
                    found.append(letter)
    finally:
        consumer.close()
    return found


def test_whole_batch__one_bad_record_alone(stack: dict[str, Any]) -> None:
    stage, sensor = RowStage(f"worker_rows_{uuid.uuid4().hex[:8]}"), Sensor()

    state = run_batch(stack, stage, sensor, [coordinates(20, "bad2", "bad")])

    assert state["rows"] == []
    assert state["processed"] == []
    assert stage.calls == ["bad2", "bad2"]
    assert sensor.dead_letters == ["StageError"]
    assert sensor.results == []
