"""The receiver's block-wise DATA reader, fed through a real asyncio StreamReader.

The reference is RFC 5321, 4.5.2. A sender doubles a line's leading dot and
ends the data with a line of one dot, and the receiver takes one leading dot
off every line. Whatever way the bytes are split into TCP reads, the mail must
come out the same and the bytes after the end of data must stay unread.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.smtp_data import BLOCK_BYTES, read_data

PIPELINED = b"MAIL FROM:<next@example.org>\r\n"


def dot_stuff(mail: bytes) -> bytes:
    """Encode ``mail`` (CRLF lines) for DATA as a sending client does, end marker included."""
    lines = mail.split(b"\r\n")[:-1] if mail else []
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                       for line in lines)
    return stuffed + b".\r\n"


def read(chunks: list[bytes], size_limit: int | None = None) -> tuple[bytes, bool, bytes]:
    """Feed ``chunks`` one by one to a StreamReader; return the mail, the flag and what is left."""

    async def run() -> tuple[bytes, bool, bytes]:
        reader = asyncio.StreamReader(limit=BLOCK_BYTES)
        task = asyncio.create_task(read_data(reader, size_limit))
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        content, too_large = await asyncio.wait_for(task, 5)
        reader.feed_eof()
        return content, too_large, await reader.read()

    return asyncio.run(run())


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


@pytest.mark.parametrize(("mail", "stuffed"), [
    (b"", b".\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"Subject: hi\r\n\r\nbody\r\n", b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
    (b"no final line end", b"no final line end\r\n.\r\n"),
])
def test_read_data__examples(mail: bytes, stuffed: bytes) -> None:
    expected = mail if mail.endswith(b"\r\n") or not mail else mail + b"\r\n"

    for size in (1, 2, 3, 7, len(stuffed)):
        content, too_large, left = read(split_every(stuffed + PIPELINED, size))

        assert (content, too_large, left) == (expected, False, PIPELINED)


def test_read_data__dot_inside_line() -> None:
    stuffed = b"price: 3.\r\n.5 off\r\n.\r\n"

    content, _too_large, left = read([stuffed + PIPELINED])

    assert content == b"price: 3.\r\n5 off\r\n"
    assert left == PIPELINED


def test_read_data__long_lines_and_blocks() -> None:
    mail = b"X-Long: " + b"a" * (3 * BLOCK_BYTES) + b"\r\n\r\n" + b"line\r\n" * 50_000

    content, too_large, left = read(split_every(dot_stuff(mail) + PIPELINED, 4096))

    assert (content, too_large, left) == (mail, False, PIPELINED)


def test_read_data__over_limit_flagged() -> None:
    mail = b"x" * 98 + b"\r\n"

    assert read([dot_stuff(mail * 10) + PIPELINED], size_limit=1000)[:2] == (mail * 10, False)
    content, too_large, left = read(split_every(dot_stuff(mail * 11) + PIPELINED, 64),
                                    size_limit=1000)

    assert (content, too_large, left) == (b"", True, PIPELINED)


# Lines with leading dots and stray bare CR and LF, which neither end a line nor a mail.
line_texts = st.binary(max_size=30).filter(lambda text: b"\r\n" not in text)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from([b"", b".", b"..", b"...."]), line_texts),
                      max_size=40),
       split=st.integers(min_value=1, max_value=50))
def test_read_data__any_mail_any_split(lines: list[tuple[bytes, bytes]], split: int) -> None:
    mail = b"".join(prefix + text + b"\r\n" for prefix, text in lines)

    content, too_large, left = read(split_every(dot_stuff(mail) + PIPELINED, split))

    assert (content, too_large, left) == (mail, False, PIPELINED)


@pytest.mark.parametrize("mail", [
    b"\r\n" * 200_000 + b"after empty lines\r\n",
    b"Subject: runs\r\n\r\n" + b"\r" * 300_000 + b"\r\n" + b"\r\n" * 100_000,
    b"\r" * 300_000 + b"\r\n",
    b".\r\n" * 50_000,
])
def test_read_data__runs_of_line_ends(mail: bytes) -> None:
    content, too_large, left = read([dot_stuff(mail) + PIPELINED])

    assert (content, too_large, left) == (mail, False, PIPELINED)


def test_read_data__yields_on_empty_lines() -> None:
    async def run() -> int:
        reader = asyncio.StreamReader(limit=BLOCK_BYTES)
        reader.feed_data(b"\r\n" * 100_000 + b".\r\n")
        ticks = 0

        async def count() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count())
        await read_data(reader, None)
        counter.cancel()
        return ticks

    assert asyncio.run(run()) > 10
