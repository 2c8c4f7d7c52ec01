"""The load generator: mails offered to the forwarding receiver at a fixed rate.

:func:`offer` sends ``count`` mails of a :class:`~bench.mailgen.MailGenerator`
at ``rate`` mails per second over a pool of SMTP connections, open loop:
mail *i* is due at ``start + i / rate`` whatever happened to the mails
before it, as forwarding MTAs would deliver. When every connection is busy
the next mails start late, so a receiver that cannot keep up shows as an
achieved rate below the offered one.

For each mail it records the wall-clock time just before the SMTP DATA
command, where the latency the benchmark reports starts. It also records
when the receiver's reply to the end of data arrived: a 250 means the mail
is stored and ``mail.received`` is acknowledged by Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aiosmtplib

from bench.mailgen import GeneratedMail

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 60.0
# Mails more than this late against their schedule count as late.
LATE_SECONDS = 1.0


@dataclass(frozen=True)
class Sent:
    """One mail offered to the receiver, with wall-clock times in seconds."""

    index: int
    message_id: str
    inbox: int
    reply: bool
    size: int
    due_at: float
    data_at: float  # just before the DATA command
    answered_at: float  # the receiver's reply to the end of data
    error: str | None


@dataclass(frozen=True)
class OfferResult:
    rate: float
    sent: list[Sent]
    started_at: float
    finished_at: float

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.error is None]

    @property
    def achieved_rate(self) -> float:
        """Mails accepted per second between the first due time and the last answer."""
        elapsed = self.finished_at - self.started_at
        return len(self.accepted) / elapsed if elapsed > 0 else 0.0

    @property
    def late(self) -> int:
        return sum(1 for s in self.sent if s.data_at - s.due_at > LATE_SECONDS)


class _Schedule:
    """Hands out the mails in order with their due times."""

    def __init__(self, mails: Iterator[GeneratedMail], count: int, rate: float,
                 started_at: float) -> None:
        self._mails = mails
        self._count = count
        self._rate = rate
        self._started_at = started_at
        self._handed_out = 0

    def next(self) -> tuple[GeneratedMail, float] | None:
        if self._handed_out >= self._count:
            return None
        due_at = self._started_at + self._handed_out / self._rate
        self._handed_out += 1
        return next(self._mails), due_at


async def offer(mails: Iterator[GeneratedMail], *, forwarding_addresses: Sequence[str],
                host: str, port: int, rate: float, count: int,
                connections: int = 32) -> OfferResult:
    """Send ``count`` mails at ``rate`` per second; return what happened to each."""
    if rate <= 0 or count <= 0:
        raise ValueError(f"rate and count must be positive: rate={rate!r} count={count!r}")
    clients = await asyncio.gather(*(_connect(host, port)
                                     for _ in range(max(1, min(connections, count)))))
    started_at = time.time() + 0.05
    schedule = _Schedule(mails, count, rate, started_at)
    try:
        batches = await asyncio.gather(*(_work(client, schedule, forwarding_addresses, host, port)
                                         for client in clients))
    finally:
        await asyncio.gather(*(_quit(client) for client in clients))
    sent = sorted((s for batch in batches for s in batch), key=lambda s: s.index)
    finished_at = max((s.answered_at for s in sent), default=started_at)
    return OfferResult(rate=rate, sent=sent, started_at=started_at, finished_at=finished_at)


async def _connect(host: str, port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=SMTP_TIMEOUT_SECONDS,
                             start_tls=False, local_hostname="bench.localhost")
    await client.connect()
    await client.ehlo()
    return client


async def _work(client: aiosmtplib.SMTP, schedule: _Schedule, addresses: Sequence[str],
                host: str, port: int) -> list[Sent]:
    """Send mails from ``schedule`` over one connection until it runs out."""
    sent: list[Sent] = []
    while (item := schedule.next()) is not None:
        mail, due_at = item
        delay = due_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

        data_at, error = time.time(), None
        try:
            await client.mail(mail.sender)
            await client.rcpt(addresses[mail.inbox])
            data_at = time.time()
            await client.data(mail.raw)
        except aiosmtplib.SMTPException as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("bench: Message-ID %s: not accepted: %s", mail.message_id, error)
            client = await _reconnect(client, host, port)
        sent.append(Sent(index=mail.index, message_id=mail.message_id, inbox=mail.inbox,
                         reply=mail.reply, size=len(mail.raw), due_at=due_at, data_at=data_at,
                         answered_at=time.time(), error=error))
    return sent


async def _reconnect(client: aiosmtplib.SMTP, host: str, port: int) -> aiosmtplib.SMTP:
    await _quit(client)
    return await _connect(host, port)


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except aiosmtplib.SMTPException:
        client.close()
