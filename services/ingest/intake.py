"""The one way a mail enters messagehub: store the bytes, then publish.

The forwarding receiver, the HTTP upload, the IMAP sync and the IMAP history
import all call :meth:`MailIntake.accept`. It stores the raw MIME in the raw
mail store (content-addressed, so storing twice is harmless), publishes one
``mail.received`` per inbox and returns only once Kafka has acknowledged
every one of them. The caller may then reply 250, return 202 or advance its
IMAP cursor. Any failure raises :class:`IntakeUnavailable`, after which the
caller must keep the mail (4xx, 503, cursor left where it was) and retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from messagehub import ids
from services.ingest.store import RawMailStore
from services.ingest.summary import HeaderSummary, summarize


class IntakeUnavailable(Exception):
    """Storing the mail or publishing its event failed; retrying later can succeed."""

    retriable = True


class Publisher(Protocol):
    async def publish(self, record: dict[str, Any]) -> None: ...

    async def publish_many(self, records: Sequence[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class ImapOrigin:
    """The IMAP coordinates of a mail, carried on its ``mail.received``."""

    folder: str
    uidvalidity: int
    uid: int
    internal_date: datetime | None


@dataclass(frozen=True)
class AcceptedMail:
    sha256: str
    summary: HeaderSummary
    event_ids: dict[str, str]


class MailIntake:
    """Stores raw mail and publishes ``mail.received``, acknowledged by Kafka."""

    def __init__(self, *, store: RawMailStore, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher

    async def accept(self, raw: bytes, inbox_ids: Sequence[str], *, source: str,
                     envelope_sender: str | None = None,
                     envelope_recipients: dict[str, list[str]] | None = None,
                     imap: ImapOrigin | None = None) -> AcceptedMail:
        """Store ``raw`` and publish it for each inbox; return once all are acknowledged.

        ``envelope_recipients`` maps an inbox id to the RCPT TO addresses that
        named it. Raises :class:`IntakeUnavailable` when the store or Kafka fails.
        """
        try:
            sha256 = await self._store.put(raw)
        except Exception as exc:  # noqa: BLE001 - any store failure means "keep the mail"
            raise IntakeUnavailable(f"storing the raw mail failed: {exc!r}") from exc

        summary = summarize(raw)
        records = [
            mail_received(inbox_id, sha256, len(raw), summary, source=source,
                          envelope_sender=envelope_sender,
                          envelope_recipients=(envelope_recipients or {}).get(inbox_id, []),
                          imap=imap)
            for inbox_id in inbox_ids]
        try:
            await self._publisher.publish_many(records)
        except Exception as exc:  # noqa: BLE001 - any publish failure means "keep the mail"
            raise IntakeUnavailable(f"publishing mail.received failed: {exc!r}") from exc
        return AcceptedMail(sha256, summary,
                            {record["inbox_id"]: record["event_id"] for record in records})


    async def accept_imap(self, inbox_id: str, source: str,
                          mails: Sequence[tuple[bytes, ImapOrigin]]) -> list[str]:
        """Store and publish a batch of one folder's mails; return their digests.

        One transaction stores the batch and every record is sent before the
        first acknowledgement is awaited, so a backfill is not bound by one
        round trip per mail.
        """
        raws = [raw for raw, _origin in mails]
        try:
            digests = await self._store.put_many(raws)
        except Exception as exc:  # noqa: BLE001 - any store failure means "keep the mail"
            raise IntakeUnavailable(f"storing {len(raws)} raw mails failed: {exc!r}") from exc

        records = [mail_received(inbox_id, sha256, len(raw), summarize(raw), source=source,
                                 imap=origin)
                   for sha256, (raw, origin) in zip(digests, mails)]
        try:
            await self._publisher.publish_many(records)
        except Exception as exc:  # noqa: BLE001 - any publish failure means "keep the mail"
            raise IntakeUnavailable(f"publishing mail.received failed: {exc!r}") from exc
        return digests


def mail_received(inbox_id: str, sha256: str, size: int, summary: HeaderSummary, *,
                  source: str, envelope_sender: str | None = None,
                  envelope_recipients: Sequence[str] = (),
                  imap: ImapOrigin | None = None) -> dict[str, Any]:
    """Return the ``MailReceived`` record of one stored mail for one inbox.

    The event id depends only on the inbox and the bytes, so a mail that
    arrives again (a retried forward, a re-synced IMAP folder, a replay) has
    the same id and consumers drop it.
    """
    return {
        "event_id": ids.derive_id("mail-received", inbox_id, sha256),
        "occurred_at": datetime.now(timezone.utc),
        "inbox_id": inbox_id,
        "schema_version": 1,
        "raw_sha256": sha256,
        "raw_size": size,
        "source": source,
        "envelope_sender": envelope_sender,
        "envelope_recipients": list(envelope_recipients),
        "message_id": summary.message_id,
        "subject": summary.subject,
        "from_address": summary.from_address,
        "imap_folder": imap.folder if imap else None,
        "imap_uidvalidity": imap.uidvalidity if imap else None,
        "imap_uid": imap.uid if imap else None,
        "imap_internal_date": imap.internal_date if imap else None,
    }


