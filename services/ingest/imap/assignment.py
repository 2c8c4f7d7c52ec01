"""Which ingest replica syncs which inbox: Kafka's consumer-group assignment.

Every ingest replica joins the consumer group ``messagehub-ingest-imap`` on
the topic ``ingest.imap-assignment`` (see :mod:`messagehub.topics`). The
topic carries no records; its partitions are the unit of ownership. An
inbox belongs to the partition that Kafka's default partitioner gives its
id as a key (murmur2), and the replica that is assigned that partition syncs
the inbox. Kafka's eager rebalance protocol revokes every partition from
every member before it assigns them again, and :class:`InboxAssignment`
stops the syncs of revoked partitions before it returns from the revoke
callback, so two replicas never sync one inbox at the same time while both
stay in the group. A replica that loses the group (a long pause, a network
split) may overlap with its successor for a while; the cursor only moves
forward and the router drops duplicates, so an overlap repeats work but
never loses or doubles a mail.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Collection

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from messagehub import topics
from services.ingest.imap.supervisor import ImapSupervisor

with warnings.catch_warnings():
    # kafka-python 3.0 warns about importlib.resources at import on Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.partitioner.default import murmur2

log = logging.getLogger(__name__)

GROUP_ID = "messagehub-ingest-imap"


def partition_of(inbox_id: str, partitions: int) -> int:
    """Return the partition Kafka's default partitioner gives the key ``inbox_id``."""
    return int(murmur2(inbox_id.encode()) & 0x7FFFFFFF) % partitions


class InboxAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Follows the group's partition assignment and hands the result to the supervisor."""

    def __init__(self, *, bootstrap_servers: str, supervisor: ImapSupervisor,
                 topic: str = topics.IMAP_ASSIGNMENT, group_id: str = GROUP_ID,
                 client_id: str = "messagehub-ingest") -> None:
        self._supervisor = supervisor
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","), group_id=group_id,
            client_id=client_id, enable_auto_commit=False, auto_offset_reset="latest",
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000)
        self._owned: frozenset[int] = frozenset()
        self._partitions = 0
        self.assigned = asyncio.Event()

    @property
    def owned_partitions(self) -> frozenset[int]:
        return self._owned

    def owns(self, inbox_id: str) -> bool:
        """Tell whether this replica is to sync ``inbox_id`` under the current assignment."""
        return bool(self._partitions) and \
            partition_of(inbox_id, self._partitions) in self._owned

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe([self._topic], listener=self)
        log.info("IMAP assignment: joining group %s on topic %s", GROUP_ID, self._topic)

    async def run(self) -> None:
        """Keep the membership alive; the topic has no records, so nothing is returned."""
        while True:
            await self._consumer.getmany(timeout_ms=1000)

    async def stop(self) -> None:
        """Stop every sync first, then leave the group so the partitions move at once."""
        self._owned = frozenset()
        await self._supervisor.stop_all()
        await self._consumer.stop()

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        revoked_numbers = {tp.partition for tp in revoked if tp.topic == self._topic}
        self._owned = self._owned - revoked_numbers
        self.assigned.clear()
        stopping = [inbox_id for inbox_id in self._supervisor.inbox_ids
                    if not self.owns(inbox_id)]
        if stopping:
            log.info("IMAP assignment: partitions %s revoked, stopping %d inbox sync(s)",
                     sorted(revoked_numbers), len(stopping))
        await self._supervisor.stop_many(stopping)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._partitions = len(self._consumer.partitions_for_topic(self._topic) or ())
        self._owned = frozenset(tp.partition for tp in assigned if tp.topic == self._topic)
        log.info("IMAP assignment: %d of %d partitions assigned: %s", len(self._owned),
                 self._partitions, sorted(self._owned))
        await self._supervisor.set_ownership(self.owns)
        self.assigned.set()
