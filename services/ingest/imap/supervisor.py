"""Running the folder syncs of the inboxes this replica owns.

``services/ingest/__main__.py`` creates one :class:`ImapSupervisor`; the
assignment (:mod:`services.ingest.imap.assignment`) gives it the inboxes
this replica owns, and it keeps one :class:`FolderSync` thread per synced
folder of each of them. It reconciles an inbox when its settings change
(PostgreSQL NOTIFY from the trigger on ``inbox_imap``) and, from the
service's timer, every ``MESSAGEHUB_IMAP_RECONCILE_SECONDS`` anyway, so a
missed notification only delays a change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from messagehub import secrets
from services.ingest.imap.backend import LoopBackend
from services.ingest.imap.connection import ImapAccount
from services.ingest.imap.folder_sync import FolderSync, SyncOptions
from services.ingest.imap.state import SyncState
from services.ingest.intake import MailIntake

log = logging.getLogger(__name__)

# How long stopping one inbox's threads may take. A thread blocked in a
# socket call is interrupted at once, so this is only a safety bound.
STOP_TIMEOUT_SECONDS = 30.0


class SupervisorSensor(Protocol):
    """The metric hooks the supervisor and its syncs call."""

    def on_imap_error(self, error_class: str) -> None: ...

    def on_imap_event(self, event: str) -> None: ...

    def on_accepted(self, source: str, seconds: float) -> None: ...

    def on_imap_states(self, inboxes_by_state: dict[str, int]) -> None: ...


@dataclass
class _Running:
    version: int
    syncs: list[FolderSync]
    threads: list[threading.Thread]


class ImapSupervisor:
    """Starts, restarts and stops the folder syncs of the owned inboxes."""

    def __init__(self, *, state: SyncState, intake: MailIntake, options: SyncOptions,
                 sensor: SupervisorSensor,
                 make_sync: Callable[[ImapAccount, str, LoopBackend], FolderSync] | None = None
                 ) -> None:
        self._state = state
        self._intake = intake
        self._options = options
        self._sensor = sensor
        self._make_sync = make_sync or self._default_sync
        self._running: dict[str, _Running] = {}
        self._owns: Callable[[str], bool] = lambda _inbox_id: False
        self._lock = asyncio.Lock()

    @property
    def inbox_ids(self) -> set[str]:
        """The inboxes whose syncs run on this replica now."""
        return set(self._running)

    def states(self) -> dict[str, int]:
        """Return how many folder syncs are in each state."""
        counts = collections.Counter(sync.state for running in self._running.values()
                                     for sync in running.syncs)
        return dict(counts)

    async def set_ownership(self, owns: Callable[[str], bool]) -> None:
        """Adopt a new ownership rule: stop what is no longer ours, start what now is."""
        self._owns = owns
        await self.reconcile_all()

    async def reconcile_all(self) -> None:
        """Bring the running syncs in line with the database and the ownership rule."""
        enabled = await self._state.enabled_versions()
        wanted = {inbox_id: version for inbox_id, version in enabled.items()
                  if self._owns(inbox_id)}
        for inbox_id in list(self._running):
            if inbox_id not in wanted:
                await self.stop(inbox_id)
        for inbox_id, version in wanted.items():
            running = self._running.get(inbox_id)
            if running is None or running.version != version:
                await self.reconcile(inbox_id)

    async def reconcile(self, inbox_id: str) -> None:
        """Start, restart or stop one inbox's syncs according to its current settings."""
        async with self._lock:
            account = None
            if self._owns(inbox_id):
                try:
                    account = await self._state.account(inbox_id)
                except ValueError as exc:
                    await self._report_unusable(inbox_id, exc)
            running = self._running.get(inbox_id)
            if account is not None and running is not None and \
                    running.version == account.settings_version:
                return
            if running is not None:
                await self._stop_locked(inbox_id)
            if account is not None:
                self._start_locked(account)

    async def _report_unusable(self, inbox_id: str, exc: ValueError) -> None:
        """Record settings that cannot start a sync, so that the inbox's health shows why."""
        # A password no key decrypts needs the same fix as a wrong one.
        error_class = "auth" if isinstance(exc, secrets.SecretsError) else "settings"
        log.error("inbox %s: IMAP settings cannot be used: %s", inbox_id, exc)
        self._sensor.on_imap_error(error_class)
        for folder in await self._state.folders(inbox_id):
            await self._state.report(inbox_id, folder,
                                     "auth_failed" if error_class == "auth" else "backoff",
                                     error_class=error_class, error=str(exc))

    async def stop(self, inbox_id: str) -> None:
        async with self._lock:
            await self._stop_locked(inbox_id)

    async def stop_many(self, inbox_ids: Iterable[str]) -> None:
        """Stop several inboxes at once: all are signalled first, then all are awaited."""
        async with self._lock:
            stopping = [(inbox_id, self._running.pop(inbox_id)) for inbox_id in list(inbox_ids)
                        if inbox_id in self._running]
            for _inbox_id, running in stopping:
                for sync in running.syncs:
                    sync.stop()
            for inbox_id, running in stopping:
                await self._join(inbox_id, running)

    async def stop_all(self) -> None:
        await self.stop_many(list(self._running))

    def _start_locked(self, account: ImapAccount) -> None:
        loop = asyncio.get_running_loop()
        syncs, threads = [], []
        for folder in account.folders:
            backend = LoopBackend(loop=loop, state=self._state, intake=self._intake,
                                  inbox_id=account.inbox_id,
                                  max_attempts=self._options.max_attempts,
                                  retry_base_seconds=self._options.retry_base_seconds,
                                  sensor=self._sensor)
            sync = self._make_sync(account, folder, backend)
            thread = threading.Thread(target=sync.run, daemon=True,
                                      name=f"imap-{account.inbox_id[:8]}-{folder[:16]}")
            thread.start()
            syncs.append(sync)
            threads.append(thread)
        self._running[account.inbox_id] = _Running(account.settings_version, syncs, threads)
        log.info("inbox %s: IMAP sync of %d folder(s) started at settings version %d",
                 account.inbox_id, len(syncs), account.settings_version)

    async def _stop_locked(self, inbox_id: str) -> None:
        running = self._running.pop(inbox_id, None)
        if running is None:
            return
        for sync in running.syncs:
            sync.stop()
        await self._join(inbox_id, running)

    async def _join(self, inbox_id: str, running: _Running) -> None:
        loop = asyncio.get_running_loop()
        for thread in running.threads:
            # The thread may be waiting on this loop (a store or publish call),
            # so it is joined from an executor, never on the loop itself.
            await loop.run_in_executor(None, thread.join, STOP_TIMEOUT_SECONDS)
            if thread.is_alive():
                log.error("inbox %s: sync thread %s did not stop within %.0f s", inbox_id,
                          thread.name, STOP_TIMEOUT_SECONDS)
        log.info("inbox %s: IMAP sync stopped", inbox_id)

    def _default_sync(self, account: ImapAccount, folder: str,
                      backend: LoopBackend) -> FolderSync:
        return FolderSync(account, folder, backend, self._options,
                          on_error=self._sensor.on_imap_error,
                          on_event=self._sensor.on_imap_event)
