"""What a folder sync thread calls to store mail and keep its state.

imapclient is blocking, so each folder sync runs in a thread of its own,
while the database pool and the Kafka producer live on the ingest event
loop. :class:`LoopBackend` is the bridge: each call runs a coroutine on
that loop and blocks the sync thread until it is done. The sync code uses
only the :class:`SyncBackend` protocol, so a test can wrap it to simulate a
crash at any step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from services.ingest.imap.state import Cursor, FailureOutcome, SyncState
from services.ingest.intake import ImapOrigin, MailIntake

log = logging.getLogger(__name__)

T = TypeVar("T")
# A bound on one call into the loop; a call that hits it counts as a storage
# failure and the sync retries from its cursor.
CALL_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class FetchedMail:
    uid: int
    raw: bytes
    internal_date: datetime | None


class SyncBackend(Protocol):
    """The state and the intake of one folder sync, called from its thread."""

    def load_cursor(self, folder: str) -> Cursor | None: ...

    def advance_cursor(self, folder: str, uidvalidity: int, last_uid: int) -> None: ...

    def reset_cursor(self, folder: str, uidvalidity: int, last_uid: int) -> None: ...

    def accept(self, folder: str, uidvalidity: int, mails: Sequence[FetchedMail]) -> None: ...

    def record_failure(self, folder: str, uidvalidity: int, uid: int, error: str, *,
                       final: bool = False) -> FailureOutcome: ...

    def due_failures(self, folder: str, uidvalidity: int) -> tuple[list[int], float | None]: ...

    def forget_failure(self, folder: str, uidvalidity: int, uid: int) -> None: ...

    def report(self, folder: str, state: str, *, error_class: str | None = None,
               error: str | None = None, next_attempt_in: float | None = None,
               synced: bool = False) -> None: ...


class SyncSensor(Protocol):
    def on_accepted(self, source: str, seconds: float) -> None: ...


class LoopBackend:
    """A :class:`SyncBackend` for one inbox that runs its work on the ingest loop."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, state: SyncState, intake: MailIntake,
                 inbox_id: str, cursor_name: str = "live", source: str = "imap",
                 max_attempts: int = 3, retry_base_seconds: float = 60.0,
                 sensor: SyncSensor | None = None) -> None:
        self._loop = loop
        self._sensor = sensor
        self._state = state
        self._intake = intake
        self._inbox_id = inbox_id
        self._cursor_name = cursor_name
        self._source = source
        self._max_attempts = max_attempts
        self._retry_base_seconds = retry_base_seconds

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(CALL_TIMEOUT_SECONDS)

    def load_cursor(self, folder: str) -> Cursor | None:
        return self._call(self._state.load_cursor(self._inbox_id, folder, self._cursor_name))

    def advance_cursor(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        self._call(self._state.advance_cursor(self._inbox_id, folder, self._cursor_name,
                                              uidvalidity, last_uid))

    def reset_cursor(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        self._call(self._state.reset_cursor(self._inbox_id, folder, self._cursor_name,
                                            uidvalidity, last_uid))

    def accept(self, folder: str, uidvalidity: int, mails: Sequence[FetchedMail]) -> None:
        """Store and publish ``mails``; return once Kafka acknowledged all of them."""
        started = time.perf_counter()
        self._call(self._accept_all(folder, uidvalidity, mails))
        if self._sensor is not None:
            seconds = time.perf_counter() - started
            for _mail in mails:
                self._sensor.on_accepted(self._source, seconds)

    async def _accept_all(self, folder: str, uidvalidity: int,
                          mails: Sequence[FetchedMail]) -> None:
        await self._intake.accept_imap(self._inbox_id, self._source, [
            (mail.raw, ImapOrigin(folder, uidvalidity, mail.uid, mail.internal_date))
            for mail in mails])

    def record_failure(self, folder: str, uidvalidity: int, uid: int, error: str, *,
                       final: bool = False) -> FailureOutcome:
        return self._call(self._state.record_failure(
            self._inbox_id, folder, uidvalidity, uid, error, max_attempts=self._max_attempts,
            retry_base_seconds=self._retry_base_seconds, final=final))

    def due_failures(self, folder: str, uidvalidity: int) -> tuple[list[int], float | None]:
        return self._call(self._state.due_failures(self._inbox_id, folder, uidvalidity))

    def forget_failure(self, folder: str, uidvalidity: int, uid: int) -> None:
        self._call(self._state.forget_failure(self._inbox_id, folder, uidvalidity, uid))

    def report(self, folder: str, state: str, *, error_class: str | None = None,
               error: str | None = None, next_attempt_in: float | None = None,
               synced: bool = False) -> None:
        if self._cursor_name != "live":
            return
        self._call(self._state.report(self._inbox_id, folder, state, error_class=error_class,
                                      error=error, next_attempt_in=next_attempt_in,
                                      synced=synced))
