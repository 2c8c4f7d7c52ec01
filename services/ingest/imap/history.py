"""History import of an inbox's own IMAP folders: ``messagehub import --imap``.

It walks each folder from its first UID on, regardless of the inbox's sync
start, through the same catch-up as the live sync but on a cursor of its own
(``history``). Each batch goes to Kafka before the cursor moves, so an
interrupted import resumes where it stopped, and the router drops mail that
the live sync or an earlier run already brought in: running it again
imports nothing twice. The mailbox is left as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from messagehub import db
from services.ingest.imap.backend import LoopBackend
from services.ingest.imap.connection import ConnectOptions, ImapAccount
from services.ingest.imap.folder_sync import FolderSync, SyncOptions
from services.ingest.imap.state import SyncState, account_from_row
from services.ingest.intake import MailIntake
from services.ingest.publisher import MailPublisher
from services.ingest.store import PostgresRawMailStore

log = logging.getLogger(__name__)


class HistoryImportError(RuntimeError):
    """The import cannot start: the inbox has no IMAP settings, or they cannot be used."""


@dataclass
class FolderResult:
    folder: str
    imported: int
    last_uid: int


class ProgressLine:
    """Writes ``folder: done/total (pct), rate mails/s, ETA`` on one terminal line."""

    def __init__(self, stream: TextIO, folder: str, *, every_seconds: float = 0.5) -> None:
        self._stream = stream
        self._folder = folder
        self._every = every_seconds
        self._started = time.monotonic()
        self._shown_at = 0.0
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._shown_at < self._every and done < total:
            return
        self._shown_at = now
        self._stream.write("\r" + format_progress(self._folder, done, total,
                                                  now - self._started))
        self._stream.flush()

    def finish(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


def format_progress(folder: str, done: int, total: int, elapsed_seconds: float) -> str:
    """Return the progress text: counts, percentage, rate and the estimated time left."""
    rate = done / elapsed_seconds if elapsed_seconds > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    left = max(total - done, 0)
    eta = _clock(left / rate) if rate > 0 else "--:--"
    return (f"{folder}: {done}/{total} mails ({percent:.0f}%), {rate:.0f} mails/s, "
            f"ETA {eta}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextmanager
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Run an event loop in a background thread for the duration of the block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="history-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def load_account(database_url: str, inbox_id: str) -> ImapAccount:
    """Return the inbox's IMAP account for a full walk, whether or not its live sync is on."""
    with db.connect(database_url) as conn:
        row = conn.execute(
            "SELECT inbox_id::text AS inbox_id, host, port, username, password_encrypted, "
            "security, sync_folders, sync_start_at, sync_after_import, sync_move_to, "
            "settings_version FROM inbox_imap WHERE inbox_id::text = %s", (inbox_id,)).fetchone()
    if row is None or not row["host"] or not row["port"] or not row["username"]:
        raise HistoryImportError(f"inbox {inbox_id} has no IMAP settings: set them with "
                                 "`messagehub inbox imap` first")
    account = account_from_row(row)
    # History is everything, and it never touches the mailbox.
    return dataclasses.replace(account, start_at=None, after_import="leave", move_to=None)


def import_history(*, database_url: str, kafka_bootstrap: str, inbox_id: str,
                   folders: list[str] | None = None, ca_file: str = "",
                   stream: TextIO = sys.stderr,
                   options: SyncOptions | None = None) -> list[FolderResult]:
    """Import every mail of the inbox's folders once; return what each folder added."""
    account = load_account(database_url, inbox_id)
    options = options or SyncOptions(connect=ConnectOptions(ca_file=ca_file))
    results = []
    with running_loop() as loop:
        pool = asyncio.run_coroutine_threadsafe(_open_pool(database_url), loop).result(60)
        publisher = MailPublisher(kafka_bootstrap)
        try:
            intake = MailIntake(store=PostgresRawMailStore(pool), publisher=publisher)
            backend = LoopBackend(loop=loop, state=SyncState(pool, replica="history-import"),
                                  intake=intake, inbox_id=inbox_id, cursor_name="history",
                                  source="import", max_attempts=options.max_attempts,
                                  retry_base_seconds=options.retry_base_seconds)
            for folder in folders or list(account.folders):
                results.append(_import_folder(account, folder, backend, options, stream))
        finally:
            publisher.close()
            asyncio.run_coroutine_threadsafe(pool.close(), loop).result(30)
    return results


async def _open_pool(database_url: str) -> AsyncConnectionPool:
    # Unlike db.open_pool this applies no schema: the services did at their
    # start, and a schema change would wait for every open transaction.
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": False})
    await pool.open(wait=True, timeout=30)
    return pool


def _import_folder(account: ImapAccount, folder: str, backend: LoopBackend,
                   options: SyncOptions, stream: TextIO) -> FolderResult:
    progress = ProgressLine(stream, folder)
    sync = FolderSync(account, folder, backend, options)
    try:
        mailbox = sync.catch_up_once(progress)
    finally:
        progress.finish()
    log.info("inbox %s folder %r: history import done up to UID %d", account.inbox_id, folder,
             mailbox.last_uid)
    return FolderResult(folder, progress.done, mailbox.last_uid)

