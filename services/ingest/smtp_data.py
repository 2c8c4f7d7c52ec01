"""The forwarding receiver's SMTP server: aiosmtpd, with DATA read in blocks.

aiosmtpd reads the mail after DATA one line at a time, with one
``readuntil``, a few list operations and a size check per line. That is
55,000 rounds for a 4 MB mail, and it was the largest single cost of the
ingest service.
:class:`ForwardingSMTP` reads the same bytes in blocks of up to 64 KiB,
searching each block for the end of data (CRLF "." CRLF) in C, and undoes
dot-stuffing (RFC 5321, 4.5.2) with one ``bytes.replace`` over the whole
mail.

What differs from aiosmtpd's own DATA: lines longer than 1,000 octets are
accepted, because the router parses them and a rejection would only bounce
a customer's mail. The content is always bytes (``decode_data`` is not
supported). Mail over ``data_size_limit`` is still read to its end
and answered 552.

NOTE: a mail that starts with a long run of empty lines is read a line per
call, as aiosmtpd reads every mail; 4 MiB of them cost about 3 s of CPU,
with the event loop given a turn every 256 lines. Elsewhere in a mail such
runs are searched in blocks.

This overrides ``SMTP.smtp_DATA`` and uses aiosmtpd internals
(``_reader``, ``_call_handler_hook``, ``_set_post_data_state``), so it is
tied to the pinned aiosmtpd version; tests/ingest exercise it through the
running receiver.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

END_OF_DATA = b"\r\n.\r\n"
FINAL_LINE = b".\r\n"
# Small reads (two bytes or a line) happen only while the bytes taken end in
# a prefix of the end marker, which after the first line needs a run of
# empty lines or bare CRs. Such a run gives the event loop a turn this often.
YIELD_EVERY_SMALL_READS = 256
BLOCK_BYTES = 64 * 1024


class ForwardingSMTP(SMTP):
    """An aiosmtpd server whose DATA command reads the mail in blocks."""

    # The stream limit doubles as the largest block one read returns. A
    # command line is still held to command_size_limit after it is read.
    line_length_limit = BLOCK_BYTES

    def __init__(self, *args: object, **kwargs: object) -> None:
        if kwargs.get("decode_data"):
            raise ValueError("ForwardingSMTP hands the handler bytes; decode_data is not supported")
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return

        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, too_large = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:
            log.info("peer %s: connection lost during DATA", self._peer())
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("peer %s: connection closed during DATA", self._peer())
            self._writer.close()
            return
        if too_large:
            self._set_post_data_state()
            await self.push("552 Error: Too much mail data")
            return

        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def _peer(self) -> object:
        return self.session.peer if self.session is not None else "unknown"


async def read_data(reader: asyncio.StreamReader, size_limit: int | None) -> tuple[bytes, bool]:
    """Read one mail after the 354 reply, up to and including the end of data.

    Returns the mail with dot-stuffing undone (each line keeps its CRLF, the
    final "." line is dropped) and whether it was over ``size_limit``, in
    which case the bytes are discarded as they arrive and the content is
    empty. Nothing after the end of data is consumed, so pipelined commands
    stay in the reader.
    """
    received = bytearray()
    total = 0
    too_large = False
    # Bytes already taken that an end marker may start in. The CRLF of the
    # DATA command line counts, so a mail of no lines ends at the first ".\r\n".
    carry = b"\r\n"
    small_reads = 0
    done = False
    while not done:
        if _marker_prefix_length(carry):
            block = await _next_small_block(reader, carry)
            carry = (carry + block)[-len(END_OF_DATA):]
            done = carry == END_OF_DATA
            small_reads += 1
            if small_reads % YIELD_EVERY_SMALL_READS == 0:
                await asyncio.sleep(0)  # a run of empty lines must not hold the event loop
        else:
            block, done = await _next_large_block(reader)
            # readuntil never consumes a byte that a marker could start in.
            carry = b""

        total += len(block)
        if size_limit and total > size_limit + len(FINAL_LINE):
            too_large = True
            received.clear()
        if not too_large:
            received += block

    if too_large:
        return b"", True
    return _unstuff(received), False


async def _next_large_block(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Return the mail up to the end marker, or up to BLOCK_BYTES of it; and whether it ended."""
    try:
        return await reader.readuntil(END_OF_DATA), True
    except asyncio.LimitOverrunError as overrun:
        # ``consumed`` stops short of the last four bytes, where a marker may begin.
        return await reader.readexactly(overrun.consumed), False


async def _next_small_block(reader: asyncio.StreamReader, carry: bytes) -> bytes:
    """Return the next bytes after ``carry``, which ends in a prefix of the end marker.

    A search of the reader's buffer alone would miss a marker that began in
    ``carry``. Every marker ends at a line feed, so reading up to the next
    one never passes it. After a CRLF the marker needs three more bytes, so
    two can be taken safely: they tell whether a "." line follows, and a run
    of empty lines goes one line per read.
    """
    if carry.endswith(b"\r\n"):
        return await reader.readexactly(2)
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as overrun:
        return await reader.readexactly(overrun.consumed)


def _marker_prefix_length(tail: bytes) -> int:
    """Return how many bytes at the end of ``tail`` are a proper prefix of the end marker."""
    for length in range(len(END_OF_DATA) - 1, 0, -1):
        if tail.endswith(END_OF_DATA[:length]):
            return length
    return 0


def _unstuff(received: bytearray) -> bytes:
    """Drop the final "." line and the leading dot of every line, in place where possible."""
    del received[-len(FINAL_LINE):]  # its CRLF belongs to the end marker; the last line keeps one
    if received.startswith(b"."):
        del received[0]
    if b"\r\n." in received:
        return bytes(received.replace(b"\r\n.", b"\r\n"))
    return bytes(received)
