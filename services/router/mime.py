"""Turn the raw bytes of one received mail into a ``ParsedMail``.

The router calls ``parse_mail`` for every mail it takes from the
``mail.received`` topic, before inbox resolution, threading and contact
handling. Parsing never raises: malformed mail gives a best-effort result
whose ``defects`` list what was repaired or could not be read.

Python's ``email`` package is used for none of this, because several of its
results are wrong on real mail (see ``parts``, ``addresses`` and
``charsets``). The work is split over sibling modules. ``parts`` builds the
MIME tree, ``headers`` and ``addresses`` decode header values, and
``charsets`` contains the one charset policy. ``content`` and ``bodies``
extract text, HTML and attachments, ``bounces`` reads delivery reports and
``classify`` decides the kind of mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from services.router.addresses import (
    Address,
    extract_ids,
    extract_reply_ids,
    normalize_email,
    parse_address,
    parse_addresses,
)
from services.router.bodies import cid_references, html_to_text, normalize_text, sanitize_html, strip_quoted
from services.router.bounces import Bounce, read_bounce
from services.router.classify import (
    ForwardingConfirmation,
    classify_kind,
    find_forwarding_confirmation,
    is_auto_submitted,
    read_list_id,
    read_precedence,
)
from services.router.content import Attachment, collect_content, finish_attachment
from services.router.headers import decode_raw, decode_text, parse_date, unfold
from services.router.parts import Part, parse_part

__all__ = ["Address", "Attachment", "Bounce", "ForwardingConfirmation", "ParsedMail", "parse_mail"]


@dataclass(frozen=True)
class ParsedMail:
    """Everything the router reads from one mail."""

    message_id: str | None  # without angle brackets; None when missing or not a sane id
    in_reply_to: list[str]  # ids without brackets, validated the same way
    references: list[str]  # ids in header order, oldest first, validated
    subject: str
    from_: Address | None
    sender: Address | None
    reply_to: list[Address]
    to: list[Address]
    cc: list[Address]
    return_path: str | None  # None when absent, "" for the null sender <>
    delivered_to: list[str]
    x_forwarded_to: list[str]
    x_original_to: list[str]
    date: datetime | None  # timezone-aware
    text: str  # plain-text body, line ends normalised to "\n"
    new_text: str  # text without the quoted history and reply header
    html: str | None  # sanitized; cid: image references kept
    attachments: list[Attachment]
    kind: str  # "customer" | "auto_reply" | "bounce" | "list" | "forwarding_confirmation"
    auto_submitted: bool
    precedence: str | None  # lowercased Precedence value
    list_id: str | None
    bounce: Bounce | None
    forwarding_confirmation: ForwardingConfirmation | None
    defects: list[str]  # what was repaired or could not be read


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse one mail; never raises, whatever the input."""
    defects: list[str] = []
    try:
        return _parse(raw, defects)
    except Exception as error:  # noqa: BLE001
        # The contract is a result for every input, so a bug on some
        # unforeseen malformation must still yield a record to store.
        defects.append(f"mail could not be parsed: {type(error).__name__}: {error}")
        return _unreadable_mail(raw, _distinct(defects))


def _distinct(defects: list[str]) -> list[str]:
    # A damaged mail can repeat one repair many times; report each once.
    return list(dict.fromkeys(defects))


def _parse(raw: bytes, defects: list[str]) -> ParsedMail:
    root = parse_part(raw, defects)
    from_ = _address_header(root, "from", defects)
    sender = _address_header(root, "sender", defects)
    reply_to = _address_list(root, "reply-to", defects)
    to = _address_list(root, "to", defects)
    cc = _address_list(root, "cc", defects)
    own_addresses = {a.email.lower() for a in [*filter(None, [from_, sender]), *reply_to, *to, *cc]}
    return_path = _return_path(root, defects)
    subject = _text_header(root, "subject", defects)

    content = collect_content(root, defects)
    text = "\n".join(content.texts)
    html_source = "\n".join(content.htmls) if content.htmls else None
    if not text.strip() and html_source:
        text = html_to_text(html_source)

    cids = cid_references(html_source or "")
    attachments = [finish_attachment(pending, cids) for pending in content.files]

    auto_submitted = is_auto_submitted(root, defects)
    precedence = read_precedence(root, defects)
    list_id = read_list_id(root, defects)
    bounce = read_bounce(root, from_, return_path, text, defects)
    confirmation = find_forwarding_confirmation(from_, subject, text)

    return ParsedMail(
        message_id=_message_id(root, defects),
        in_reply_to=_reply_ids(root, "in-reply-to", own_addresses, defects),
        references=_reply_ids(root, "references", own_addresses, defects),
        subject=subject,
        from_=from_,
        sender=sender,
        reply_to=reply_to,
        to=to,
        cc=cc,
        return_path=return_path,
        delivered_to=_email_list(root, "delivered-to", defects),
        x_forwarded_to=_email_list(root, "x-forwarded-to", defects),
        x_original_to=_email_list(root, "x-original-to", defects),
        date=_date(root, defects),
        text=text,
        new_text=strip_quoted(text),
        html=sanitize_html(html_source) if html_source is not None else None,
        attachments=attachments,
        kind=classify_kind(root, bounce, confirmation, auto_submitted, precedence, list_id),
        auto_submitted=auto_submitted,
        precedence=precedence,
        list_id=list_id,
        bounce=bounce,
        forwarding_confirmation=confirmation,
        defects=_distinct(defects),
    )


def _unreadable_mail(raw: bytes, defects: list[str]) -> ParsedMail:
    # Keep the bytes visible to an agent as text rather than lose them.
    text = normalize_text(raw.decode("utf-8", "replace")).replace("\x00", "")
    return ParsedMail(
        message_id=None,
        in_reply_to=[],
        references=[],
        subject="",
        from_=None,
        sender=None,
        reply_to=[],
        to=[],
        cc=[],
        return_path=None,
        delivered_to=[],
        x_forwarded_to=[],
        x_original_to=[],
        date=None,
        text=text,
        new_text=text,
        html=None,
        attachments=[],
        kind="customer",
        auto_submitted=False,
        precedence=None,
        list_id=None,
        bounce=None,
        forwarding_confirmation=None,
        defects=defects,
    )


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------


def _text_header(root: Part, name: str, defects: list[str]) -> str:
    raw = root.header(name)
    return "" if raw is None else decode_text(raw, defects, f"{name.title()} header")


def _message_id(root: Part, defects: list[str]) -> str | None:
    values = root.header_values("message-id")
    for raw in values:
        ids = extract_ids(decode_raw(raw, defects, "Message-ID header"))
        if ids:
            return ids[0]
    if values:
        defects.append("Message-ID header contains no valid id")
    return None


def _reply_ids(root: Part, name: str, own_addresses: set[str], defects: list[str]) -> list[str]:
    ids: list[str] = []
    for raw in root.header_values(name):
        text = decode_raw(raw, defects, f"{name.title()} header")
        for message_id in extract_reply_ids(text, own_addresses):
            if message_id not in ids:
                ids.append(message_id)
    return ids


def _address_header(root: Part, name: str, defects: list[str]) -> Address | None:
    raw = root.header(name)
    if raw is None:
        return None

    # Encoded-words are decoded after parsing, inside display names only,
    # because a decoded name may contain "," or "<".
    source = f"{name.title()} header"
    return parse_address(unfold(decode_raw(raw, defects, source)), defects, source)


def _address_list(root: Part, name: str, defects: list[str]) -> list[Address]:
    addresses: list[Address] = []
    for raw in root.header_values(name):
        text = unfold(decode_raw(raw, defects, f"{name.title()} header"))
        addresses.extend(parse_addresses(text, defects, f"{name.title()} header"))
    return addresses


def _email_list(root: Part, name: str, defects: list[str]) -> list[str]:
    """Return the distinct addresses of every header with this name, in order."""
    emails: list[str] = []
    for address in _address_list(root, name, defects):
        if address.email and address.email not in emails:
            emails.append(address.email)
    return emails


def _return_path(root: Part, defects: list[str]) -> str | None:
    text = root.header_text("return-path", defects)
    if text is None:
        return None

    match = re.search(r"<([^<>]*)>", text)
    inner = (match.group(1) if match else text).strip()

    # An obsolete source route may precede the address: <@relay:user@host>.
    if inner.startswith("@") and ":" in inner:
        inner = inner.split(":", 1)[1]
    return normalize_email(inner)


def _date(root: Part, defects: list[str]) -> datetime | None:
    text = root.header_text("date", defects)
    return None if text is None else parse_date(text, defects)


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------
