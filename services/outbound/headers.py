"""Header field encoding for outbound mail: RFC 2047 encoded words and folding.

compose.build_mail calls these functions to write subjects, display names,
addresses and message ids as 7-bit header lines. Every line they return is at
most 76 characters, the limit RFC 2047 sets for lines with encoded words, and
every encoded word is at most 75 characters. The exceptions are an address, a
message id or an ASCII word of an extra header that is longer than a line by
itself, because none of them may be split.

Only the words that need it are encoded, so "Re: 返信 [#123]" keeps "Re:" and
"[#123]" readable in the raw mail and to filters that match on them.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_LINE_LENGTH = 76
MAX_ENCODED_WORD_LENGTH = 75

# "=?UTF-8?B?" and "?=" around the encoded text.
_ENCODED_WORD_OVERHEAD = 12

# The characters str.splitlines() treats as line ends, and NUL, which C
# string functions treat as the end of the text.
LINE_BREAK_CHARACTERS = frozenset("\r\n\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")

# RFC 5322 atext: the characters a display-name word may use unquoted.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)

# RFC 2047 section 5 (3): the characters that may stay literal in a Q-encoded
# word anywhere, including in a display name.
_Q_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")


_SPACE_RUN = re.compile(r"\s*[ \t]\s*")


class HeaderInjectionError(ValueError):
    """A header value contains a line break or NUL that could start a new header."""


def check_header_text(field: str, value: str) -> None:
    """Raise unless ``value`` can be written into a header field.

    HeaderInjectionError is raised for a line break or NUL, ValueError for a
    lone surrogate, which has no UTF-8 form. Lone surrogates are what
    ``errors="surrogateescape"`` leaves of undecoded 8-bit header bytes.
    """
    for character in value:
        if character in LINE_BREAK_CHARACTERS:
            raise HeaderInjectionError(
                f"invalid {field} {value!r}: contains U+{ord(character):04X}, "
                "a line break or NUL, which could start a new header"
            )
        if 0xD800 <= ord(character) <= 0xDFFF:
            raise ValueError(
                f"invalid {field} {value!r}: contains the lone surrogate U+{ord(character):04X}. "
                "Decode the original bytes to text first"
            )


@dataclass(frozen=True)
class _Segment:
    """A piece of a header value: one literal word, or text to encode."""

    text: str
    encode: bool


class _Folder:
    """Builder of one header field that folds between atoms at MAX_LINE_LENGTH."""

    def __init__(self, name: str) -> None:
        self._lines = [f"{name}:"]
        self._first_line_empty = True

    @property
    def room(self) -> int:
        """Characters left on the current line after the separating space."""
        return MAX_LINE_LENGTH - len(self._lines[-1]) - 1

    @property
    def next_atom_room(self) -> int:
        """Maximum length of the next atom, which may fold unless it is the first."""
        return self.room if self._first_line_empty else MAX_LINE_LENGTH - 1

    def add_atom(self, atom: str) -> None:
        """Append a word that must not be split, folding before it if needed."""
        if len(atom) > self.room and not self._first_line_empty:
            self._lines.append("")
        self._lines[-1] += " " + atom
        self._first_line_empty = False

    def add_encoded(self, text: str, *, keep_whole: bool) -> None:
        """Append ``text`` as encoded words that fit the lines.

        With ``keep_whole`` the folder moves to a new line rather than split
        text that fits one encoded word there. Display names need this because
        CPython's parser (3.11) inserts a space between the encoded words of a
        display name, where RFC 2047 and mail clients insert none.
        """
        encoding = _choose_encoding(text)
        while text:
            limit = min(MAX_ENCODED_WORD_LENGTH, self.room)
            count = _fitting_prefix_length(text, encoding, limit)
            whole_fits_alone = _encoded_length(text, encoding) <= MAX_ENCODED_WORD_LENGTH
            must_fold = count == 0 or (keep_whole and count < len(text) and whole_fits_alone)
            if must_fold and not self._first_line_empty:
                self._lines.append("")
                continue

            count = max(count, 1)
            self.add_atom(_encode_word(text[:count], encoding))
            text = text[count:]

    def render(self) -> str:
        """Return the header field with CRLF line ends, including the last."""
        return "\r\n".join(self._lines) + "\r\n"


def unstructured_header(name: str, value: str, *, encode_long_words: bool = True) -> str:
    """Return a header field for free text such as Subject.

    With ``encode_long_words`` an ASCII word longer than a line is encoded so
    that it can be split. Without it the word is written as it is, for values
    such as URLs that the reader does not decode.
    """
    check_header_text(name, value)
    folder = _Folder(name)
    first_room = folder.next_atom_room if encode_long_words else None
    _add_segments(folder, _split_segments(value, _is_plain_text_word, first_room), keep_whole=False)
    return folder.render()


def address_header(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    """Return a header field listing ``(display name, address)`` pairs.

    The caller validates the addresses, because this function only encodes names.
    """
    folder = _Folder(name)
    for index, (display_name, address) in enumerate(mailboxes):
        check_header_text(f"{name} display name", display_name)
        display_name = normalize_display_name(display_name)
        separator = "," if index < len(mailboxes) - 1 else ""
        if not display_name:
            folder.add_atom(address + separator)
            continue

        _add_segments(folder, _phrase_segments(display_name, folder.next_atom_room), keep_whole=True)
        folder.add_atom(f"<{address}>{separator}")
    return folder.render()


def normalize_display_name(display_name: str) -> str:
    """Return ``display_name`` with each whitespace run that has a space or tab made one space.

    Decoders disagree on such runs: CPython's parser (3.11) turns a run that
    starts with a space or tab inside a display name into one space, even
    when it goes on with U+00A0 or U+3000, while RFC 2047 decoders keep it.
    One space reads the same everywhere. Whitespace without a space or tab,
    such as the ideographic space in "山田　太郎", is kept.
    """
    return _SPACE_RUN.sub(" ", display_name).strip(" ")


def atoms_header(name: str, atoms: Sequence[str]) -> str:
    """Return a header field of ASCII atoms (message ids, tokens) folded between atoms."""
    folder = _Folder(name)
    for atom in atoms:
        check_header_text(name, atom)
        folder.add_atom(atom)
    return folder.render()


def _add_segments(folder: _Folder, segments: Sequence[_Segment], *, keep_whole: bool) -> None:
    for segment in segments:
        if segment.encode:
            folder.add_encoded(segment.text, keep_whole=keep_whole)
        else:
            folder.add_atom(segment.text)


def _phrase_segments(display_name: str, first_room: int) -> list[_Segment]:
    """Split a display name into atoms, one quoted-string or encoded runs.

    An ASCII name with specials such as "Acme, Inc." becomes a quoted-string,
    because spam filters score plain ASCII in an encoded word, for example
    SpamAssassin's FROM_EXCESS_BASE64 rule.
    """
    words = display_name.split(" ")
    is_regular_ascii = (
        all(0x20 <= ord(character) <= 0x7E for character in display_name)
        and "" not in words
        and "=?" not in display_name
    )
    if is_regular_ascii and not all(_is_atom(word) for word in words):
        quoted = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= first_room:
            return [_Segment(quoted, encode=False)]
    return _split_segments(display_name, _is_atom, first_room)


def _split_segments(value: str, is_plain: Callable[[str], bool], first_room: int | None) -> list[_Segment]:
    """Split ``value`` at spaces into literal words and runs of words to encode.

    Literal words and runs are joined by single spaces, which decoders keep.
    Spaces inside a run are encoded with it, so doubled, leading and trailing
    spaces survive the round trip. A literal word longer than its line
    (``first_room`` for the first word) is encoded too, unless ``first_room``
    is None.
    """
    if not value:
        return []

    words = value.split(" ")
    needs_encoding = [not is_plain(word) for word in words]
    if first_room is not None:
        for index, word in enumerate(words):
            if len(word) > (first_room if index == 0 else MAX_LINE_LENGTH - 1):
                needs_encoding[index] = True
    _widen_empty_runs(words, needs_encoding)

    segments: list[_Segment] = []
    for word, encode in zip(words, needs_encoding):
        if encode and segments and segments[-1].encode:
            segments[-1] = _Segment(segments[-1].text + " " + word, encode=True)
        else:
            segments.append(_Segment(word, encode))
    return segments


def _widen_empty_runs(words: list[str], needs_encoding: list[bool]) -> None:
    """Join a lone empty word (from a doubled space) to a neighbour.

    An empty word alone would be an empty run, which has no encoded form.
    """
    for index, word in enumerate(words):
        before = index > 0 and needs_encoding[index - 1]
        after = index + 1 < len(words) and needs_encoding[index + 1]
        if word or before or after:
            continue

        if index + 1 < len(words):
            needs_encoding[index + 1] = True
        elif index > 0:
            needs_encoding[index - 1] = True


def _is_plain_text_word(word: str) -> bool:
    # A literal "=?" could be read back as the start of an encoded word.
    return bool(word) and all(0x21 <= ord(character) <= 0x7E for character in word) and "=?" not in word


def _is_atom(word: str) -> bool:
    return bool(word) and all(character in _ATEXT for character in word) and "=?" not in word


def _q_length(character: str) -> int:
    if character in _Q_LITERAL or character == " ":
        return 1
    return 3 * len(character.encode("utf-8"))


def _choose_encoding(text: str) -> str:
    """Return "Q" when it is no longer than "B", so mostly-Latin text stays readable."""
    q_length = sum(_q_length(character) for character in text)
    b_length = 4 * math.ceil(len(text.encode("utf-8")) / 3)
    return "Q" if q_length <= b_length else "B"


def _encoded_length(text: str, encoding: str) -> int:
    if encoding == "Q":
        return _ENCODED_WORD_OVERHEAD + sum(_q_length(character) for character in text)
    return _ENCODED_WORD_OVERHEAD + 4 * math.ceil(len(text.encode("utf-8")) / 3)


def _fitting_prefix_length(text: str, encoding: str, limit: int) -> int:
    """Return how many characters of ``text`` fit in one encoded word of ``limit`` characters.

    Words end on character boundaries, because a decoder converts each word to
    text on its own and a split UTF-8 sequence would become U+FFFD.
    """
    byte_count = 0
    q_length = 0
    for index, character in enumerate(text):
        byte_count += len(character.encode("utf-8"))
        q_length += _q_length(character)
        payload = q_length if encoding == "Q" else 4 * math.ceil(byte_count / 3)
        if _ENCODED_WORD_OVERHEAD + payload > limit:
            return index
    return len(text)


def _encode_word(text: str, encoding: str) -> str:
    if encoding == "B":
        payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
        return f"=?UTF-8?B?{payload}?="

    parts = []
    for character in text:
        if character == " ":
            parts.append("_")
        elif character in _Q_LITERAL:
            parts.append(character)
        else:
            parts.append("".join(f"={byte:02X}" for byte in character.encode("utf-8")))
    return f"=?UTF-8?Q?{''.join(parts)}?="
