"""Realistic customer threads for the chaos run: first mails, replies, reply-alls.

:func:`generate` is called by :mod:`messagehub.chaos.harness` (``messagehub
chaos``) and by the chaos tests. It writes, from a seed, a set of threads
spread over several inboxes. A customer opens a conversation, then replies
to their own mail, or a colleague they copied replies to all. Each reply
carries In-Reply-To and References as a mail client writes them.
Mails vary the way support mail does: plain text or text plus HTML, a small
attachment, a Japanese subject and name in encoded-words, quoted history.

:func:`arrival_order` decides the order in which the mails are sent: the
threads overlap in time, a few replies overtake the mail they answer (as
mail delivered by two different relays does), and a few mails are
forwarded twice. Every customer writes one thread, so the caps on
automatic mail per recipient never suppress a greeting the checks expect.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime

CUSTOMER_DOMAIN = "customers.example"
MESSAGE_ID_DOMAIN = "mail.customers.example"
# Share of thread lengths 1, 2, 3 and 4: the mean is two mails per thread.
THREAD_LENGTH_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
HTML_SHARE = 0.25
ATTACHMENT_SHARE = 0.05
JAPANESE_SHARE = 0.15
CC_SHARE = 0.2
OVERTAKING_SHARE = 0.03
REDELIVERED_SHARE = 0.02

_FIRST_NAMES = ("Alice", "Bruno", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana",
                "Ines", "Jonas", "Keiko", "Liam", "Mei", "Nadia", "Oskar", "Priya")
_LAST_NAMES = ("Andersen", "Brandt", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia",
               "Horvat", "Ivanova", "Jensen", "Kowalski", "Lopez", "Moreau", "Novak")
_JAPANESE_NAMES = ("山田 太郎", "鈴木 花子", "佐藤 一郎", "髙橋 美咲", "田中 健")
_SUBJECTS = ("Order {n} arrived damaged", "Question about invoice {n}",
             "Cannot log in to account {n}", "Refund for order {n}",
             "Delivery address change for order {n}", "Warranty claim {n}")
_JAPANESE_SUBJECTS = ("注文{n}の配送について", "請求書{n}の再発行のお願い", "アカウント{n}にログインできません")
_OPENINGS = ("Hello,", "Hi there,", "Good morning,", "Dear support team,")
_REQUESTS = ("the parcel came with a broken corner and the lamp inside does not switch on.",
             "I was charged twice and would like one of the payments returned.",
             "the reset link in your mail says it has expired every time I open it.",
             "could you tell me when the replacement will be shipped?",
             "I moved last week; please send the order to my new address below.")
_FOLLOW_UPS = ("Any news on this?", "Thank you, that helped. One more question though.",
               "I attached the photo you asked for.", "Still waiting for an answer, please.",
               "Sorry, I forgot to add my order number.")


@dataclass(frozen=True)
class ChaosMail:
    """One generated mail and where it belongs."""

    inbox: int  # index into the run's inboxes
    thread: int  # index of the thread across the whole run
    position: int  # 0 for the mail that opens the thread
    message_id: str  # without angle brackets
    sender: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class ChaosThread:
    """The mails of one thread, in the order they were written."""

    inbox: int
    index: int
    customer: str
    subject: str
    mails: tuple[ChaosMail, ...]


def generate(mails: int, inbox_addresses: list[str], *, seed: int,
             start: datetime | None = None) -> list[ChaosThread]:
    """Write threads with ``mails`` mails in total over the given inbox addresses.

    The same seed gives the same bytes, so a failed run can be repeated.
    """
    if mails < 1:
        raise ValueError(f"invalid number of mails {mails!r}: expected at least 1")
    if not inbox_addresses:
        raise ValueError("no inbox addresses: expected at least one")

    rng = random.Random(seed)
    clock = start or datetime(2024, 3, 4, 8, 0, tzinfo=timezone.utc)
    threads: list[ChaosThread] = []
    written = 0
    while written < mails:
        length = min(rng.choices((1, 2, 3, 4), THREAD_LENGTH_WEIGHTS)[0], mails - written)
        inbox = len(threads) % len(inbox_addresses)
        clock += timedelta(seconds=rng.randint(5, 120))
        threads.append(_thread(rng, len(threads), inbox, inbox_addresses[inbox], length,
                               clock, seed))
        written += length
    return threads


def arrival_order(threads: list[ChaosThread], *, seed: int) -> list[ChaosMail]:
    """Return every mail in the order it reaches the forwarding receiver.

    Threads overlap; within a thread, a few replies overtake the mail before
    them, and a few mails appear a second time later on.
    """
    rng = random.Random(seed + 1)
    timed: list[tuple[float, int, ChaosMail]] = []
    for thread in threads:
        moment = float(thread.index)
        for mail in thread.mails:
            timed.append((moment, len(timed), mail))
            moment += rng.uniform(1.0, 40.0)
    timed.sort()
    order = [mail for _, _, mail in timed]

    overtaking = [mail for mail in order if mail.position > 0 and rng.random() < OVERTAKING_SHARE]
    for mail in overtaking:
        order.remove(mail)
        parent = next(index for index, other in enumerate(order)
                      if other.thread == mail.thread and other.position == mail.position - 1)
        order.insert(parent, mail)

    for mail in list(order):
        if rng.random() < REDELIVERED_SHARE:
            order.insert(rng.randint(order.index(mail) + 1, len(order)), mail)
    return order


def _thread(rng: random.Random, index: int, inbox: int, inbox_address: str, length: int,
            clock: datetime, seed: int) -> ChaosThread:
    japanese = rng.random() < JAPANESE_SHARE
    customer_name = rng.choice(_JAPANESE_NAMES) if japanese else (
        f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}")
    customer = f"customer{index}.s{seed}@{CUSTOMER_DOMAIN}"
    colleague = f"colleague{index}.s{seed}@{CUSTOMER_DOMAIN}" if rng.random() < CC_SHARE else None
    number = 10000 + index
    subject = rng.choice(_JAPANESE_SUBJECTS if japanese else _SUBJECTS).format(n=number)

    mails: list[ChaosMail] = []
    history: list[str] = []
    for position in range(length):
        sender_address, sender_name = customer, customer_name
        if position > 0 and colleague is not None and rng.random() < 0.5:
            sender_address, sender_name = colleague, "Colleague"
        clock += timedelta(minutes=rng.randint(3, 600))
        message_id = f"chaos.{seed}.{index}.{position}.{rng.getrandbits(32):08x}@{MESSAGE_ID_DOMAIN}"
        body = _body(rng, position, history, sender_name)
        raw = _render(rng, message_id=message_id, sender=(sender_name, sender_address),
                      to=inbox_address, cc=colleague if sender_address == customer else customer,
                      copy_other=colleague is not None,
                      subject=subject if position == 0 else f"Re: {subject}",
                      date=clock, history=history, body=body,
                      with_attachment=rng.random() < ATTACHMENT_SHARE)
        mails.append(ChaosMail(inbox, index, position, message_id, sender_address, raw))
        history.append(message_id)
    return ChaosThread(inbox, index, customer, subject, tuple(mails))


def _body(rng: random.Random, position: int, history: list[str], sender_name: str) -> str:
    lines = [rng.choice(_OPENINGS), ""]
    lines.append(rng.choice(_REQUESTS) if position == 0 else rng.choice(_FOLLOW_UPS))
    lines += ["", "Best regards,", sender_name]
    if history:
        lines += ["", f"On Mon, 4 Mar 2024 at 09:{position:02d}, {sender_name} wrote:",
                  "> " + rng.choice(_REQUESTS)]
    return "\n".join(lines) + "\n"


def _render(rng: random.Random, *, message_id: str, sender: tuple[str, str], to: str,
            cc: str | None, copy_other: bool, subject: str, date: datetime, history: list[str],
            body: str, with_attachment: bool) -> bytes:
    """Return the mail as CRLF bytes, headers encoded as a mail client would."""
    name, address = sender
    headers = [
        f"From: {_display_name(name)} <{address}>",
        f"To: <{to}>",
        f"Subject: {_encoded(subject)}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: <{message_id}>",
        "MIME-Version: 1.0",
    ]
    if copy_other and cc is not None:
        headers.append(f"Cc: <{cc}>")
    if history:
        headers.append(f"In-Reply-To: <{history[-1]}>")
        headers.append("References: " + "\r\n ".join(f"<{key}>" for key in history))

    text_part = ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64",
                 "", _base64(body.encode())]
    parts = [text_part]
    if rng.random() < HTML_SHARE:
        html = "<html><body>" + "".join(f"<p>{line}</p>" for line in body.splitlines()) + \
            "</body></html>"
        parts = [["Content-Type: multipart/alternative; boundary=\"alt\"", "",
                  "--alt", *text_part, "--alt", "Content-Type: text/html; charset=utf-8",
                  "Content-Transfer-Encoding: base64", "", _base64(html.encode()), "--alt--"]]
    if with_attachment:
        csv = "order,item,qty\r\n10001,desk lamp,1\r\n".encode()
        parts.append(["Content-Type: text/csv; name=\"order.csv\"",
                      "Content-Disposition: attachment; filename=\"order.csv\"",
                      "Content-Transfer-Encoding: base64", "", _base64(csv)])

    if len(parts) == 1:
        lines = headers + parts[0]
    else:
        lines = headers + ["Content-Type: multipart/mixed; boundary=\"mixed\"", "",
                           "This is a multi-part message in MIME format."]
        for part in parts:
            lines += ["--mixed", *part]
        lines.append("--mixed--")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _display_name(name: str) -> str:
    return _encoded(name) if not name.isascii() else f'"{name}"'


def _encoded(text: str) -> str:
    return text if text.isascii() else Header(text, "utf-8").encode()


def _base64(data: bytes) -> str:
    encoded = base64.encodebytes(data).decode("ascii")
    return encoded.rstrip("\n").replace("\n", "\r\n")
