"""Build outbound mail as RFC 5322 bytes, ready for SMTP and IMAP APPEND.

The outbound service calls build_mail for every mail it sends: agent replies,
greetings, out-of-hours notes and CSAT surveys. The module does no IO, so the
rules for the sender name, threading headers, loop-protection headers and the
header and body encodings are tested without servers.

Output is 7-bit: non-ASCII header text becomes RFC 2047 encoded words
(see headers.py) and bodies are UTF-8 in 7bit, quoted-printable or base64,
so no server needs the SMTPUTF8 or 8BITMIME extensions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from services.outbound import headers
from services.outbound.headers import HeaderInjectionError, check_header_text
from services.outbound.texts import friendly_sender_name, text_to_html

__all__ = [
    "HeaderInjectionError",
    "Sender",
    "build_mail",
    "make_message_id",
    "reply_subject",
    "validate_address",
]

logger = logging.getLogger(__name__)

SENDER_NAME_STYLES = frozenset({"friendly", "professional"})
AUTO_SUBMITTED_VALUES = frozenset({"auto-replied", "auto-generated"})
DEFAULT_MAX_REFERENCES = 20

# Headers that build_mail writes itself, so extra_headers may not repeat them.
# Bcc is listed because a Bcc header in the sent bytes would reveal the
# hidden recipients to everyone.
_RESERVED_HEADERS = frozenset({
    "auto-submitted", "bcc", "cc", "content-transfer-encoding", "content-type",
    "date", "from", "in-reply-to", "message-id", "mime-version", "precedence",
    "references", "reply-to", "return-path", "sender", "subject", "to",
    "x-auto-response-suppress",
})

# Printable ASCII without ":" (RFC 5322 ftext), capped so that the first
# line keeps room for an encoded word.
_FIELD_NAME = re.compile(r"[!-9;-~]{1,40}")

_LOCAL_PART_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~."
)
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Sender:
    """The inbox a mail is sent from, and the name shown to the customer.

    ``sender_name_style`` "friendly" shows the agent ("Jane from Acme"), and
    "professional" shows the business ("Acme"). Automatic mail has no agent,
    so its friendly name is the inbox name. ``locale`` picks the wording of the
    friendly name, for example "Acme 佐藤" in Japanese.
    """

    inbox_name: str
    inbox_email: str
    business_name: str
    sender_name_style: str
    agent_name: str | None
    locale: str = "en"

    def __post_init__(self) -> None:
        check_header_text("sender inbox_name", self.inbox_name)
        check_header_text("sender business_name", self.business_name)
        if self.agent_name is not None:
            check_header_text("sender agent_name", self.agent_name)
        validate_address("sender inbox_email", self.inbox_email)

        if self.sender_name_style not in SENDER_NAME_STYLES:
            raise ValueError(
                f"invalid sender_name_style {self.sender_name_style!r}: "
                "expected 'friendly' or 'professional'"
            )

    @property
    def display_name(self) -> str:
        """The display name of the From header, possibly empty."""
        organisation = self.business_name or self.inbox_name
        if self.sender_name_style == "professional":
            return organisation
        if self.agent_name:
            return friendly_sender_name(self.agent_name, organisation, self.locale)
        return self.inbox_name or self.business_name


def validate_address(field: str, address: str) -> str:
    """Return ``address`` unchanged if it can be written into a header, else raise.

    HeaderInjectionError is raised for line breaks and NUL, ValueError naming
    ``field`` for anything else. Addresses must be ASCII: an internationalised
    domain is accepted in its A-label form (xn--...), and a non-ASCII local
    part would need SMTPUTF8, which outbound mail does not use.
    """
    check_header_text(field, address)
    if any(character.isspace() for character in address):
        raise ValueError(f"invalid {field} {address!r}: contains whitespace")
    if address.count("@") != 1:
        raise ValueError(f"invalid {field} {address!r}: expected exactly one '@'")
    if not address.isascii():
        raise ValueError(
            f"invalid {field} {address!r}: contains non-ASCII characters. "
            "Write the domain in its xn-- form"
        )

    local_part, domain = address.split("@")

    # Dots are not checked: Japanese mobile carriers issued addresses such as
    # "taro..yamada.@docomo.ne.jp", which break RFC 5322 but receive mail.
    if not local_part or len(local_part) > 64:
        raise ValueError(f"invalid {field} {address!r}: the local part must have 1 to 64 characters")
    if not set(local_part) <= _LOCAL_PART_CHARACTERS:
        raise ValueError(f"invalid {field} {address!r}: the local part contains a special character")

    _validate_domain(field, address, domain)
    return address


def _validate_domain(field: str, value: str, domain: str) -> None:
    labels = domain.split(".")
    if len(domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"invalid {field} {value!r}: the domain must be dot-separated labels "
            "of letters, digits and inner hyphens"
        )


def make_message_id(domain: str) -> str:
    """Return a new Message-ID for ``domain``, without angle brackets.

    The form is "<26 base32 characters>.<Unix time in ms>@domain". The random
    part has 128 bits, so two processes create the same id with negligible
    probability, and the id carries no customer, conversation or inbox data.
    """
    check_header_text("domain", domain)
    _validate_domain("domain", domain, domain)

    random_part = base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()
    return f"{random_part}.{time.time_ns() // 1_000_000}@{domain.lower()}"


# Reply prefixes that mail clients write, compared after NFKC normalisation
# and case folding, so "ＲＥ：" matches as "re:". Forward prefixes (Fwd, FW,
# WG, TR, RV) are not in the list: the reply keeps them. Finnish "VS" is left
# out because Norwegian clients write "VS" for a forward.
_REPLY_WORDS = frozenset({
    "re",    # English and most clients
    "aw",    # German, "Antwort"
    "sv",    # Danish, Norwegian, Swedish, "Svar"
    "antw",  # Dutch, "Antwoord"
    "odp",   # Polish, "Odpowiedź"
    "ynt",   # Turkish, "Yanıt"
    "res",   # Brazilian Portuguese Outlook, "Resposta"
    "rif",   # Italian, "Riferimento"
    "atb",   # Latvian, "Atbilde"
    "vá",    # Hungarian, "Válasz"
    "απ",    # Greek, "Απάντηση"
    "σχετ",  # Greek, "Σχετικά"
    "השב",   # Hebrew
    "返信",  # Japanese
    "回复",  # Chinese (simplified)
    "回覆",  # Chinese (traditional)
    "答复",  # Chinese (simplified)
    "답장",  # Korean
    "회신",  # Korean
})

# One prefix word, an optional counter such as "[2]" or "(3)" that some
# clients add, and a colon, which may be the full-width "：" of CJK input.
_LEADING_PREFIX = re.compile(r"\s*(?P<word>[^\s:：\[\]()]{1,8})\s*(?:[\[(]\d{1,4}[\])])?\s*[:：]")

# A bracketed tag such as "[#12345]" or "[Ticket#2024031510000012]".
_LEADING_TAG = re.compile(r"\s*\[[^\[\]]*\]")


def reply_subject(subject: str, *, fallback: str = "") -> str:
    """Return the subject of a reply to ``subject``, with exactly one "Re: " prefix.

    Leading reply prefixes are removed in any of the languages in
    _REPLY_WORDS. Bracketed tags between them, which ticket systems match on,
    are kept whole and in their order: "Re: RE: Aw: 返信: [#123] Order"
    becomes "Re: [#123] Order". When nothing but prefixes is left, the reply
    gets "Re: " + ``fallback``, or "Re:" alone when ``fallback`` is empty.
    """
    kept_tags: list[str] = []
    rest = subject
    while True:
        prefix = _LEADING_PREFIX.match(rest)
        if prefix and _is_reply_word(prefix["word"]):
            rest = rest[prefix.end():]
            continue

        tag = _LEADING_TAG.match(rest)
        if tag:
            kept_tags.append(tag.group())
            rest = rest[tag.end():]
            continue
        break

    topic = ("".join(kept_tags) + rest).strip() or fallback.strip()
    return f"Re: {topic}" if topic else "Re:"


def _is_reply_word(word: str) -> bool:
    return unicodedata.normalize("NFKC", word).casefold() in _REPLY_WORDS


def build_mail(
    *,
    sender: Sender,
    to: Sequence[tuple[str | None, str]],
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    in_reply_to: str | None,
    references: Sequence[str],
    reply_to: str | None,
    automatic: bool,
    date: datetime | None = None,
    extra_headers: Mapping[str, str] | None = None,
    cc: Sequence[tuple[str | None, str]] = (),
    auto_submitted: str = "auto-replied",
    max_references: int = DEFAULT_MAX_REFERENCES,
) -> bytes:
    """Return a complete mail as bytes with CRLF line ends.

    ``to`` and ``cc`` list ``(display name, address)`` pairs, where the name
    may be empty or None. The body is multipart/alternative with ``text`` and
    ``html``, and ``html`` is made from ``text`` when it is None. An ``html``
    without "<html" or "<!DOCTYPE" at its start is wrapped in a document.

    Message ids may be given with or without angle brackets. References keep
    their order, get ``in_reply_to`` appended when missing, and are capped at
    ``max_references`` by keeping the first (the thread root) and the newest.

    ``automatic`` marks greetings, out-of-hours notes and surveys so that
    autoresponders do not reply to them. Use ``auto_submitted="auto-generated"``
    for automatic mail that does not answer a received mail, such as a survey.

    Raises HeaderInjectionError for a line break or NUL in any header value,
    and ValueError naming the field for any other invalid input.
    """
    date = _checked_date(date)
    message_id = _normalize_message_id("message_id", message_id)
    parent_id = _normalize_message_id("in_reply_to", in_reply_to) if in_reply_to else None
    thread_ids = _thread_references(message_id, parent_id, references, max_references)
    _check_automatic(automatic, auto_submitted)

    fields = [
        f"Date: {format_datetime(date)}\r\n",
        headers.address_header("From", [(sender.display_name, sender.inbox_email)]),
        headers.address_header("To", _checked_mailboxes("to", to, required=True)),
    ]
    if cc:
        fields.append(headers.address_header("Cc", _checked_mailboxes("cc", cc, required=False)))
    if reply_to:
        reply_address = validate_address("reply_to", reply_to)
        fields.append(headers.address_header("Reply-To", [(sender.display_name, reply_address)]))
    fields.append(headers.unstructured_header("Subject", subject))
    fields.append(headers.atoms_header("Message-ID", [f"<{message_id}>"]))

    if parent_id:
        fields.append(headers.atoms_header("In-Reply-To", [f"<{parent_id}>"]))
    if thread_ids:
        fields.append(headers.atoms_header("References", [f"<{id_}>" for id_ in thread_ids]))
    if automatic:
        fields.extend(_automatic_fields(auto_submitted))
    fields.extend(_extra_fields(extra_headers or {}))

    content_type, body = _alternative_body(text, html, boundary_seed=message_id)
    fields.append("MIME-Version: 1.0\r\n")
    fields.append(content_type)
    return ("".join(fields) + "\r\n").encode("ascii") + body


def _checked_date(date: datetime | None) -> datetime:
    if date is None:
        return datetime.now(timezone.utc)
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError(f"invalid date {date!r}: expected a timezone-aware datetime")
    return date


def _check_automatic(automatic: bool, auto_submitted: str) -> None:
    if automatic and auto_submitted not in AUTO_SUBMITTED_VALUES:
        raise ValueError(
            f"invalid auto_submitted {auto_submitted!r}: expected 'auto-replied' or 'auto-generated'"
        )


def _checked_mailboxes(
    field: str, mailboxes: Sequence[tuple[str | None, str]], *, required: bool
) -> list[tuple[str, str]]:
    if required and not mailboxes:
        raise ValueError(f"missing {field}: expected at least one recipient")

    checked = []
    for index, (display_name, address) in enumerate(mailboxes):
        display_name = display_name or ""
        check_header_text(f"{field}[{index}] name", display_name)
        checked.append((display_name, validate_address(f"{field}[{index}] address", address)))
    return checked


def _normalize_message_id(field: str, value: str) -> str:
    """Return the id inside its angle brackets, or raise if it cannot go into a header."""
    check_header_text(field, value)
    inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not inner or not all(0x21 <= ord(character) <= 0x7E and character not in "<>" for character in inner):
        raise ValueError(
            f"invalid {field} {value!r}: expected printable ASCII without spaces or angle brackets"
        )
    return inner


def _thread_references(
    message_id: str, parent_id: str | None, references: Sequence[str], max_references: int
) -> list[str]:
    """Return the References ids: the given ones in order, then the parent, capped.

    The ids come from customers' mail, so an id that cannot go into a header
    is left out with a warning rather than failing the reply. Line breaks
    still raise, because they mean the caller passed unchecked input.
    """
    if max_references < 2:
        raise ValueError(f"invalid max_references {max_references!r}: expected at least 2")

    thread_ids: list[str] = []
    for index, value in enumerate(references):
        check_header_text(f"references[{index}]", value)
        try:
            thread_id = _normalize_message_id(f"references[{index}]", value)
        except ValueError as error:
            logger.warning("message <%s>: left out of References: %s", message_id, error)
            continue
        if thread_id not in thread_ids and thread_id != message_id:
            thread_ids.append(thread_id)

    if parent_id and parent_id not in thread_ids:
        thread_ids.append(parent_id)

    # Keep the root, which threads the whole conversation in clients that
    # see only part of it, and the newest ids, which name the direct parents.
    if len(thread_ids) > max_references:
        thread_ids = [thread_ids[0], *thread_ids[-(max_references - 1):]]
    return thread_ids


def _automatic_fields(auto_submitted: str) -> list[str]:
    """Return the header fields that keep autoresponders from replying.

    Auto-Submitted is defined by RFC 3834, and Sieve vacation responders
    (RFC 5230) do not reply to it. Exchange reads X-Auto-Response-Suppress.
    Precedence: bulk is for older vacation programs that read only that.
    """
    return [
        f"Auto-Submitted: {auto_submitted}\r\n",
        "X-Auto-Response-Suppress: All\r\n",
        "Precedence: bulk\r\n",
    ]


def _extra_fields(extra_headers: Mapping[str, str]) -> list[str]:
    """Return the caller's extra header fields, written as unstructured text.

    ASCII words are written as they are, so a long URL in List-Unsubscribe
    stays intact even where it makes a line longer than 76 characters.
    """
    fields = []
    for name, value in extra_headers.items():
        check_header_text("extra header name", name)
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(
                f"invalid extra header name {name!r}: expected 1 to 40 printable ASCII characters without ':'"
            )
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"invalid extra header name {name!r}: build_mail writes this header itself")
        fields.append(headers.unstructured_header(name, value, encode_long_words=False))
    return fields


def _alternative_body(text: str, html: str | None, *, boundary_seed: str) -> tuple[str, bytes]:
    """Return the multipart Content-Type header field and the encoded body.

    The boundary is derived from ``boundary_seed`` (the Message-ID), so the
    same input always gives the same bytes.
    """
    html_text = _html_document(text_to_html(text) if html is None else html)
    parts = [_text_part("plain", text), _text_part("html", html_text)]
    boundary = _boundary(boundary_seed, parts)

    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary + b"--\r\n"
    content_type = f'Content-Type: multipart/alternative;\r\n boundary="{boundary.decode("ascii")}"\r\n'
    return content_type, body


def _boundary(seed: str, parts: Sequence[bytes]) -> bytes:
    # "=_" never occurs in quoted-printable or base64 output. A clash with
    # 7bit text is unlikely, and the loop rules it out.
    for attempt in itertools.count():
        digest = hashlib.sha256(f"{seed}/{attempt}".encode("ascii")).hexdigest()[:32]
        boundary = f"=_{digest}".encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary
    raise AssertionError("unreachable")


def _html_document(html: str) -> str:
    if html.lstrip()[:14].lower().startswith(("<!doctype", "<html")):
        return html
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n</head>\n'
        f"<body>\n{html}\n</body>\n</html>\n"
    )


def _text_part(subtype: str, content: str) -> bytes:
    """Return one MIME part: headers, blank line and the encoded UTF-8 content."""
    transfer_encoding, encoded = _encode_body(content)
    part_headers = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {transfer_encoding}\r\n\r\n"
    )
    return part_headers.encode("ascii") + encoded


def _encode_body(content: str) -> tuple[str, bytes]:
    """Return the transfer encoding and the encoded bytes, all lines at most 76 characters.

    Short ASCII lines go as 7bit. Otherwise the shorter of quoted-printable
    (mostly Latin text) and base64 (mostly CJK text) is used.
    """
    data = re.sub(r"\r\n?", "\n", content).encode("utf-8")
    if data.isascii() and b"\0" not in data and all(len(line) <= 76 for line in data.split(b"\n")):
        return "7bit", data.replace(b"\n", b"\r\n")

    quoted = binascii.b2a_qp(data, istext=True)
    encoded = base64.encodebytes(data)
    if len(quoted) <= len(encoded):
        return "quoted-printable", quoted.replace(b"\n", b"\r\n")
    return "base64", encoded.replace(b"\n", b"\r\n")
