"""Tolerant parsers for address headers and message ids.

The stdlib's structured header parser raises on ids it does not expect (an
Exchange id with square brackets makes ``msg['Message-ID']`` raise) and keeps
raw 8-bit display names as surrogate escapes. These parsers work on header
text that ``headers.decode_raw`` has already decoded, accept what real
mailers write, and decode RFC 2047 only inside display names, after the
address structure is known. Called by ``mime.parse_mail`` and the bounce
parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.router.headers import decode_words, unfold


@dataclass(frozen=True)
class Address:
    """One mailbox from an address header."""

    name: str  # decoded display name, "" when absent
    email: str  # addr-spec as written, with the domain lowercased; "" for the null sender


_MAX_ID_LENGTH = 998
_COMMENT = re.compile(r"\([^()]*\)")
_BRACKETED_ID = re.compile(r"<([^<>]*)>")
_DISALLOWED_IN_ID = re.compile(r"[\s<>\"\\(),;\x00-\x1f\x7f]")


def normalize_email(addr_spec: str) -> str:
    """Strip an addr-spec and lowercase its domain; the local part is kept."""
    text = re.sub(r"\s+", "", addr_spec)

    # Raw bytes left surrogate-escaped by decode_raw cannot be stored.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    local, at, domain = text.rpartition("@")
    if not at:
        return text
    return f"{local}@{domain.lower()}"


# ---------------------------------------------------------------------------
# Message ids
# ---------------------------------------------------------------------------


def is_sane_id(candidate: str) -> bool:
    """Tell whether text can serve as a message id for threading.

    It needs an "@" with text on both sides and no whitespace, angle brackets,
    quotes or controls. Square brackets and dots are allowed because
    Exchange writes ids such as ``[hex-base64]@host``.
    """
    # The byte length bounds what PostgreSQL must index as a dedup key.
    if not candidate or not candidate.isprintable() or len(candidate.encode("utf-8")) > _MAX_ID_LENGTH:
        return False
    if _DISALLOWED_IN_ID.search(candidate):
        return False
    local, at, domain = candidate.rpartition("@")
    return bool(at and local and domain)


def extract_ids(value: str) -> list[str]:
    """Extract the message ids from a Message-ID, In-Reply-To or References value.

    Ids are returned without angle brackets, in header order, without
    duplicates. Free text around bracketed ids ("Your message of ...") is
    ignored. A value with no brackets at all is accepted only when it is a
    single id-like token, so an e-mail address in free text is not taken
    for an id.
    """
    text = _strip_comments(unfold(value))
    ids: list[str] = []

    for match in _BRACKETED_ID.finditer(text):
        candidate = match.group(1).strip()
        if is_sane_id(candidate) and candidate not in ids:
            ids.append(candidate)

    if ids or "<" in text:
        return ids

    bare = text.strip()
    if is_sane_id(bare):
        return [bare]
    return []


# nmh and exmh write "Message from Name <address> of Date" in
# In-Reply-To: the bracketed value after "from" is the author's address.
_FROM_PHRASE = re.compile(r"\bfrom\b[^<>]*$", re.I)


def extract_reply_ids(value: str, own_addresses: set[str]) -> list[str]:
    """Extract the ids of an In-Reply-To or References value, leaving out addresses.

    A bracketed value that follows "from ..." or that is one of the mail's
    own addresses (``own_addresses``, lowercased) names a person, not a
    message, so threading on it would join unrelated mail from that person.
    """
    text = _strip_comments(unfold(value))
    ids: list[str] = []
    position = 0

    for match in _BRACKETED_ID.finditer(text):
        preceding = text[position : match.start()]
        position = match.end()
        candidate = match.group(1).strip()
        if _FROM_PHRASE.search(preceding) or candidate.lower() in own_addresses:
            continue
        if is_sane_id(candidate) and candidate not in ids:
            ids.append(candidate)

    if "<" in text:
        return ids
    return [bare for bare in extract_ids(text) if bare.lower() not in own_addresses]


def _strip_comments(text: str) -> str:
    """Remove RFC 5322 (comments), which may nest, outside of brackets and quotes."""
    out: list[str] = []
    depth = 0
    in_brackets = False
    for char in text:
        if depth == 0 and char == "<":
            in_brackets = True
        elif depth == 0 and char == ">":
            in_brackets = False

        if not in_brackets and char == "(":
            depth += 1
        elif depth and char == ")":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


# ---------------------------------------------------------------------------
# Address lists
# ---------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One comma-separated element of an address list, split into its parts."""

    phrase: str = ""
    comments: str = ""
    angle: str | None = None
    has_at: bool = False


def parse_addresses(value: str, defects: list[str], source: str) -> list[Address]:
    """Parse an address-list header value that was decoded with ``decode_raw``.

    Accepts "Name <addr>", quoted names, "addr (Name)", bare addresses,
    groups ("team: a@x, b@y;"), Outlook's ";" separators and the null
    address "<>". Elements that hold no address are dropped.
    """
    chunks = _merge_split_names(_split_chunks(unfold(value)))
    addresses: list[Address] = []

    for chunk in chunks:
        addresses.extend(_chunk_to_addresses(chunk, defects, source))
    return addresses


def parse_address(value: str, defects: list[str], source: str) -> Address | None:
    """Parse a single-address header such as From or Sender; None when empty."""
    addresses = parse_addresses(value, defects, source)
    if len(addresses) > 1:
        defects.append(f"{source}: {len(addresses)} addresses where one was expected, the first is used")
    return addresses[0] if addresses else None


def _split_chunks(text: str) -> list[_Chunk]:
    chunks: list[_Chunk] = []
    current = _Chunk()
    i = 0

    while i < len(text):
        char = text[i]
        if char in '"<' or not (char.isspace() or char in ",;("):
            # Anything but a comment after "<addr>" starts the next mailbox,
            # because mailers forget the comma between mailboxes.
            current = _start_next_if_closed(chunks, current)

        if char == '"':
            quoted, i = _read_until_quote(text, i + 1)
            current.phrase += quoted
            continue
        if char == "(":
            comment, i = _read_comment(text, i + 1)
            current.comments = f"{current.comments} {comment}".strip()
            continue
        if char == "<":
            end = text.find(">", i + 1)
            end = len(text) if end < 0 else end
            current.angle = text[i + 1 : end]
            i = end + 1
            continue

        if char in ",;":
            chunks.append(current)
            current = _Chunk()
        elif char == ":" and current.angle is None and "@" not in current.phrase:
            # A group name ("undisclosed-recipients:") is not a mailbox.
            current = _Chunk()
        else:
            current.phrase += char
            current.has_at = current.has_at or char == "@"
        i += 1

    chunks.append(current)
    return chunks


def _start_next_if_closed(chunks: list[_Chunk], current: _Chunk) -> _Chunk:
    if current.angle is None:
        return current
    chunks.append(current)
    return _Chunk()


def _merge_split_names(chunks: list[_Chunk]) -> list[_Chunk]:
    """Rejoin display names that contain an unquoted comma: Doe, Jane <jane@x>."""
    merged: list[_Chunk] = []
    for chunk in chunks:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and previous.angle is None
            and not previous.has_at
            and previous.phrase.strip()
            and chunk.angle is not None
        ):
            chunk.phrase = f"{previous.phrase.strip()}, {chunk.phrase.strip()}"
            merged[-1] = chunk
        else:
            merged.append(chunk)
    return merged


def _read_until_quote(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif text[i] == '"':
            return "".join(out), i + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i


def _read_comment(text: str, start: int) -> tuple[str, int]:
    depth = 1
    out: list[str] = []
    i = start
    while i < len(text) and depth:
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return "".join(out), i + 1
        out.append(char)
        i += 1
    return "".join(out), i


def _chunk_to_addresses(chunk: _Chunk, defects: list[str], source: str) -> list[Address]:
    if chunk.angle is not None:
        email = normalize_email(_strip_route(_COMMENT.sub("", chunk.angle)))
        name = _clean_name(chunk.phrase, defects, source) or _clean_name(chunk.comments, defects, source)
        return [Address(name=name, email=email)]

    phrase = chunk.phrase.strip()
    if not phrase:
        return []
    if not chunk.has_at:
        defects.append(f"{source}: no address in {phrase[:60]!r}")
        return []

    comment_name = _clean_name(chunk.comments, defects, source)
    words = phrase.split()
    addr_specs = [word for word in words if _is_whole_addr_spec(word)]

    # "john @ example.org" is obsolete but valid syntax for one address.
    if not addr_specs:
        return [Address(name=comment_name, email=normalize_email(phrase))]

    # Without angle brackets, the words around an address are its name
    # ("Jane Doe jane@example.org"), and several addresses separated only by
    # spaces are several mailboxes.
    if len(addr_specs) > 1:
        return [Address(name="", email=normalize_email(spec)) for spec in addr_specs]

    other_words = " ".join(word for word in words if word not in addr_specs)
    name = comment_name or _clean_name(other_words, defects, source)
    return [Address(name=name, email=normalize_email(addr_specs[0]))]


def _is_whole_addr_spec(word: str) -> bool:
    local, at, domain = word.rpartition("@")
    return bool(at and local and domain)


def _strip_route(angle: str) -> str:
    """Drop an obsolete source route: <@relay.example:user@example.org>."""
    text = angle.strip()
    if text.startswith("@") and ":" in text:
        return text.split(":", 1)[1]
    return text


def _clean_name(phrase: str, defects: list[str], source: str) -> str:
    # The splitter has already removed the quotes, so encoded-words inside
    # quoted names get decoded too: RFC 2047 forbids them there, but
    # mailers write them.
    text = re.sub(r"\s+", " ", phrase).strip()
    text = decode_words(text, defects, source).strip()

    # Outlook wraps names in single quotes: 'Jane Doe' <jane@example.org>.
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1].strip()
    return text
