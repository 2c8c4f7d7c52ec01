"""Reading the stages' dead-letter topics for the operator.

:func:`read` is called by the dead-letter routes of
:mod:`services.api.admin_routes` (in a thread: kafka-python blocks). It
reads every partition of the chosen topics from the start to the end
offsets it saw when it began, without a consumer group, so it commits
nothing and disturbs no stage. Dead letters are rare, so reading them whole
is cheap; the time spent is bounded by ``READ_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from messagehub import codec, topics

log = logging.getLogger(__name__)

STAGES = ("router", "assign", "outbound")
TOPIC_OF_STAGE = {"router": topics.ROUTER_DEAD_LETTER, "assign": topics.ASSIGN_DEAD_LETTER,
                  "outbound": topics.OUTBOUND_DEAD_LETTER}
READ_TIMEOUT_SECONDS = 20.0


class DeadLetterReadError(Exception):
    """The dead-letter topics could not be read in time; a retry may succeed."""

    retriable = True


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, decoded."""

    event_id: str
    occurred_at: datetime
    inbox_id: str | None
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    error_class: str
    reason: str
    original_key: bytes | None
    original_value: bytes | None

    def summary(self) -> dict[str, Any]:
        """Return the dead letter for JSON, without the original record's bytes."""
        return {"id": self.event_id, "occurred_at": self.occurred_at, "inbox_id": self.inbox_id,
                "stage": self.stage, "source_topic": self.source_topic,
                "source_partition": self.source_partition, "source_offset": self.source_offset,
                "error_class": self.error_class, "reason": self.reason,
                "original_record": _record_name(self.original_value)}


def topics_of(stage: str | None) -> list[str]:
    """Return the dead-letter topic of ``stage``, or all of them for None."""
    return [TOPIC_OF_STAGE[stage]] if stage else list(TOPIC_OF_STAGE.values())


def read(bootstrap: str, topic_names: list[str]) -> list[DeadLetter]:
    """Return every dead letter now on ``topic_names``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, client_id="messagehub-api-dead-letters",
                             request_timeout_ms=15000)
    try:
        partitions = [TopicPartition(name, number) for name in topic_names
                      for number in sorted(consumer.partitions_for_topic(name) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        consumer.seek_to_beginning(*partitions)
        return _read_until(consumer, ends)
    finally:
        consumer.close()


def _read_until(consumer: Any, ends: dict[Any, int]) -> list[DeadLetter]:
    letters: list[DeadLetter | None] = []
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    while any(consumer.position(partition) < end for partition, end in ends.items()):
        if time.monotonic() > deadline:
            raise DeadLetterReadError(f"reading the dead-letter topics took more than "
                                      f"{READ_TIMEOUT_SECONDS:g}s: is Kafka reachable?")
        for partition, records in consumer.poll(timeout_ms=500).items():
            letters += [_decode(record) for record in records if record.offset < ends[partition]]
    return [letter for letter in letters if letter is not None]


def _decode(record: Any) -> DeadLetter | None:
    try:
        name, value = codec.decode(record.value)
    except codec.CodecError as exc:
        log.warning("dead letters: %s partition %d offset %d cannot be decoded: %s",
                    record.topic, record.partition, record.offset, exc)
        return None
    if name != "DeadLetter":
        return None
    return DeadLetter(**{field: value[field] for field in DeadLetter.__dataclass_fields__})


def _record_name(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return codec.decode(value)[0]
    except codec.CodecError:
        return None
