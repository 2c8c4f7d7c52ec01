"""Which replica syncs which inbox: the consumer-group assignment on real Kafka.

Two replicas (assignment plus supervisor each) run on the rig's loop in a
consumer group of their own. The folder syncs they start are stand-ins that
only record who runs which inbox, so the test records every start and stop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from messagehub import secrets
from services.ingest.imap.assignment import InboxAssignment, partition_of
from services.ingest.imap.backend import LoopBackend
from services.ingest.imap.connection import ImapAccount
from services.ingest.imap.folder_sync import SyncOptions
from services.ingest.imap.supervisor import ImapSupervisor
from services.ingest.metrics import IngestMetrics
from tests.ingest.harness import IngestRig, imap_port, new_imap_user, query, wait_for
from tests.pipeline_helpers import create_inbox

pytestmark = pytest.mark.stack


class Ledger:
    """Who runs which inbox now, and whether two replicas ever ran one at once."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.overlaps: list[str] = []
        self._lock = threading.Lock()

    def start(self, inbox_id: str, replica: str) -> None:
        with self._lock:
            if inbox_id in self.running:
                self.overlaps.append(inbox_id)
            self.running[inbox_id] = replica

    def stop(self, inbox_id: str) -> None:
        with self._lock:
            self.running.pop(inbox_id, None)

    def of(self, replica: str, inbox_ids: set[str]) -> set[str]:
        with self._lock:
            return {i for i, r in self.running.items() if r == replica and i in inbox_ids}


class RecordingSync:
    """A stand-in for a FolderSync: runs until stopped and records that in the ledger."""

    def __init__(self, ledger: Ledger, replica: str, inbox_id: str) -> None:
        self._ledger = ledger
        self._replica = replica
        self._inbox_id = inbox_id
        self._stopped = threading.Event()
        self.state = "idle"

    def run(self) -> None:
        self._ledger.start(self._inbox_id, self._replica)
        self._stopped.wait()
        self._ledger.stop(self._inbox_id)

    def stop(self) -> None:
        self._stopped.set()


class Replica:
    def __init__(self, rig: IngestRig, ledger: Ledger, name: str, group_id: str) -> None:
        def make_sync(account: ImapAccount, _folder: str, _backend: LoopBackend) -> Any:
            return RecordingSync(ledger, name, account.inbox_id)

        self.supervisor = ImapSupervisor(state=rig.state, intake=rig.intake,
                                         options=SyncOptions(), sensor=IngestMetrics(),
                                         make_sync=make_sync)
        self._rig = rig
        self.assignment = rig.run(self._start(rig.stack["kafka_bootstrap"], group_id, name))
        self._task = asyncio.run_coroutine_threadsafe(self.assignment.run(), rig.loop)

    async def _start(self, bootstrap: str, group_id: str, name: str) -> InboxAssignment:
        # aiokafka's consumer must be made on the loop it runs on.
        assignment = InboxAssignment(bootstrap_servers=bootstrap, supervisor=self.supervisor,
                                     group_id=group_id, client_id=f"tests-{name}")
        await assignment.start()
        return assignment

    def stop(self) -> None:
        self._task.cancel()
        self._rig.run(self.assignment.stop())


def test_two_replicas__disjoint_inboxes(stack: dict[str, Any],
                                                        rig: IngestRig) -> None:
    login, password = new_imap_user()
    secrets.configure(stack["encryption_keys"])
    inbox_ids = set()
    for _ in range(12):
        inbox = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
        inbox_ids.add(inbox["id"])
        query(stack, "INSERT INTO inbox_imap (inbox_id, host, port, username, "
                     "password_encrypted, security, sync_enabled) "
                     "VALUES (%s, '127.0.0.1', %s, %s, %s, 'tls', true)",
              inbox["id"], imap_port(stack, "imaps"), login, secrets.encrypt(password))
    ledger = Ledger()
    group = f"tests-imap-{uuid.uuid4().hex[:8]}"

    first = Replica(rig, ledger, "first", group)
    try:
        wait_for(lambda: ledger.of("first", inbox_ids) == inbox_ids, timeout=60,
                 message="the first replica to run every inbox")
        second = Replica(rig, ledger, "second", group)
        try:
            wait_for(lambda: first.assignment.assigned.is_set() and
                     second.assignment.assigned.is_set() and
                     len(second.assignment.owned_partitions) == 8, timeout=60,
                     message="the partitions to be split between the replicas")
            wait_for(lambda: ledger.of("first", inbox_ids) | ledger.of("second", inbox_ids)
                     == inbox_ids, timeout=30, message="every inbox to run again")
            split = (ledger.of("first", inbox_ids), ledger.of("second", inbox_ids))
            owned_second = second.assignment.owned_partitions
        finally:
            second.stop()
        wait_for(lambda: ledger.of("first", inbox_ids) == inbox_ids, timeout=60,
                 message="the first replica to take every inbox back")
    finally:
        first.stop()

    assert ledger.overlaps == []
    assert split[0] & split[1] == set()
    assert split[0] | split[1] == inbox_ids
    assert split[1] == {i for i in inbox_ids if partition_of(i, 16) in owned_second}
    assert ledger.of("first", inbox_ids) == set()
