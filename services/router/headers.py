"""Decoding of raw header values: text, MIME parameters and dates.

Header values arrive as raw bytes from ``parts.split_header_block``. This
module turns them into text under the charset policy of ``charsets``: raw
8-bit bytes (legal UTF-8 under RFC 6532, or legacy CP932), RFC 2047
encoded-words, RFC 2231 parameters and RFC 5322 dates. The address and id
parsers, the MIME tree and ``mime.parse_mail`` call it.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from services.router.charsets import decode_bytes, drop_nul, guess_8bit, has_jis_escapes

# charset (with optional RFC 2231 language), encoding, encoded text.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*?)\?=")
_ENCODED_WORD_BYTES = re.compile(rb"=\?[^?\s]+\?[QqBb]\?[^?]*?\?=")
_WHITESPACE_ONLY = re.compile(r"[ \t\r\n]*")
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def unfold(value: str) -> str:
    """Remove the line breaks of folded header lines, keeping the whitespace."""
    return _FOLD.sub("", value).replace("\r", "").replace("\n", "")


def decode_raw(raw: bytes, defects: list[str], source: str) -> str:
    """Decode raw header bytes to a string without touching encoded-words.

    Raw UTF-8 is legal in headers (RFC 6532). Old Japanese mailers also send
    raw CP932, or raw ISO-2022-JP escapes without any encoded-word.
    """
    if raw.isascii():
        if has_jis_escapes(raw):
            return decode_bytes(raw, "iso-2022-jp", defects, source)
        return drop_nul(raw.decode("ascii"), defects, source)

    pieces: list[str] = []
    position = 0
    for match in _ENCODED_WORD_BYTES.finditer(raw):
        pieces.append(_decode_raw_8bit(raw[position : match.start()], defects, source))
        # Some mailers put raw 8-bit bytes inside encoded-words. They belong
        # to the word's charset, so they stay surrogate-escaped until
        # decode_words reads the word.
        pieces.append(match.group().decode("ascii", "surrogateescape"))
        position = match.end()

    pieces.append(_decode_raw_8bit(raw[position:], defects, source))
    return drop_nul("".join(pieces), defects, source)


def _decode_raw_8bit(raw: bytes, defects: list[str], source: str) -> str:
    text, codec = guess_8bit(raw)
    if codec not in ("utf-8", "ascii") and not raw.isascii():
        defects.append(f"{source}: raw 8-bit header decoded as {codec}")
    return text


def decode_text(raw: bytes, defects: list[str], source: str) -> str:
    """Decode an unstructured header value (Subject, display names) to text."""
    return decode_words(unfold(decode_raw(raw, defects, source)), defects, source).strip()


def decode_words(text: str, defects: list[str], source: str) -> str:
    """Decode RFC 2047 encoded-words in a string.

    Adjacent encoded-words in the same charset are decoded as one byte
    string, because mailers split multibyte characters and even ISO-2022-JP
    escape sequences across words. Whitespace between encoded-words is
    dropped as RFC 2047 requires.
    """
    pieces: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    position = 0

    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        charset = match.group(1).split("*", 1)[0].lower()
        adjacent = pending_charset is not None and _WHITESPACE_ONLY.fullmatch(gap) is not None

        if not (adjacent and charset == pending_charset):
            _flush_words(pieces, pending, pending_charset, defects, source)
            pending = bytearray()
            if not adjacent:
                pieces.append(gap)

        pending += _decode_word_payload(match.group(2), match.group(3), defects, source)
        pending_charset = charset
        position = match.end()

    _flush_words(pieces, pending, pending_charset, defects, source)
    pieces.append(text[position:])
    return "".join(pieces)


def _flush_words(
    pieces: list[str],
    pending: bytearray,
    charset: str | None,
    defects: list[str],
    source: str,
) -> None:
    if charset is None:
        return
    pieces.append(decode_bytes(bytes(pending), charset, defects, source))


def _decode_word_payload(encoding: str, payload: str, defects: list[str], source: str) -> bytes:
    data = payload.encode("utf-8", "surrogateescape")

    if encoding in "Qq":
        # In the Q encoding "_" is a space; "=XX" is a hex byte.
        return _QP_HEX.sub(lambda m: bytes.fromhex(m.group(1).decode()), data.replace(b"_", b" "))

    return decode_base64_chunks(data, defects, source)


_BASE64_CHUNK = re.compile(rb"[A-Za-z0-9+/]+=*")
# Every byte outside the base64 alphabet and "=", for bytes.translate: it
# removes them many times faster than a regular expression on large parts.
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")))


def decode_base64_chunks(data: bytes, defects: list[str], source: str) -> bytes:
    """Decode base64 that may be several separately padded pieces.

    Some encoders emit each line or buffer as its own padded base64 string,
    so decoding must restart after every "=" padding instead of stopping at
    the first one. Characters outside the alphabet are skipped.
    """
    cleaned = data.translate(None, _NOT_BASE64)
    if len(cleaned) != len(data.translate(None, b" \t\r\n")):
        defects.append(f"{source}: invalid characters skipped in base64")

    out = bytearray()
    truncated = False
    for chunk in _BASE64_CHUNK.findall(cleaned):
        body = chunk.rstrip(b"=")
        if len(body) % 4 == 1:
            # A single leftover character carries less than one byte.
            truncated = True
            body = body[:-1]
        out += base64.b64decode(body + b"=" * (-len(body) % 4))

    if truncated:
        defects.append(f"{source}: truncated base64 data")
    return bytes(out)


# ---------------------------------------------------------------------------
# MIME parameters (RFC 2045, RFC 2231)
# ---------------------------------------------------------------------------

_PARAM_NAME = re.compile(r"\s*([^\s=;\"]+)\s*=\s*")
# "name*" (encoded), "name*0" (continued) or "name*0*" (both), RFC 2231.
_SECTION = re.compile(r"^(?P<name>[^*]+)(?:\*(?P<index>\d+))?(?P<star>\*)?$")


def split_value_and_params(value: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """Split "main; a=1; b=\"two\"" into the main value and its raw parameters.

    Each parameter is (lowercased name, value, was_quoted). Quoted values
    are unquoted but only "\\\"" and "\\\\" are unescaped, because old
    Windows mailers put bare backslashes of file paths into quoted names.
    """
    main, _, rest = value.partition(";")
    params: list[tuple[str, str, bool]] = []
    position = 0

    while position < len(rest):
        match = _PARAM_NAME.match(rest, position)
        if match is None:
            # Junk between parameters, e.g. a stray word: skip to the next ";".
            next_semicolon = rest.find(";", position)
            position = len(rest) if next_semicolon < 0 else next_semicolon + 1
            continue

        name = match.group(1).lower()
        param_value, quoted, position = _read_param_value(rest, match.end())
        params.append((name, param_value, quoted))

    return main.strip(), params


def _read_param_value(text: str, start: int) -> tuple[str, bool, int]:
    if start < len(text) and text[start] == '"':
        value, end = _read_quoted(text, start + 1)
        next_semicolon = text.find(";", end)
        return value, True, len(text) if next_semicolon < 0 else next_semicolon + 1

    next_semicolon = text.find(";", start)
    end = len(text) if next_semicolon < 0 else next_semicolon
    return text[start:end].strip(), False, end + 1


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    # An unterminated quote runs to the end of the header.
    return "".join(out), i


def get_param(params: list[tuple[str, str, bool]], name: str, defects: list[str], source: str) -> str | None:
    """Return a decoded parameter, preferring the RFC 2231 form.

    ``name*`` and ``name*0``/``name*0*`` continuations win over a plain
    ``name`` whatever their order in the header, because mailers send both
    and the plain one is the lossy ASCII fallback. Plain values may hold
    RFC 2047 encoded-words, even inside quotes, which is not standard but
    common.
    """
    extended = _collect_rfc2231(params, name)
    if extended:
        return _decode_rfc2231(extended, defects, source)

    for param_name, value, _quoted in params:
        if param_name == name:
            return decode_words(value, defects, source)
    return None


def _collect_rfc2231(params: list[tuple[str, str, bool]], name: str) -> list[tuple[int, str, bool]]:
    sections: dict[int, tuple[str, bool]] = {}
    for param_name, value, _quoted in params:
        match = _SECTION.match(param_name)
        if match is None or match.group("name") != name:
            continue
        if match.group("index") is None and match.group("star") is None:
            continue
        index = int(match.group("index") or 0)
        # The first occurrence of a section wins; duplicates are junk.
        sections.setdefault(index, (value, match.group("star") is not None))
    return [(index, value, encoded) for index, (value, encoded) in sorted(sections.items())]


def _decode_rfc2231(sections: list[tuple[int, str, bool]], defects: list[str], source: str) -> str:
    charset: str | None = None
    data = bytearray()

    for position, (_index, value, encoded) in enumerate(sections):
        if not encoded:
            data += value.encode("utf-8", "surrogateescape")
            continue

        if position == 0 and value.count("'") >= 2:
            # charset'language'percent-encoded-text
            charset, _language, value = value.split("'", 2)
        data += unquote_to_bytes(value)

    return decode_bytes(bytes(data), charset or None, defects, source)


# ---------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------


def parse_date(value: str, defects: list[str]) -> datetime | None:
    """Parse an RFC 5322 date; a date without a zone is taken as UTC."""
    text = value.strip()
    if not text:
        return None

    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append(f"Date header is not a valid date: {text[:60]!r}")
        return None

    if parsed.tzinfo is None:
        # "-0000" means the zone is unknown (RFC 5322 section 3.3).
        defects.append("Date header has no time zone, taken as UTC")
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed
