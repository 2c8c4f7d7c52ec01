"""The benchmark's subscriber: when each mail's events become visible on Kafka.

:class:`EventObserver` runs a kafka-python consumer in a child process, so
decoding events does not compete with the load generator for the
benchmark process's interpreter lock. From the moment it is ready it
records, with the wall clock of this machine:

- for ``conversation.events``: the first CONVERSATION_CREATED or incoming
  MESSAGE_ADDED per ``rfc_message_id`` (with the conversation id), and the
  first ASSIGNED per conversation id;
- for ``mail.received``: the first record per ``message_id``, which the IMAP
  measurement uses.

The times are when a subscriber polling the topic got the record, so they
include the broker's fetch path, as any consumer of the topics would see it.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from messagehub import codec, topics

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
POLL_TIMEOUT_MS = 100


@dataclass
class Observations:
    """Arrival times of the observed records, keyed to match the mails sent."""

    # rfc_message_id -> (seen at, conversation id, event type)
    conversation: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    # conversation id -> seen at
    assigned: dict[str, float] = field(default_factory=dict)
    # Message-ID of mail.received -> seen at
    received: dict[str, float] = field(default_factory=dict)


class EventObserver:
    """A child process that consumes the topics from their current end."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_observe, args=(bootstrap, child),
                                         name="bench-observer", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> None:
        """Start consuming and return once the consumer sits at the topics' end."""
        self._process.start()
        if not self._connection.poll(READY_TIMEOUT_SECONDS):
            self.stop()
            raise TimeoutError(f"the benchmark's Kafka consumer at {self._bootstrap} was not "
                               f"ready within {READY_TIMEOUT_SECONDS:.0f} s")
        try:
            message = self._connection.recv()
        except EOFError:
            message = f"the process exited with code {self._process.exitcode}"
        if message != "ready":
            self.stop()
            raise RuntimeError(f"the benchmark's Kafka consumer failed to start: {message}")

    def snapshot(self) -> Observations:
        """Return everything observed so far."""
        self._connection.send("snapshot")
        conversation, assigned, received = self._connection.recv()
        return Observations(conversation, assigned, received)

    def counts(self) -> Counts:
        """Return how many mails, assignments and received records were observed so far."""
        self._connection.send("counts")
        return Counts(*self._connection.recv())

    def stop(self) -> None:
        if self._process.is_alive():
            self._connection.send("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


@dataclass(frozen=True)
class Counts:
    conversation: int
    assigned: int
    received: int


def wait_for(observer: EventObserver, done: Callable[[Counts], bool], *,
             timeout_seconds: float, interval_seconds: float = 0.25) -> bool:
    """Poll ``observer`` until ``done(counts)`` or the timeout; return whether it was done."""
    deadline = time.monotonic() + timeout_seconds
    while not done(observer.counts()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_seconds)
    return True


def _observe(bootstrap: str, connection: multiprocessing.connection.Connection) -> None:
    """Consume until the parent sends "stop", and send it counts or snapshots on request."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                                 client_id="messagehub-bench-observer", fetch_max_wait_ms=50)
        partitions = [TopicPartition(topic, partition)
                      for topic in (topics.CONVERSATION_EVENTS, topics.MAIL_RECEIVED)
                      for partition in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for partition in partitions:
            consumer.position(partition)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(repr(exc))
        return

    seen = Observations()
    connection.send("ready")
    while True:
        for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
            now = time.time()
            for record in records:
                _record(seen, record.topic, record.value, now)
        while connection.poll():
            request = connection.recv()
            if request == "stop":
                consumer.close()
                return
            if request == "counts":
                connection.send((len(seen.conversation), len(seen.assigned), len(seen.received)))
            else:
                connection.send((seen.conversation, seen.assigned, seen.received))


def _record(seen: Observations, topic: str, value: bytes, now: float) -> None:
    try:
        _, event = codec.decode(value)
    except codec.CodecError:
        return
    if topic == topics.MAIL_RECEIVED:
        if event["message_id"]:
            seen.received.setdefault(event["message_id"], now)
        return

    kind = event["type"]
    if kind == "ASSIGNED":
        seen.assigned.setdefault(event["conversation_id"], now)
    elif kind == "CONVERSATION_CREATED" or (kind == "MESSAGE_ADDED"
                                             and event["direction"] == "incoming"):
        if event["rfc_message_id"]:
            seen.conversation.setdefault(event["rfc_message_id"],
                                         (now, event["conversation_id"], kind))
