"""The forwarding receiver: SMTP for the addresses messagehub generates.

A business forwards its support mail to an inbox's forwarding address; this
aiosmtpd handler accepts it. Each RCPT TO is answered on its own: 250 for a
known forwarding address, 550 for anything else. After DATA the raw bytes
are stored, one ``mail.received`` per accepted inbox is acknowledged by
Kafka, and only then does the sender get 250. When the store or Kafka is
unavailable the answer is 451, so the sending server keeps the mail and
retries; mail over the size limit gets 552 from aiosmtpd, which advertises
the limit with SIZE.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from messagehub import ids
from services.ingest.store import RawMailStore
from services.ingest.summary import summarize

log = logging.getLogger(__name__)


class InboxDirectory(Protocol):
    async def inbox_for_address(self, address: str) -> str | None:
        """Return the id of the inbox whose forwarding address is ``address``."""
        ...


class Publisher(Protocol):
    async def publish(self, record: dict[str, Any]) -> None: ...


class IngestSensor(Protocol):
    def on_accepted(self, source: str, seconds: float) -> None: ...

    def on_rejected(self, source: str, reason: str) -> None: ...


class ForwardingHandler:
    """aiosmtpd handler hooks of the forwarding receiver."""

    def __init__(self, *, directory: InboxDirectory, store: RawMailStore,
                 publisher: Publisher, sensor: IngestSensor) -> None:
        self._directory = directory
        self._store = store
        self._publisher = publisher
        self._sensor = sensor

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        try:
            inbox_id = await self._directory.inbox_for_address(address)
        except Exception as exc:  # noqa: BLE001 - the sender retries on 451
            log.warning("ingest: peer %s RCPT %s: inbox lookup failed, answered 451: %r",
                        session.peer, address, exc)
            return "451 4.3.0 Temporary failure looking up the recipient, try again later"

        if inbox_id is None:
            self._sensor.on_rejected("smtp", "unknown_recipient")
            log.info("ingest: peer %s RCPT %s: no inbox has this forwarding address",
                     session.peer, address)
            return "550 5.1.1 No messagehub inbox has this forwarding address"

        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        inboxes: dict[str, list[str]] = getattr(envelope, "inboxes", {})
        inboxes.setdefault(inbox_id, []).append(address)
        envelope.inboxes = inboxes  # type: ignore[attr-defined]
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        raw = envelope.original_content or b""
        inboxes: dict[str, list[str]] = getattr(envelope, "inboxes", {})

        try:
            sha256 = await self._store.put(raw)
            summary = summarize(raw)
            for inbox_id, recipients in inboxes.items():
                await self._publisher.publish(_mail_received(
                    inbox_id, sha256, raw, envelope.mail_from, recipients, summary))
        except Exception as exc:  # noqa: BLE001 - the sender keeps the mail and retries
            self._sensor.on_rejected("smtp", "temporary_failure")
            log.warning("ingest: peer %s MAIL FROM %s: storing or publishing failed, "
                        "answered 451: %r", session.peer, envelope.mail_from, exc)
            return "451 4.3.0 Temporary failure storing the mail, try again later"

        self._sensor.on_accepted("smtp", time.perf_counter() - started)
        log.info("ingest: Message-ID %s sha256 %s: accepted for %d inbox(es) from %s",
                 summary.message_id, sha256[:16], len(inboxes), envelope.mail_from)
        return f"250 2.0.0 Ok: stored as {sha256[:16]}"


def _mail_received(inbox_id: str, sha256: str, raw: bytes, mail_from: str | None,
                   recipients: list[str], summary: Any) -> dict[str, Any]:
    return {
        "event_id": ids.derive_id("mail-received", inbox_id, sha256),
        "occurred_at": datetime.now(timezone.utc),
        "inbox_id": inbox_id,
        "schema_version": 1,
        "raw_sha256": sha256,
        "raw_size": len(raw),
        "source": "smtp",
        # aiosmtpd reports the null reverse-path <> as an empty string.
        "envelope_sender": mail_from if mail_from is not None else None,
        "envelope_recipients": recipients,
        "message_id": summary.message_id,
        "subject": summary.subject,
        "from_address": summary.from_address,
        "imap_folder": None,
        "imap_uidvalidity": None,
        "imap_uid": None,
        "imap_internal_date": None,
    }
