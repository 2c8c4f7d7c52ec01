"""Byte-level MIME tree of a mail: header blocks, multipart splitting and
content transfer decoding.

The router does not read structure through Python's ``email`` package,
because its results depend on malformations: a multipart part whose boundary
never appears comes back with a string payload, and its base64 decoder stops
at the first padded chunk. This module splits the raw bytes itself, keeps
the exact bytes of every part (so a forwarded message/rfc822 part can be
stored whole), and records repairs as defects instead of raising on malformed
input. ``mime.parse_mail`` and the bounce parser call it.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from services.router.headers import (
    decode_base64_chunks,
    decode_raw,
    decode_words,
    get_param,
    split_value_and_params,
    unfold,
)

# Deeper nesting than this is treated as an opaque leaf. Mail clients nest a
# few levels deep, so the limit only stops crafted input from exhausting the
# recursion.
MAX_DEPTH = 30

_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_UNINDENTED_PARAMETER = re.compile(rb"[A-Za-z0-9_*-]+=[^:]*$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")

Params = list[tuple[str, str, bool]]


@dataclass
class Part:
    """One node of the MIME tree with its raw header values and body bytes."""

    headers: list[tuple[str, bytes]]  # (lowercased name, raw value as folded on the wire)
    body: bytes  # still transfer-encoded
    content_type: str  # lowercased; "text/plain" when missing or unusable
    params: Params
    children: list[Part] = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        """Return the raw value of the first header with this name."""
        target = name.lower()
        for header_name, value in self.headers:
            if header_name == target:
                return value
        return None

    def header_values(self, name: str) -> list[bytes]:
        """Return the raw values of every header with this name, in order."""
        target = name.lower()
        return [value for header_name, value in self.headers if header_name == target]

    def header_text(self, name: str, defects: list[str]) -> str | None:
        """Return the first such header as text with encoded-words decoded, None when absent.

        Not for address headers: their display names are decoded only after
        parsing, because a decoded name may contain "," or "<".
        """
        raw = self.header(name)
        if raw is None:
            return None
        source = f"{name.title()} header"
        return decode_words(unfold(decode_raw(raw, defects, source)), defects, source)

    def param(self, name: str, defects: list[str]) -> str | None:
        """Return a decoded Content-Type parameter."""
        return get_param(self.params, name, defects, f"Content-Type {name}")

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")


def split_header_block(data: bytes, defects: list[str]) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split raw bytes into (headers, body) at the first empty line.

    A line that is neither a header nor a continuation also ends the
    header block: some mailers forget the empty line before the body.
    """
    # Values grow in place: joining bytes per continuation line took
    # quadratic time on a header folded over hundreds of thousands of lines.
    headers, body = _split_header_lines(data, defects)
    return [(name, bytes(value)) for name, value in headers], body


def _split_header_lines(data: bytes, defects: list[str]) -> tuple[list[tuple[str, bytearray]], bytes]:
    headers: list[tuple[str, bytearray]] = []
    position = _skip_mbox_separator(data)

    while position < len(data):
        newline = data.find(b"\n", position)
        line_end = len(data) if newline < 0 else newline + 1
        line = data[position:line_end]
        content = line.rstrip(b"\r\n")

        if not content:
            return headers, data[line_end:]

        if content[:1] in (b" ", b"\t"):
            _append_continuation(headers, line, defects)
        elif headers and _UNINDENTED_PARAMETER.match(content):
            # Some mailers wrap a long header without indenting the next
            # line, which then starts with a parameter: name="offer.zip".
            defects.append("unindented header continuation joined")
            _append_continuation(headers, b" " + line, defects)
        else:
            match = _HEADER_LINE.match(content)
            if match is None:
                defects.append("missing empty line between header and body")
                return headers, data[position:]
            name = match.group(1).decode("ascii").lower()
            headers.append((name, bytearray(line[match.end() :].lstrip(b" \t").rstrip(b"\r\n"))))

        position = line_end

    return headers, b""


def _skip_mbox_separator(data: bytes) -> int:
    # Mail exported from mbox files starts with a "From sender date" line.
    if data.startswith(b"From "):
        newline = data.find(b"\n")
        return len(data) if newline < 0 else newline + 1
    return 0


def _append_continuation(headers: list[tuple[str, bytearray]], line: bytes, defects: list[str]) -> None:
    if not headers:
        defects.append("header block starts with a continuation line")
        return
    value = headers[-1][1]
    value += b"\r\n"
    value += line.rstrip(b"\r\n")


def parse_part(data: bytes, defects: list[str], default_type: str = "text/plain", depth: int = 0) -> Part:
    """Parse the bytes of a message or body part into a tree of Parts.

    message/rfc822 bodies are not parsed here; callers parse them with
    this function when they need the inner headers.
    """
    headers, body = split_header_block(data, defects)
    content_type, params = _read_content_type(headers, default_type, defects)
    part = Part(headers=headers, body=body, content_type=content_type, params=params)

    if not part.is_multipart:
        return part

    if depth >= MAX_DEPTH:
        defects.append(f"MIME nesting deeper than {MAX_DEPTH} levels kept as one part")
        part.content_type = "application/octet-stream"
        return part

    _split_children(part, defects, depth)
    return part


def _read_content_type(headers: list[tuple[str, bytes]], default_type: str, defects: list[str]) -> tuple[str, Params]:
    raw = next((value for name, value in headers if name == "content-type"), None)
    if raw is None:
        return default_type, []

    text = unfold(decode_raw(raw, defects, "Content-Type header"))
    main, params = split_value_and_params(text)

    # Some mailers forget the ";" before the first parameter:
    # "application/pdf name=offer.pdf".
    main, _, trailing = main.strip().partition(" ")
    if "=" in trailing:
        params = split_value_and_params(";" + trailing)[1] + params
        defects.append("Content-Type header lacks ';' before its parameters")

    content_type = main.strip('"').lower()

    if not _CONTENT_TYPE.match(content_type):
        # RFC 2045 reads "text" alone or an empty value as plain text.
        defects.append(f"invalid Content-Type {main[:60]!r}, read as text/plain")
        return "text/plain", params
    return content_type, params


def _split_children(part: Part, defects: list[str], depth: int) -> None:
    boundary = part.param("boundary", defects)
    declared = part.content_type
    bodies = _split_multipart(part.body, boundary, declared, defects) if boundary else None

    if bodies is None:
        if not boundary:
            defects.append(f"{declared} without a boundary parameter, read as text")
        # The body is kept as plain text, so a cut-off part is still readable.
        part.content_type = "text/plain"
        return

    child_type = "message/rfc822" if declared == "multipart/digest" else "text/plain"
    part.children = [parse_part(body, defects, child_type, depth + 1) for body in bodies]


def _split_multipart(body: bytes, boundary: str, declared: str, defects: list[str]) -> list[bytes] | None:
    """Return the bodies between the boundary lines, or None if none appears."""
    # Junk after a closing delimiter ("--b-->") is tolerated; an opening
    # delimiter must stand alone, or "--b" would also match "--b-2".
    encoded = boundary.encode("utf-8", "surrogateescape")
    delimiter = re.compile(rb"^--" + re.escape(encoded) + rb"(?:(--)[^\r\n]*|[ \t]*)\r?$", re.M)
    matches = _delimiter_lines(body, b"--" + encoded, delimiter)
    opening = [match for match in matches if not match.group(1)]

    if not opening:
        defects.append(f"boundary {boundary!r} of {declared} not found")
        return None

    bodies: list[bytes] = []
    for index, match in enumerate(matches):
        if match.group(1):
            return bodies
        start = _after_line_break(body, match.end())
        if index + 1 < len(matches):
            end = _before_line_break(body, matches[index + 1].start())
        else:
            defects.append(f"closing boundary of {declared} missing")
            end = len(body)
        bodies.append(body[start:max(start, end)])
    return bodies


def _delimiter_lines(body: bytes, prefix: bytes, delimiter: re.Pattern[bytes]) -> list[re.Match[bytes]]:
    """Return what ``delimiter.finditer(body)`` returns, much faster on large bodies.

    Every delimiter line starts with ``prefix`` at the start of a line, so
    only those places are tried. Scanning a multi-megabyte attachment with
    the line-anchored pattern alone takes tens of milliseconds.
    """
    found: list[re.Match[bytes]] = []
    position = body.find(prefix)
    while position != -1:
        match = None
        if position == 0 or body[position - 1] == ord("\n"):
            # "^" in MULTILINE mode matches here, just after a line break.
            match = delimiter.match(body, position)
        if match is not None:
            found.append(match)
            position = body.find(prefix, match.end())
        else:
            position = body.find(prefix, position + 1)
    return found


def _after_line_break(data: bytes, position: int) -> int:
    if data.startswith(b"\r\n", position):
        return position + 2
    if data.startswith(b"\n", position):
        return position + 1
    return position


def _before_line_break(data: bytes, position: int) -> int:
    # The line break before a boundary line belongs to the boundary.
    if data.endswith(b"\r\n", 0, position):
        return position - 2
    if data.endswith(b"\n", 0, position):
        return position - 1
    return position


# ---------------------------------------------------------------------------
# Content-Transfer-Encoding
# ---------------------------------------------------------------------------


# Spellings seen in the wild for the standard encodings.
_TRANSFER_ENCODING_ALIASES = {
    "7bits": "7bit",
    "8bits": "8bit",
    "7-bit": "7bit",
    "8-bit": "8bit",
    "quoted printable": "quoted-printable",
    "quotedprintable": "quoted-printable",
    "quoted_printable": "quoted-printable",
    "base-64": "base64",
}


def transfer_encoding(part: Part) -> str:
    """Return the lowercased Content-Transfer-Encoding, "7bit" when absent."""
    raw = part.header("content-transfer-encoding")
    if raw is None:
        return "7bit"
    text = unfold(raw.decode("ascii", "replace"))
    value = re.sub(r"\(.*?\)", "", text).strip().strip('"').strip().lower() or "7bit"
    return _TRANSFER_ENCODING_ALIASES.get(value, value)


def decode_payload(part: Part, defects: list[str]) -> bytes:
    """Return the body bytes with the Content-Transfer-Encoding undone."""
    encoding = transfer_encoding(part)

    if encoding == "base64":
        if not _looks_like_base64(part.body):
            defects.append(f"{part.content_type} part: declared base64 but is plain text, kept as is")
            return part.body
        return decode_base64_chunks(part.body, defects, f"{part.content_type} part")
    if encoding == "quoted-printable":
        return binascii.a2b_qp(part.body)
    if encoding in ("x-uuencode", "uuencode", "x-uue"):
        return _decode_uuencode(part.body, defects)
    if encoding not in ("7bit", "8bit", "binary"):
        defects.append(f"unknown Content-Transfer-Encoding {encoding!r}, body kept as is")
    return part.body


def _looks_like_base64(body: bytes) -> bool:
    """Tell whether most lines could be base64.

    Mailers sometimes label plain text as base64. Base64 lines never contain
    inner spaces, so a body where most lines do is text.
    """
    if b" " not in body and b"\t" not in body:
        # The common case, and a large part's per-line scan would be slow.
        return True
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    worded = sum(1 for line in lines if b" " in line or b"\t" in line)
    return worded * 2 <= len(lines)


def _decode_uuencode(body: bytes, defects: list[str]) -> bytes:
    out = bytearray()
    in_data = False

    for line in body.splitlines():
        if not in_data:
            in_data = line.startswith(b"begin ")
            continue
        if line.strip() in (b"end", b"`"):
            if line.strip() == b"end":
                break
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders pad lines wrongly; decode only the declared length.
            length = (((line[0] - 32) & 63) * 4 + 5) // 3 if line else 0
            try:
                out += binascii.a2b_uu(line[:length])
            except binascii.Error:
                defects.append("undecodable uuencoded line skipped")

    if not in_data:
        defects.append("uuencoded part without a begin line")
    return bytes(out)
