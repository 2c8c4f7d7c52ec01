"""Damaged and hostile mail for the fuzz tests: corpus mutations and built monsters.

The mutations take the bytes of a real mail and break it the way transfer
errors, broken mailers and attackers do. The monsters are built from
nothing and are as large as the receiver accepts: deep nesting, thousands of
attachments, tens of megabytes of body. ``test_parse_fuzz`` feeds both to
``parse_mail``; ``test_pipeline_fuzz`` sends a smaller set through the
forwarding receiver and the router on the stack.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable

Mutation = Callable[[bytes, random.Random], bytes]

MIB = 1024 * 1024
_CHARSET = re.compile(rb"charset=\"?[A-Za-z0-9_.:-]+\"?", re.I)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def truncate(raw: bytes, rng: random.Random) -> bytes:
    """Cut the mail anywhere, inside a header, a boundary or a base64 line."""
    return raw[:rng.randint(0, len(raw))]


def wrong_charset(raw: bytes, rng: random.Random) -> bytes:
    """Relabel every charset, with a real but wrong one or a made-up name."""
    label = rng.choice([b"iso-2022-jp", b"shift_jis", b"utf-16", b"utf-7", b"koi8-r",
                        b"x-unknown-charset", b"\"\"", b"utf-8\x00", b"cp1252"])
    return _CHARSET.sub(b"charset=" + label, raw)


def nul_bytes(raw: bytes, rng: random.Random) -> bytes:
    """Put NUL bytes into headers and body."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 20)):
        data.insert(rng.randint(0, len(data)), 0)
    return bytes(data)


def bare_carriage_returns(raw: bytes, rng: random.Random) -> bytes:
    """Turn line ends into lone CRs, all or some of them."""
    if rng.random() < 0.5:
        return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return re.sub(rb"\r?\n", lambda m: b"\r" if rng.random() < 0.5 else m.group(0), raw)


def huge_header(raw: bytes, rng: random.Random) -> bytes:
    """Add one header of up to a mebibyte, folded or as one line, or thousands of short ones."""
    size = rng.choice([1000, 100_000, MIB])
    if rng.random() < 0.5:
        value = b"x" * size if rng.random() < 0.5 else b"\r\n ".join(b"y" * 70
                                                                   for _ in range(size // 72))
        header = b"X-Huge: " + value + b"\r\n"
    else:
        header = b"".join(b"Received: from relay%d.example by mx.example; Mon, 4 Mar 2024\r\n" % i
                          for i in range(size // 60))
    return header + raw


def invalid_base64(raw: bytes, rng: random.Random) -> bytes:
    """Corrupt base64 bodies with characters outside the alphabet and broken padding."""
    junk = rng.choice([b"!!!", b"====", b"\xff\xfe", b"A", b"=A=B", b"*" * 77])

    def corrupt(match: re.Match[bytes]) -> bytes:
        body = bytearray(match.group(2))
        for _ in range(rng.randint(1, 5)):
            at = rng.randint(0, len(body))
            body[at:at] = junk
        return match.group(1) + bytes(body)

    pattern = re.compile(rb"(Content-Transfer-Encoding:\s*base64\s*\r?\n(?:[^\r\n]+\r?\n)*?\r?\n)"
                         rb"([A-Za-z0-9+/=\r\n]+)", re.I)
    corrupted = pattern.sub(corrupt, raw)
    if corrupted != raw:
        return corrupted
    return raw + b"\r\n" + junk


def encoded_words(raw: bytes, rng: random.Random) -> bytes:
    """Replace the Subject with thousands of encoded-words, some broken."""
    count = rng.choice([1000, 20_000])
    pieces = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            pieces.append(b"=?utf-8?B?" + base64.b64encode("件名".encode()) + b"?=")
        elif kind == 1:
            pieces.append(b"=?iso-2022-jp?Q?=1B$B?=")
        elif kind == 2:
            pieces.append(b"=?x-nope?q?abc?=")
        else:
            pieces.append(b"=?utf-8?B?@@@?=")
    subject = b"Subject: " + b"\r\n ".join(pieces) + b"\r\n"
    return subject + re.sub(rb"(?im)^subject:[^\r\n]*\r?\n", b"", raw, count=1)


def swap_header_body(raw: bytes, rng: random.Random) -> bytes:
    """Drop the empty line between header and body, or double it at the top."""
    match = _HEADER_END.search(raw)
    if match is None:
        return b"\r\n" + raw
    return raw[:match.start()] + b"\r\n" + raw[match.end():]


def random_bytes(raw: bytes, rng: random.Random) -> bytes:
    """Overwrite a few random bytes with random values."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 50)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "wrong_charset": wrong_charset,
    "nul_bytes": nul_bytes,
    "bare_cr": bare_carriage_returns,
    "huge_header": huge_header,
    "invalid_base64": invalid_base64,
    "encoded_words": encoded_words,
    "swap_header_body": swap_header_body,
    "random_bytes": random_bytes,
}


# --- monsters ------------------------------------------------------------------


def _head(subject: str, message_id: str, content_type: bytes) -> bytes:
    return (b"From: Mallory <mallory@attacker.example>\r\n"
            b"To: <support@example.com>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + message_id.encode() + b">\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: " + content_type + b"\r\n\r\n")


def nested_multiparts(depth: int = 1000, message_id: str = "nested@attacker.example") -> bytes:
    """Return a mail whose multiparts nest ``depth`` levels deep, with text at the bottom."""
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n"
                       % (level, level + 1) for level in range(depth))
    leaf = b"--b%d\r\nContent-Type: text/plain\r\n\r\nthe bottom\r\n" % depth
    closing = b"".join(b"--b%d--\r\n" % level for level in range(depth, -1, -1))
    return (_head("nested", message_id, b"multipart/mixed; boundary=\"b0\"")
            + opening + leaf + closing)


def many_attachments(count: int = 10_000, message_id: str = "many@attacker.example") -> bytes:
    """Return a mail with ``count`` small base64 attachments."""
    parts = [b"--m\r\nContent-Type: text/plain\r\n\r\nsee the files\r\n"]
    payload = base64.b64encode(b"a,b\r\n1,2\r\n")
    for index in range(count):
        parts.append(b"--m\r\nContent-Type: text/csv; name=\"f%d.csv\"\r\n"
                     b"Content-Disposition: attachment; filename=\"f%d.csv\"\r\n"
                     b"Content-Transfer-Encoding: base64\r\n\r\n%s\r\n" % (index, index, payload))
    return (_head("many attachments", message_id, b"multipart/mixed; boundary=\"m\"")
            + b"".join(parts) + b"--m--\r\n")


def big_body(size: int = 50 * 1000 * 1000, *, encoding: str = "base64",
             message_id: str = "big@attacker.example") -> bytes:
    """Return a mail of about ``size`` bytes: one text part, base64 or plain lines."""
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    if encoding == "base64":
        text = (line * (size * 3 // 4 // len(line) + 1))[:size * 3 // 4]
        body = base64.encodebytes(text).replace(b"\n", b"\r\n")
        head = _head("big", message_id, b"text/plain; charset=utf-8")
        head = head.replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n", 1)
        return head + body
    return _head("big", message_id, b"text/plain; charset=utf-8") + line * (size // len(line))


def big_plain_body(size: int = 50 * 1000 * 1000) -> bytes:
    """Return a mail of about ``size`` bytes of plain text lines, no transfer encoding."""
    return big_body(size, encoding="plain", message_id="big-plain@attacker.example")


def endless_encoded_words(count: int = 200_000) -> bytes:
    """Return a mail whose Subject is ``count`` encoded-words, a quarter of them broken."""
    pieces = [b"=?utf-8?B?" + base64.b64encode("件名".encode()) + b"?=",
              b"=?iso-2022-jp?Q?=1B$B?=", b"=?x-nope?q?abc?=", b"=?utf-8?B?@@@?="]
    subject = b"\r\n ".join(pieces[index % 4] for index in range(count))
    head = _head("x", "words@attacker.example", b"text/plain")
    return head.replace(b"Subject: x", b"Subject: " + subject, 1) + b"hello\r\n"


def huge_header_mail(size: int = MIB) -> bytes:
    """Return a small mail with one unfolded header of ``size`` bytes."""
    return b"X-Huge: " + b"x" * size + b"\r\n" + _head("huge header", "huge@attacker.example",
                                                      b"text/plain") + b"hello\r\n"


def huge_address(size: int = 5000) -> bytes:
    """Return a mail whose From and Cc addresses have a local part of ``size`` bytes."""
    local = b"a" * size
    return (b"From: Mallory <" + local + b"@attacker.example>\r\n"
            b"To: <support@example.com>\r\nCc: <" + local + b"@cc.example>\r\n"
            b"Subject: long address\r\nMessage-ID: <address@attacker.example>\r\n\r\nhi\r\n")
