"""The sync of one IMAP folder of one inbox, run in a thread of its own.

The supervisor starts one :class:`FolderSync` thread per synced folder; the
history import calls :meth:`FolderSync.catch_up_once` for a one-off walk.
One session of the loop:

1. connect and log in (TLS checked, every socket operation bounded);
2. SELECT the folder (EXAMINE when the mailbox is to be left as it was) and
   compare its UIDVALIDITY with the cursor. On the first sync, or when it
   changed, start again from the inbox's sync start. The router drops mail
   it already has, so a re-sync creates no duplicates;
3. catch up: walk the UIDs after the cursor in windows, fetch bodies in
   batches bounded by count and bytes, hand each batch to the backend, and
   advance the cursor only once Kafka has acknowledged the batch;
4. fetch again the failed mails whose retry is due;
5. wait in IDLE for new mail (re-issued at least every 29 minutes), or
   sleep for the poll interval where the server has no IDLE; then go to 2.

Any failure ends the session; the loop records it on the inbox's health,
waits with backoff and reconnects, and the catch-up of the next session
finds whatever arrived meanwhile. A mail that cannot be fetched is recorded
as failed and skipped, so the rest flow; it is fetched again a bounded
number of times and then quarantined.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient import exceptions as imap_errors

from services.ingest.imap import plan
from services.ingest.imap.backend import FetchedMail, SyncBackend
from services.ingest.imap.connection import (ConnectOptions, ImapAccount, ImapSyncError, classify,
                                             close_quietly, connect, interrupt)
from services.ingest.intake import IntakeUnavailable

log = logging.getLogger(__name__)

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# RFC 2177: clients should re-issue IDLE at least every 29 minutes.
MAX_IDLE_SECONDS = 29 * 60
# Errors after which the connection's state is unknown and it must be dropped.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, imap_errors.IMAPClientAbortError, EOFError)
# Errors of one FETCH whose cause may be one bad message.
FETCH_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS, imap_errors.IMAPClientError, imap_errors.ProtocolError, ValueError,
    IndexError, KeyError, TypeError)


@dataclass(frozen=True)
class SyncOptions:
    """Bounds and intervals of the sync; the defaults are production values."""

    connect: ConnectOptions = field(default_factory=ConnectOptions)
    search_window: int = 1000
    fetch_batch: int = 100
    fetch_batch_bytes: int = 20 * 1024 * 1024
    max_message_bytes: int = 50 * 1024 * 1024
    idle_reissue_seconds: float = 600.0
    poll_interval_seconds: float = 60.0
    max_attempts: int = 3
    retry_base_seconds: float = 60.0
    reconnect_first_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    auth_retry_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.idle_reissue_seconds <= MAX_IDLE_SECONDS:
            raise ValueError(f"invalid idle_reissue_seconds {self.idle_reissue_seconds!r}: "
                             f"it must be > 0 and at most {MAX_IDLE_SECONDS} (29 minutes)")
        for name in ("search_window", "fetch_batch", "fetch_batch_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"invalid {name} {getattr(self, name)!r}: it must be >= 1")


@dataclass
class Mailbox:
    """The state of the selected folder in this session."""

    uidvalidity: int
    uidnext: int
    exists: int
    last_uid: int
    # Until the cursor passes this UID, mails are fetched one at a time,
    # because a batch up to here failed and may hold a bad message.
    single_until: int = 0


Progress = Callable[[int, int], None]


class FolderSync:
    """Keeps one folder of one inbox in Kafka: catch-up, IDLE or poll, retries."""

    def __init__(self, account: ImapAccount, folder: str, backend: SyncBackend,
                 options: SyncOptions, *, on_error: Callable[[str], None] | None = None,
                 on_event: Callable[[str], None] | None = None,
                 on_state: Callable[[str], None] | None = None) -> None:
        self.account = account
        self.folder = folder
        self._backend = backend
        self._options = options
        self._on_error = on_error or (lambda _error_class: None)
        self._on_event = on_event or (lambda _event: None)
        self._on_state = on_state or (lambda _state: None)
        self._stopping = threading.Event()
        self._client_lock = threading.Lock()
        self._client: IMAPClient | None = None
        self._failures = 0
        # (UIDVALIDITY, UID): survives a reconnect, so that a batch that broke
        # the connection is fetched one mail at a time in the next session.
        self._single_until = (0, 0)
        self.state = "connecting"
        self._label = f"inbox {account.inbox_id} folder {folder!r}"

    # --- lifecycle -------------------------------------------------------

    def stop(self) -> None:
        """Ask the sync to end; a blocked IMAP call is interrupted at once."""
        self._stopping.set()
        with self._client_lock:
            if self._client is not None:
                interrupt(self._client)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Sync until :meth:`stop`: sessions, and backoff between failed ones."""
        log.info("%s: sync started (%s, security %s)", self._label, self.account.address,
                 self.account.security)
        while not self._stopping.is_set():
            error = self._run_session()
            if self._stopping.is_set() or error is None:
                break
            self._failures += 1
            delay = plan.reconnect_delay(
                error.error_class, self._failures,
                first_seconds=self._options.reconnect_first_seconds,
                max_seconds=self._options.reconnect_max_seconds,
                slow_first_seconds=self._options.auth_retry_seconds)
            self._record_error(error, delay)
            self._stopping.wait(delay)
        self._set_state("stopped")
        try:
            self._backend.report(self.folder, "stopped")
        except Exception as exc:  # noqa: BLE001 - health is best effort
            log.warning("%s: recording the stop on the inbox failed: %r", self._label, exc)
        log.info("%s: sync stopped", self._label)

    def _run_session(self) -> ImapSyncError | None:
        """Run one session; return its failure, or None when it ended because of stop()."""
        try:
            self._session()
        except IntakeUnavailable as exc:
            return ImapSyncError("storage", f"{self._label}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the loop boundary: record, back off, retry
            if self._stopping.is_set():
                return None
            error = classify(exc, self.account)
            if error.error_class == "protocol" and not isinstance(exc, (
                    imap_errors.IMAPClientError, ImapSyncError)):
                log.exception("%s: unexpected error in the sync", self._label)
            return error
        return None

    def _record_error(self, error: ImapSyncError, delay: float) -> None:
        state = "auth_failed" if error.error_class == "auth" else "backoff"
        self._set_state(state)
        self._on_error(error.error_class)
        log.warning("%s: %s (failure %d in a row, retrying in %.0f s)", self._label, error,
                    self._failures, delay)
        try:
            self._backend.report(self.folder, state, error_class=error.error_class,
                                 error=str(error), next_attempt_in=delay)
        except Exception as exc:  # noqa: BLE001 - health is best effort; the retry goes on
            log.warning("%s: recording the error on the inbox failed: %r", self._label, exc)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._on_state(state)

    # --- one session -----------------------------------------------------

    def _session(self) -> None:
        self._set_state("connecting")
        client = connect(self.account, self._options.connect)
        with self._client_lock:
            self._client = client
        if self._stopping.is_set():
            interrupt(client)
        try:
            while not self._stopping.is_set():
                mailbox = self._open_mailbox(client)
                self._sync(client, mailbox)
                self._wait_for_change(client, mailbox)
        finally:
            with self._client_lock:
                self._client = None
            self._close(client)

    def _sync(self, client: IMAPClient, mailbox: Mailbox) -> None:
        self._set_state("syncing")
        self._catch_up(client, mailbox)
        self._retry_failures(client, mailbox)
        self._failures = 0
        self._backend.report(self.folder, "idle", synced=True)
        self._set_state("idle")

    def catch_up_once(self, progress: Progress | None = None) -> Mailbox:
        """Connect, fetch everything after the cursor up to now, and disconnect.

        The history import uses this; ``progress(done, total)`` is called
        after each batch.
        """
        client = connect(self.account, self._options.connect)
        with self._client_lock:
            self._client = client
        try:
            mailbox = self._open_mailbox(client)
            self._catch_up(client, mailbox, progress)
            self._retry_failures(client, mailbox)
            return mailbox
        finally:
            with self._client_lock:
                self._client = None
            self._close(client)

    def _close(self, client: IMAPClient) -> None:
        if self._stopping.is_set():
            close_quietly(client)
            return
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the connection is being discarded anyway
            close_quietly(client)

    # --- SELECT and the cursor -------------------------------------------

    def _open_mailbox(self, client: IMAPClient) -> Mailbox:
        try:
            info = client.select_folder(self.folder, readonly=self.account.read_only)
        except imap_errors.IMAPClientError as exc:
            if isinstance(exc, imap_errors.IMAPClientAbortError):
                raise
            raise ImapSyncError("folder", f"{self._label}: SELECT failed: {exc}; check that "
                                "the folder exists") from None
        uidvalidity = int(info[b"UIDVALIDITY"])
        exists = int(info.get(b"EXISTS", 0))
        uidnext = int(info.get(b"UIDNEXT") or self._uidnext_from_last(client, exists))
        cursor = self._backend.load_cursor(self.folder)

        if cursor is not None and cursor.uidvalidity == uidvalidity:
            single_until = self._single_until[1] if self._single_until[0] == uidvalidity else 0
            return Mailbox(uidvalidity, uidnext, exists, cursor.last_uid, single_until)

        start_uid = self._start_uid(client, exists, uidnext)
        if cursor is None:
            log.info("%s: first sync, UIDVALIDITY %d: importing from UID %d (INTERNALDATE from "
                     "%s on)", self._label, uidvalidity, start_uid,
                     self.account.start_at or "the beginning")
        else:
            log.warning("%s: UIDVALIDITY changed from %d to %d: re-syncing from UID %d; mail "
                        "that was imported before is dropped as a duplicate by the router",
                        self._label, cursor.uidvalidity, uidvalidity, start_uid)
            self._on_event("uidvalidity_changed")
        self._backend.reset_cursor(self.folder, uidvalidity, start_uid - 1)
        return Mailbox(uidvalidity, uidnext, exists, start_uid - 1)

    def _uidnext_from_last(self, client: IMAPClient, exists: int) -> int:
        # RFC 3501 requires UIDNEXT in the SELECT response, but not every server sends it.
        if exists == 0:
            return 1
        return int(self._at_sequence(client, exists, b"UID") or 0) + 1

    def _start_uid(self, client: IMAPClient, exists: int, uidnext: int) -> int:
        """Return the first UID the first sync imports: the first mail at or after the start."""
        start_at = self.account.start_at
        if start_at is None or exists == 0:
            return 1
        # INTERNALDATE has whole seconds: a mail of the same second counts as after.
        start_at = start_at.replace(microsecond=0)
        position = plan.first_at_or_after(
            exists, lambda seq: self._at_sequence(client, seq, b"INTERNALDATE"), start_at)
        if position is None:
            return uidnext
        return int(self._at_sequence(client, position, b"UID") or uidnext)

    def _at_sequence(self, client: IMAPClient, seq: int, item: bytes) -> Any:
        """Return one FETCH item of the message at sequence number ``seq``."""
        client.use_uid = False
        try:
            response = client.fetch([seq], [b"UID", b"INTERNALDATE"])
        finally:
            client.use_uid = True
        data = response.get(seq)
        value = data.get(item) if data else None
        if isinstance(value, datetime) and value.tzinfo is None:
            return None
        return value

    # --- catch-up --------------------------------------------------------

    def _catch_up(self, client: IMAPClient, mailbox: Mailbox,
                  progress: Progress | None = None) -> None:
        total = self._remaining(client, mailbox) if progress else 0
        done = 0
        while not self._stopping.is_set():
            window = plan.uid_window(mailbox.last_uid, mailbox.uidnext,
                                     self._options.search_window)
            if window is None:
                return
            low, high = window
            uids = sorted(uid for uid in client.search(["UID", f"{low}:{high}"])
                          if low <= uid <= high)
            if not uids:
                high = self._skip_gap(client, mailbox, high)
            else:
                done += self._import_window(client, mailbox, uids, progress, done, total)
            if self._stopping.is_set():
                return
            self._advance(mailbox, high)

    def _remaining(self, client: IMAPClient, mailbox: Mailbox) -> int:
        position = plan.first_at_or_after(
            mailbox.exists, lambda seq: self._at_sequence(client, seq, b"UID"),
            mailbox.last_uid + 1)
        return 0 if position is None else mailbox.exists - position + 1

    def _skip_gap(self, client: IMAPClient, mailbox: Mailbox, high: int) -> int:
        """Return the UID up to which nothing exists, found by bisection, not by scanning."""
        position = plan.first_at_or_after(
            mailbox.exists, lambda seq: self._at_sequence(client, seq, b"UID"), high + 1)
        if position is None:
            return mailbox.uidnext - 1
        next_uid = int(self._at_sequence(client, position, b"UID") or high + 1)
        return max(high, next_uid - 1)

    def _import_window(self, client: IMAPClient, mailbox: Mailbox, uids: list[int],
                       progress: Progress | None, done: int, total: int) -> int:
        sizes = {uid: int(data.get(b"RFC822.SIZE", 0))
                 for uid, data in client.fetch(uids, [b"RFC822.SIZE"]).items()}
        present = [uid for uid in uids if uid in sizes]
        too_large = [uid for uid in present if sizes[uid] > self._options.max_message_bytes]
        for uid in too_large:
            self._fail(mailbox, uid, f"message is {sizes[uid]} bytes, over the limit of "
                       f"{self._options.max_message_bytes} bytes", final=True)

        wanted = [(uid, sizes[uid]) for uid in present if uid not in too_large]
        batches = plan.plan_batches(wanted, max_count=self._options.fetch_batch,
                                    max_bytes=self._options.fetch_batch_bytes)
        imported = len(uids) - len(present) + len(too_large)
        for batch in batches:
            if self._stopping.is_set():
                break
            if batch[0] <= mailbox.single_until:
                for uid in batch:
                    self._import_batch(client, mailbox, [uid])
            else:
                self._import_batch(client, mailbox, batch)
            imported += len(batch)
            if progress:
                progress(done + imported, total)
        return imported

    def _import_batch(self, client: IMAPClient, mailbox: Mailbox, uids: list[int]) -> None:
        """Fetch ``uids`` and hand them to the backend.

        A batch whose FETCH fails is split into single mails.
        """
        try:
            fetched = client.fetch(uids, [b"BODY.PEEK[]", b"INTERNALDATE"])
        except FETCH_ERRORS as exc:
            self._on_fetch_failure(client, mailbox, uids, exc)
            return

        mails: list[FetchedMail] = []
        for uid in uids:
            data = fetched.get(uid)
            raw = data.get(b"BODY[]") if data else None
            if isinstance(raw, bytes) and raw:
                mails.append(FetchedMail(uid, raw, _aware(data.get(b"INTERNALDATE"))))
            elif self._still_exists(client, uid):
                self._fail(mailbox, uid, "the server returned no body for this message")
        if mails:
            self._backend.accept(self.folder, mailbox.uidvalidity, mails)
        self._advance(mailbox, uids[-1])
        self._after_import(client, [mail.uid for mail in mails])

    def _on_fetch_failure(self, client: IMAPClient, mailbox: Mailbox, uids: list[int],
                          exc: BaseException) -> None:
        broken = isinstance(exc, CONNECTION_ERRORS)
        if len(uids) == 1:
            self._fail(mailbox, uids[0], f"FETCH failed: {classify(exc, self.account)}")
            self._advance(mailbox, uids[0])
            if broken:
                raise exc
            return

        log.info("%s: FETCH of UIDs %d..%d failed (%r); fetching them one at a time",
                 self._label, uids[0], uids[-1], exc)
        mailbox.single_until = max(mailbox.single_until, uids[-1])
        self._single_until = (mailbox.uidvalidity, mailbox.single_until)
        if broken:
            # The next session fetches these one at a time from the cursor on.
            raise exc
        for uid in uids:
            self._import_batch(client, mailbox, [uid])

    def _still_exists(self, client: IMAPClient, uid: int) -> bool:
        # A mail expunged between SEARCH and FETCH has no body and is no failure.
        return bool(client.search(["UID", str(uid)]))

    def _fail(self, mailbox: Mailbox, uid: int, error: str, *, final: bool = False) -> None:
        # NOTE: only the error is kept; the row's raw_sha256 stays empty, because
        # no partial FETCH of a failing mail is tried yet.
        outcome = self._backend.record_failure(self.folder, mailbox.uidvalidity, uid, error,
                                               final=final)
        if outcome.status == "quarantined":
            self._on_event("quarantined")
            log.error("%s UIDVALIDITY %d UID %d: quarantined after %d attempt(s): %s",
                      self._label, mailbox.uidvalidity, uid, outcome.attempts, error)
        else:
            log.warning("%s UIDVALIDITY %d UID %d: attempt %d failed, retried later: %s",
                        self._label, mailbox.uidvalidity, uid, outcome.attempts, error)

    def _advance(self, mailbox: Mailbox, last_uid: int) -> None:
        if last_uid > mailbox.last_uid:
            self._backend.advance_cursor(self.folder, mailbox.uidvalidity, last_uid)
            mailbox.last_uid = last_uid

    def _after_import(self, client: IMAPClient, uids: Sequence[int]) -> None:
        """Mark or move imported mail when the inbox's settings request it; by default it stays."""
        if not uids or self.account.after_import == "leave":
            return
        try:
            if self.account.after_import == "mark_read":
                client.add_flags(uids, [SEEN], silent=True)
            elif client.has_capability("MOVE"):
                client.move(uids, self.account.move_to)
            else:
                client.copy(uids, self.account.move_to)
                client.add_flags(uids, [DELETED], silent=True)
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge(uids)
        except imap_errors.IMAPClientError as exc:
            if isinstance(exc, imap_errors.IMAPClientAbortError):
                raise
            # The mail is in Kafka already; only the tidying failed.
            log.warning("%s: %s of UIDs %s after import failed: %s", self._label,
                        self.account.after_import, _uid_span(uids), exc)

    # --- retries of failed mails -----------------------------------------

    def _retry_failures(self, client: IMAPClient, mailbox: Mailbox) -> None:
        due, _wait = self._backend.due_failures(self.folder, mailbox.uidvalidity)
        for uid in due:
            if self._stopping.is_set():
                return
            self._retry_one(client, mailbox, uid)

    def _retry_one(self, client: IMAPClient, mailbox: Mailbox, uid: int) -> None:
        try:
            fetched = client.fetch([uid], [b"BODY.PEEK[]", b"INTERNALDATE"])
        except FETCH_ERRORS as exc:
            self._fail(mailbox, uid, f"FETCH failed: {classify(exc, self.account)}")
            if isinstance(exc, CONNECTION_ERRORS):
                raise
            return

        data = fetched.get(uid)
        raw = data.get(b"BODY[]") if data else None
        if isinstance(raw, bytes) and raw:
            self._backend.accept(self.folder, mailbox.uidvalidity,
                                 [FetchedMail(uid, raw, _aware(data.get(b"INTERNALDATE")))])
            self._backend.forget_failure(self.folder, mailbox.uidvalidity, uid)
            log.info("%s UID %d: fetched on a retry and imported", self._label, uid)
            self._after_import(client, [uid])
        elif self._still_exists(client, uid):
            self._fail(mailbox, uid, "the server returned no body for this message")
        else:
            self._backend.forget_failure(self.folder, mailbox.uidvalidity, uid)

    # --- waiting for new mail --------------------------------------------

    def _wait_for_change(self, client: IMAPClient, mailbox: Mailbox) -> None:
        """Return when the folder may have new mail, or when it is time to check anyway."""
        _due, retry_in = self._backend.due_failures(self.folder, mailbox.uidvalidity)
        if not client.has_capability("IDLE"):
            self._stopping.wait(min(self._options.poll_interval_seconds, retry_in or 1e9))
            return
        self._idle(client, min(self._options.idle_reissue_seconds, retry_in or 1e9))

    def _idle(self, client: IMAPClient, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        client.idle()
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            started = time.monotonic()
            responses = client.idle_check(timeout=remaining)
            if self._stopping.is_set():
                return
            if any(plan.is_bye(response) for response in responses):
                raise ImapSyncError("connect", f"{self._label}: the server closed the "
                                    "connection during IDLE")
            if any(plan.is_new_mail(response) for response in responses):
                break
            if not responses and time.monotonic() - started < remaining - 0.5:
                # Woken without a response: the socket reached EOF or a line
                # is incomplete. DONE below finds out which.
                break
        # A dead connection fails here within the read timeout, not never.
        client.idle_done()


def _aware(value: object) -> datetime | None:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return None


def _uid_span(uids: Sequence[int]) -> str:
    return f"{uids[0]}..{uids[-1]}" if len(uids) > 1 else str(uids[0])
