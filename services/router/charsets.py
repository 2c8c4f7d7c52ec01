"""Charset policy for everything the router decodes from mail.

Headers, bodies and attachment filenames all go through ``decode_bytes`` so a
label means the same thing everywhere. The policy widens legacy labels to the
superset that real mailers send: Shift_JIS mail is really CP932, and GB2312
mail is really GBK or GB18030. ISO-2022-JP is decoded by mapping JIS rows
through CP932 as Windows does. Undeclared 8-bit text is tried as UTF-8, then
CP932, then Latin-1. The header, body and bounce decoders of the router call
this module.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable

# Labels whose text is, in practice, written by Windows code pages. Mailers
# label CP932 text Shift_JIS and then use NEC row 13 (①, №, ㈱) and IBM
# extensions (髙), which Python's shift_jis codec cannot decode.
_CHARSET_ALIASES: dict[str, str] = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "s-jis": "cp932",
    "ms_kanji": "cp932",
    "csshiftjis": "cp932",
    "windows-31j": "cp932",
    "cswindows31j": "cp932",
    "ms932": "cp932",
    "cp932": "cp932",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "ksc_5601": "cp949",
    "euc-kr": "cp949",
    "windows-949": "cp949",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
}

ISO_2022_JP = "iso-2022-jp"

# Every ISO-2022-JP variant label goes through the CP932-based decoder, which
# reads the escape sequences of all of them.
_ISO_2022_JP_LABELS = frozenset(
    {
        "iso-2022-jp",
        "iso2022jp",
        "iso-2022-jp-1",
        "iso-2022-jp-2",
        "iso-2022-jp-3",
        "iso-2022-jp-2004",
        "iso-2022-jp-ext",
        "iso-2022-jp-ms",
        "csiso2022jp",
        "csiso2022jp2",
        "cp50220",
        "cp50221",
        "cp50222",
        "x-cp50220",
        "x-cp50221",
        "x-cp50222",
    }
)

_EUC_JP_LABELS = frozenset({"euc-jp", "euc_jp", "x-euc-jp", "eucjp", "cseucpkdfmtjapanese", "eucjp-ms"})

_ESC = 0x1B
_SHIFT_OUT = 0x0E
_SHIFT_IN = 0x0F

# Escape sequences that mark text as ISO-2022-JP when no charset is declared:
# ESC $ @, ESC $ B (JIS X 0208), ESC ( J, ESC ( I and ESC $ ( D.
_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")

_JIS_ESCAPE = re.compile(rb"\x1b(?:\$[@B]|\([BJI]|\$\([DOPQ])")


def normalize_charset(label: str | None) -> str | None:
    """Return the codec name that the policy uses for a MIME charset label.

    Returns None for a missing or empty label. ISO-2022-JP variants map to
    ``ISO_2022_JP``. Labels Python does not know are returned lowercased, so
    the caller's lookup fails and the fallback chain runs.
    """
    if label is None:
        return None

    name = label.strip().strip('"').strip("'").strip().lower()

    # RFC 2231 allows a language suffix on a charset: "utf-8*en".
    name = name.split("*", 1)[0]
    if not name:
        return None

    if name in _ISO_2022_JP_LABELS:
        return ISO_2022_JP
    if name in _EUC_JP_LABELS:
        return "euc-jp"
    return _CHARSET_ALIASES.get(name, name)


def has_jis_escapes(data: bytes) -> bool:
    """Tell whether the bytes contain ISO-2022-JP escape sequences."""
    return _JIS_ESCAPE.search(data) is not None


def decode_bytes(data: bytes, charset: str | None, defects: list[str], source: str) -> str:
    """Decode bytes by the charset policy; never raises.

    ``charset`` is the declared label (or None). ``source`` names the decoded
    thing in defect messages, e.g. "body" or "Subject header". Repairs and
    guesses are appended to ``defects``.
    """
    codec = normalize_charset(charset)

    if codec is None:
        text = _decode_undeclared(data, defects, source)
    elif codec == ISO_2022_JP:
        text = _decode_declared_iso2022jp(data, defects, source)
    elif codec == "euc-jp":
        text = _decode_euc_jp(data, defects, source)
    else:
        text = _decode_declared(data, codec, defects, source)

    return drop_nul(text, defects, source)


def drop_nul(text: str, defects: list[str], source: str) -> str:
    """Remove NUL characters, which PostgreSQL text columns reject."""
    if "\x00" not in text:
        return text
    defects.append(f"{source}: NUL characters removed")
    return text.replace("\x00", "")


def guess_8bit(data: bytes) -> tuple[str, str]:
    """Decode text of unknown charset and return it with the codec used.

    The order is UTF-8, then CP932, then Latin-1, which never fails.
    """
    if data.isascii():
        return data.decode("ascii"), "ascii"

    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass

    # Latin-1 letters such as ö (F6) fall into CP932's user-defined area,
    # which real Japanese text does not use, so such a result is rejected.
    try:
        text = data.decode("cp932")
        if not _PRIVATE_USE.search(text):
            return text, "cp932"
    except UnicodeDecodeError:
        pass

    return data.decode("latin-1"), "latin-1"


def _is_text_codec(codec: str) -> bool:
    # Python also registers bytes-to-bytes codecs such as "base64" and
    # "zlib"; a charset parameter naming one of them is unknown, not valid.
    try:
        return codecs.lookup(codec)._is_text_encoding
    except (LookupError, ValueError):
        return False


def _decode_undeclared(data: bytes, defects: list[str], source: str) -> str:
    if data.isascii():
        # Outlook sends ISO-2022-JP bodies with a bare "text/plain" and no
        # charset parameter; the escape sequences give it away.
        if has_jis_escapes(data):
            return decode_iso2022jp(data, defects, source)
        return data.decode("ascii")

    text, codec = guess_8bit(data)
    defects.append(f"{source}: no charset declared for 8-bit text, decoded as {codec}")
    return text


def _decode_declared(data: bytes, codec: str, defects: list[str], source: str) -> str:
    if not _is_text_codec(codec):
        text, guessed = guess_8bit(data)
        if not data.isascii():
            defects.append(f"{source}: unknown charset {codec!r}, decoded as {guessed}")
        return text

    # 7-bit text under an 8-bit label is usually ISO-2022-JP from a mailer
    # that wrote the wrong label; ASCII itself decodes the same either way.
    if data.isascii() and has_jis_escapes(data) and not codec.startswith("utf-7"):
        defects.append(f"{source}: labelled {codec} but contains ISO-2022-JP escapes")
        return decode_iso2022jp(data, defects, source)

    try:
        return data.decode(codec)
    except UnicodeError:
        # UnicodeError, not only UnicodeDecodeError: codecs such as idna
        # raise the base class.
        pass

    text, guessed = guess_8bit(data)
    defects.append(f"{source}: text is not valid {codec}, decoded as {guessed}")
    return text


def _decode_declared_iso2022jp(data: bytes, defects: list[str], source: str) -> str:
    # Some mailers label Shift_JIS or UTF-8 text as ISO-2022-JP. Real
    # ISO-2022-JP is 7-bit, so 8-bit data without any escape is mislabelled.
    if not data.isascii() and not has_jis_escapes(data):
        text, guessed = guess_8bit(data)
        defects.append(f"{source}: labelled iso-2022-jp but contains 8-bit text, decoded as {guessed}")
        return text
    return decode_iso2022jp(data, defects, source)


def _decode_euc_jp(data: bytes, defects: list[str], source: str) -> str:
    try:
        return data.decode("euc_jp")
    except UnicodeDecodeError:
        pass

    # Python's euc_jp lacks the NEC and IBM rows that Windows mailers emit
    # as eucJP-ms; those bytes are JIS rows with the high bit set.
    return _decode_eucjp_via_cp932(data, defects, source)


def _decode_eucjp_via_cp932(data: bytes, defects: list[str], source: str) -> str:
    out: list[str] = []
    bad = False
    i = 0
    while i < len(data):
        byte = data[i]
        if byte < 0x80:
            out.append(chr(byte))
            i += 1
        elif byte == 0x8E and i + 1 < len(data):
            out.append(_decode_jis_kana(data[i + 1] & 0x7F))
            i += 2
        elif byte == 0x8F and i + 2 < len(data):
            char = _decode_jis0212(data[i + 1] & 0x7F, data[i + 2] & 0x7F)
            bad = bad or char == "\ufffd"
            out.append(char)
            i += 3
        elif i + 1 < len(data):
            char = _decode_jis0208(byte & 0x7F, data[i + 1] & 0x7F)
            bad = bad or char == "\ufffd"
            out.append(char)
            i += 2
        else:
            out.append("\ufffd")
            bad = True
            i += 1

    if bad:
        defects.append(f"{source}: invalid euc-jp bytes replaced")
    return "".join(out)


# ---------------------------------------------------------------------------
# ISO-2022-JP through CP932
#
# Python's iso2022_jp codecs follow the JIS standard and reject the NEC row 13
# and IBM extension cells that Windows (CP50220/CP50221) and most Japanese
# mailers use. Converting each JIS X 0208 cell to its Shift_JIS bytes and
# decoding those as CP932 gives the characters Windows would show.
# ---------------------------------------------------------------------------


def _jis_to_sjis(row: int, cell: int) -> bytes:
    """Convert a JIS X 0208 code (both bytes 0x21-0x7E) to Shift_JIS bytes."""
    if row & 1:
        trail = cell + 0x1F
        if trail >= 0x7F:
            trail += 1
    else:
        trail = cell + 0x7E
    lead = ((row + 1) >> 1) + 0x70
    if lead >= 0xA0:
        lead += 0x40
    return bytes((lead, trail))


def _decode_jis0208(row: int, cell: int) -> str:
    if not (0x21 <= row <= 0x7E and 0x21 <= cell <= 0x7E):
        return "\ufffd"
    try:
        return _jis_to_sjis(row, cell).decode("cp932")
    except UnicodeDecodeError:
        return "\ufffd"


def _decode_with(codec: str, prefix: bytes) -> Callable[[int, int], str]:
    def decode_pair(row: int, cell: int) -> str:
        try:
            return (prefix + bytes((row | 0x80, cell | 0x80))).decode(codec)
        except UnicodeDecodeError:
            return "\ufffd"

    return decode_pair


_decode_jis0212 = _decode_with("euc_jp", b"\x8f")


def _decode_jis_kana(byte: int) -> str:
    # JIS X 0201 katakana 0x21-0x5F are the halfwidth forms U+FF61-U+FF9F.
    if 0x21 <= byte <= 0x5F:
        return chr(0xFF61 + byte - 0x21)
    return "\ufffd"


# Two-byte sets reachable by escape sequences, keyed by the bytes after ESC.
_DOUBLE_BYTE_SETS: dict[bytes, Callable[[int, int], str]] = {
    b"$@": _decode_jis0208,
    b"$B": _decode_jis0208,
    b"$(D": _decode_jis0212,
    b"$(O": _decode_with("euc_jis_2004", b""),
    b"$(Q": _decode_with("euc_jis_2004", b""),
    b"$(P": _decode_with("euc_jis_2004", b"\x8f"),
    b"$A": _decode_with("gb2312", b""),
    b"$(C": _decode_with("euc_kr", b""),
}

_ASCII_SETS = frozenset({b"(B", b"(J", b"(H"})
_KANA_SET = b"(I"

# ESC & @ announces the 1990 revision before ESC $ B and changes nothing.
_NO_OP_ESCAPES = frozenset({b"&@"})

_ESCAPE_BODY = re.compile(rb"\$\([@-~]|\$[@-~]|\([@-~]|&@|\.[@-~]|N")


class _Iso2022JpState:
    """Current character set while walking ISO-2022-JP bytes."""

    def __init__(self) -> None:
        self.double: Callable[[int, int], str] | None = None
        self.kana = False
        self.shifted_kana = False
        self.bad = False


def decode_iso2022jp(data: bytes, defects: list[str], source: str) -> str:
    """Decode ISO-2022-JP (any variant) with JIS X 0208 read through CP932.

    Handles JIS X 0208/0212/0213, halfwidth katakana by escape or SO/SI, and
    the GB2312/KS C 5601 sets of ISO-2022-JP-2. Undecodable bytes become
    U+FFFD with one defect.
    """
    state = _Iso2022JpState()
    out: list[str] = []
    i = 0

    while i < len(data):
        byte = data[i]

        if byte == _ESC:
            i = _apply_escape(data, i, state)
            continue

        i = _decode_one(data, i, state, out)

    if state.bad:
        defects.append(f"{source}: invalid iso-2022-jp bytes replaced")
    return "".join(out)


def _apply_escape(data: bytes, i: int, state: _Iso2022JpState) -> int:
    match = _ESCAPE_BODY.match(data, i + 1)
    if match is None:
        # A lone ESC: keep going in the current set without it.
        state.bad = True
        return i + 1

    sequence = match.group()
    if sequence in _ASCII_SETS:
        state.double, state.kana = None, False
    elif sequence == _KANA_SET:
        state.double, state.kana = None, True
    elif sequence in _DOUBLE_BYTE_SETS:
        state.double, state.kana = _DOUBLE_BYTE_SETS[sequence], False
    elif sequence not in _NO_OP_ESCAPES:
        # G2 designations and single shifts of ISO-2022-JP-2 (accented
        # Latin and Greek) are rare in mail, so they are dropped.
        state.bad = True
    return match.end()


def _decode_one(data: bytes, i: int, state: _Iso2022JpState, out: list[str]) -> int:
    byte = data[i]

    if byte in (0x0A, 0x0D):
        # RFC 1468 requires each line to end in ASCII; mailers that forget
        # the ESC ( B before a line break still mean it.
        state.double, state.kana, state.shifted_kana = None, False, False
        out.append(chr(byte))
        return i + 1

    if byte == _SHIFT_OUT:
        state.shifted_kana = True
        return i + 1
    if byte == _SHIFT_IN:
        state.shifted_kana = False
        return i + 1

    if byte >= 0x80:
        return _decode_8bit_byte(byte, i, state, out)

    if byte < 0x21 or byte == 0x7F:
        out.append(chr(byte))
        return i + 1

    if state.kana or state.shifted_kana:
        out.append(_decode_jis_kana(byte))
        return i + 1

    if state.double is None:
        out.append(chr(byte))
        return i + 1

    return _decode_pair(data, i, state.double, state, out)


def _decode_8bit_byte(byte: int, i: int, state: _Iso2022JpState, out: list[str]) -> int:
    # CP50222-style "8-bit kana": halfwidth katakana sent as raw
    # Shift_JIS single bytes inside otherwise 7-bit text.
    if 0xA1 <= byte <= 0xDF:
        out.append(chr(0xFF61 + byte - 0xA1))
    else:
        out.append("\ufffd")
        state.bad = True
    return i + 1


def _decode_pair(
    data: bytes,
    i: int,
    decode_pair: Callable[[int, int], str],
    state: _Iso2022JpState,
    out: list[str],
) -> int:
    if i + 1 >= len(data) or not 0x21 <= data[i + 1] <= 0x7E:
        out.append("\ufffd")
        state.bad = True
        return i + 1

    char = decode_pair(data[i], data[i + 1])
    if char == "\ufffd":
        state.bad = True
    out.append(char)
    return i + 2
