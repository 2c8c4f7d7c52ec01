"""The forwarding receiver: SMTP for the addresses messagehub generates.

A business forwards its support mail to an inbox's forwarding address; this
aiosmtpd handler accepts it. Each RCPT TO is answered on its own:

- a known forwarding address (any case, with or without a ``+tag``): 250;
- any other address in messagehub's inbound domain: 550, no such inbox;
- an address in another domain: 250 for now, because a relay that hands
  mail on keeps the original recipient there. After DATA such a mail is
  routed by the headers that forwarders add (Delivered-To, X-Forwarded-To,
  X-Original-To) and by To and Cc; when none of them names a forwarding
  address the mail is rejected with 550.

After DATA the raw bytes are stored and one ``mail.received`` per inbox is
acknowledged by Kafka before the sender gets 250, so one mail for two
inboxes lands in both. When the store or Kafka is unavailable the answer is
451, so the sending server keeps the mail and retries; mail over the size
limit gets 552 from aiosmtpd, which advertises the limit with SIZE.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from services.ingest.intake import IntakeUnavailable, MailIntake
from services.ingest.routing import domain_of, header_addresses, normalize_address

log = logging.getLogger(__name__)


class InboxDirectory(Protocol):
    async def inboxes_for_addresses(self, addresses: list[str]) -> dict[str, str]:
        """Return ``{address: inbox id}`` for the known forwarding addresses."""
        ...


class IngestSensor(Protocol):
    def on_accepted(self, source: str, seconds: float) -> None: ...

    def on_rejected(self, source: str, reason: str) -> None: ...


class ForwardingHandler:
    """aiosmtpd handler hooks of the forwarding receiver."""

    def __init__(self, *, directory: InboxDirectory, intake: MailIntake, sensor: IngestSensor,
                 inbound_domain: str) -> None:
        self._directory = directory
        self._intake = intake
        self._sensor = sensor
        self._inbound_domain = inbound_domain.lower()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        normalized = normalize_address(address)
        try:
            found = await self._directory.inboxes_for_addresses([normalized])
        except Exception as exc:  # noqa: BLE001 - the sender retries on 451
            log.warning("peer %s RCPT %s: inbox lookup failed, answered 451: %r",
                        session.peer, address, exc)
            return "451 4.3.0 Temporary failure looking up the recipient, try again later"

        inbox_id = found.get(normalized)
        if inbox_id is None and domain_of(normalized) == self._inbound_domain:
            self._sensor.on_rejected("smtp", "unknown_recipient")
            log.info("peer %s RCPT %s: no inbox has this forwarding address", session.peer, address)
            return f"550 5.1.1 <{address}>: no messagehub inbox has this forwarding address"

        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        routes = _routes_of(envelope)
        if inbox_id is None:
            routes.by_headers.append(address)
            return "250 2.1.5 Recipient OK, routed by the mail's headers"
        routes.by_envelope.setdefault(inbox_id, []).append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        raw = envelope.original_content or b""
        routes = _routes_of(envelope)

        try:
            inboxes = await self._resolve(routes, raw)
        except Exception as exc:  # noqa: BLE001 - the sender retries on 451
            log.warning("peer %s MAIL FROM %s: inbox lookup failed, answered 451: %r",
                        session.peer, envelope.mail_from, exc)
            return "451 4.3.0 Temporary failure looking up the recipients, try again later"
        if not inboxes:
            self._sensor.on_rejected("smtp", "unknown_recipient")
            log.info("peer %s MAIL FROM %s: no forwarding address in the envelope or in the "
                     "Delivered-To, X-Forwarded-To, X-Original-To, To or Cc headers, answered 550",
                     session.peer, envelope.mail_from)
            return ("550 5.1.1 No messagehub forwarding address in the recipients or in the "
                    "Delivered-To, X-Forwarded-To, X-Original-To, To and Cc headers")

        try:
            accepted = await self._intake.accept(
                raw, list(inboxes), source="smtp",
                # aiosmtpd reports the null reverse-path <> as an empty string.
                envelope_sender=envelope.mail_from, envelope_recipients=inboxes)
        except IntakeUnavailable as exc:
            self._sensor.on_rejected("smtp", "temporary_failure")
            log.warning("peer %s MAIL FROM %s: %s, answered 451",
                        session.peer, envelope.mail_from, exc)
            return "451 4.3.0 Temporary failure storing the mail, try again later"

        self._sensor.on_accepted("smtp", time.perf_counter() - started)
        log.info("Message-ID %s sha256 %s: accepted over SMTP for inbox(es) %s from %s",
                 accepted.summary.message_id, accepted.sha256[:16], ",".join(inboxes),
                 envelope.mail_from)
        return f"250 2.0.0 Ok: stored as {accepted.sha256[:16]}"

    async def _resolve(self, routes: _Routes, raw: bytes) -> dict[str, list[str]]:
        """Return ``{inbox id: recipients}``, adding header routes for unmatched recipients."""
        inboxes = {inbox_id: list(addresses) for inbox_id, addresses in routes.by_envelope.items()}
        if not routes.by_headers:
            return inboxes

        addresses = header_addresses(raw)
        found = await self._directory.inboxes_for_addresses(addresses)
        for address in addresses:
            inbox_id = found.get(address)
            if inbox_id is not None and inbox_id not in inboxes:
                inboxes[inbox_id] = []
        return inboxes


class _Routes:
    """The recipients of one transaction: mapped at RCPT time, or left to the headers."""

    def __init__(self) -> None:
        self.by_envelope: dict[str, list[str]] = {}
        self.by_headers: list[str] = []


def _routes_of(envelope: Envelope) -> _Routes:
    routes = getattr(envelope, "messagehub_routes", None)
    if routes is None:
        routes = _Routes()
        envelope.messagehub_routes = routes  # type: ignore[attr-defined]
    return routes
