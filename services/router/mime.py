"""Turn the raw bytes of one received mail into a ``ParsedMail``.

The router calls ``parse_mail`` for every mail it takes from the
``mail.received`` topic, before inbox resolution, threading and contact
handling. Parsing never raises: malformed mail gives a best-effort result
whose ``defects`` list what was repaired or could not be read.

Python's ``email`` package is used for none of this, because several of its
answers are wrong on real mail (see ``parts``, ``addresses`` and
``charsets``). The work is split over sibling modules: ``parts`` builds the
MIME tree, ``headers`` and ``addresses`` decode header values, ``charsets``
holds the one charset policy, ``bodies`` handles text and HTML and
``bounces`` reads delivery reports.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass, field
from datetime import datetime

from services.router.addresses import Address, extract_ids, normalize_email, parse_address, parse_addresses
from services.router.bodies import (
    cid_references,
    html_meta_charset,
    html_to_text,
    normalize_text,
    sanitize_html,
    strip_quoted,
    unflow,
)
from services.router.bounces import (
    DELIVERY_STATUS_TYPES,
    RETURNED_HEADER_TYPES,
    RETURNED_MESSAGE_TYPES,
    Bounce,
    read_bounce,
)
from services.router.charsets import decode_bytes
from services.router.headers import (
    decode_raw,
    decode_text,
    decode_words,
    get_param,
    parse_date,
    split_value_and_params,
    unfold,
)
from services.router.parts import Params, Part, decode_payload, parse_part, split_header_block

__all__ = ["Address", "Attachment", "Bounce", "ForwardingConfirmation", "ParsedMail", "parse_mail"]


@dataclass(frozen=True)
class Attachment:
    """A file carried by the mail, with its bytes already transfer-decoded."""

    filename: str
    content_type: str  # lowercased, e.g. "application/pdf", "message/rfc822"
    size: int  # decoded byte count
    sha256: str  # hex digest of the decoded bytes
    inline: bool  # True for images referenced by cid from the HTML
    content_id: str | None  # without angle brackets
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ForwardingConfirmation:
    """The code and link of a mail provider's forwarding confirmation."""

    provider: str  # e.g. "gmail"
    code: str
    link: str | None


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
    return_path = _return_path(root, defects)
    subject = _text_header(root, "subject", defects)

    content = _collect(root, defects, 0)
    text = "\n".join(content.texts)
    html_source = "\n".join(content.htmls) if content.htmls else None
    if not text.strip() and html_source:
        text = html_to_text(html_source)

    cids = cid_references(html_source or "")
    attachments = [_finish_attachment(pending, cids) for pending in content.files]

    auto_submitted = _is_auto_submitted(root, defects)
    precedence = _precedence(root, defects)
    list_id = _list_id(root, defects)
    bounce = read_bounce(root, from_, return_path, text, defects)
    confirmation = _forwarding_confirmation(from_, subject, text)

    return ParsedMail(
        message_id=_message_id(root, defects),
        in_reply_to=_ids(root, "in-reply-to", defects),
        references=_ids(root, "references", defects),
        subject=subject,
        from_=from_,
        sender=_address_header(root, "sender", defects),
        reply_to=_address_list(root, "reply-to", defects),
        to=_address_list(root, "to", defects),
        cc=_address_list(root, "cc", defects),
        return_path=return_path,
        delivered_to=_email_list(root, "delivered-to", defects),
        x_forwarded_to=_email_list(root, "x-forwarded-to", defects),
        x_original_to=_email_list(root, "x-original-to", defects),
        date=_date(root, defects),
        text=text,
        new_text=strip_quoted(text),
        html=sanitize_html(html_source) if html_source is not None else None,
        attachments=attachments,
        kind=_kind(root, bounce, confirmation, auto_submitted, precedence),
        auto_submitted=auto_submitted,
        precedence=precedence,
        list_id=list_id,
        bounce=bounce,
        forwarding_confirmation=confirmation,
        defects=_distinct(defects),
    )


def _unreadable_mail(raw: bytes, defects: list[str]) -> ParsedMail:
    # Keep the bytes visible to an agent as text rather than lose them.
    text = normalize_text(raw.decode("utf-8", "replace"))
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


def _header_text(root: Part, name: str, defects: list[str]) -> str | None:
    """Return a structured header's value decoded to a string, None when absent."""
    raw = root.header(name)
    if raw is None:
        return None
    source = f"{name.title()} header"
    return decode_words(unfold(decode_raw(raw, defects, source)), defects, source)


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
        defects.append("Message-ID header holds no valid id")
    return None


def _ids(root: Part, name: str, defects: list[str]) -> list[str]:
    ids: list[str] = []
    for raw in root.header_values(name):
        for message_id in extract_ids(decode_raw(raw, defects, f"{name.title()} header")):
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
    text = _header_text(root, "return-path", defects)
    if text is None:
        return None

    match = re.search(r"<([^<>]*)>", text)
    inner = (match.group(1) if match else text).strip()

    # An obsolete source route may precede the address: <@relay:user@host>.
    if inner.startswith("@") and ":" in inner:
        inner = inner.split(":", 1)[1]
    return normalize_email(inner)


def _date(root: Part, defects: list[str]) -> datetime | None:
    text = _header_text(root, "date", defects)
    return None if text is None else parse_date(text, defects)


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------

# Headers that autoresponders other than RFC 3834 ones set; any value but a
# negative one marks the mail as automatic.
_AUTORESPONDER_HEADERS = ("x-autoreply", "x-autorespond", "x-autoreply-from", "x-mail-autoreply")
_NEGATIVE_VALUES = frozenset({"", "no", "false", "0"})


def _is_auto_submitted(root: Part, defects: list[str]) -> bool:
    """Tell whether the mail declares itself automatic (RFC 3834 and vendor headers).

    A typical out-of-office Subject alone does not count: customers write
    "Automatic reply" subjects too.
    """
    auto_submitted = (_header_text(root, "auto-submitted", defects) or "").strip().lower()
    if auto_submitted and auto_submitted.split(";", 1)[0].split("(", 1)[0].strip() != "no":
        return True

    for name in _AUTORESPONDER_HEADERS:
        value = _header_text(root, name, defects)
        if value is not None and value.strip().lower() not in _NEGATIVE_VALUES:
            return True

    if (_header_text(root, "x-autogenerated", defects) or "").strip().lower() == "reply":
        return True

    if _precedence(root, defects) == "auto_reply":
        return True

    # Exchange marks its own automatic replies with this header.
    suppress = (_header_text(root, "x-auto-response-suppress", defects) or "").lower()
    return bool({"all", "oof"} & {token.strip() for token in suppress.split(",")})


def _precedence(root: Part, defects: list[str]) -> str | None:
    text = _header_text(root, "precedence", defects)
    if text is None:
        return None
    value = re.sub(r"\(.*?\)", "", text).strip().lower()
    return value or None


def _list_id(root: Part, defects: list[str]) -> str | None:
    text = _header_text(root, "list-id", defects)
    if text is None:
        return None
    match = re.search(r"<([^<>]+)>", text)
    value = (match.group(1) if match else text).strip()
    return value or None


def _is_list_mail(root: Part, precedence: str | None) -> bool:
    return root.header("list-id") is not None or root.header("list-post") is not None or precedence == "list"


_FORWARDING_SENDER = "forwarding-noreply"
_FORWARDING_CODE = re.compile(r"\(#\s?(\d{4,})\)")
_URL = re.compile(r"https?://[^\s<>\"']+")


def _forwarding_confirmation(sender: Address | None, subject: str, text: str) -> ForwardingConfirmation | None:
    """Recognise Gmail's forwarding confirmation by sender and "(#code)" subject.

    The subject is localised, so only the "(#digits)" pattern is matched,
    never its words.
    """
    if sender is None:
        return None
    local, _, domain = sender.email.rpartition("@")
    if local.lower() != _FORWARDING_SENDER or "google" not in domain.split("."):
        return None

    match = _FORWARDING_CODE.search(subject)
    if match is None:
        return None

    return ForwardingConfirmation(provider="gmail", code=match.group(1), link=_google_link(text))


def _google_link(text: str) -> str | None:
    for match in _URL.finditer(text):
        url = match.group().rstrip(".,;:)")
        host = url.split("/", 3)[2].split(":", 1)[0].lower()
        if "google" in host.split("."):
            return url
    return None


def _kind(
    root: Part,
    bounce: Bounce | None,
    confirmation: ForwardingConfirmation | None,
    auto_submitted: bool,
    precedence: str | None,
) -> str:
    if confirmation is not None:
        return "forwarding_confirmation"
    if bounce is not None:
        return "bounce"
    if _is_list_mail(root, precedence):
        return "list"
    if auto_submitted:
        return "auto_reply"
    return "customer"


# ---------------------------------------------------------------------------
# Bodies and attachments
# ---------------------------------------------------------------------------


@dataclass
class _PendingFile:
    """An attachment before the HTML is known, which decides ``inline``."""

    filename: str
    content_type: str
    content_id: str | None
    data: bytes


@dataclass
class _Content:
    """Body texts, HTML bodies and files found under one part."""

    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    files: list[_PendingFile] = field(default_factory=list)

    def extend(self, other: _Content) -> None:
        self.texts += other.texts
        self.htmls += other.htmls
        self.files += other.files


# These parts of a delivery report are read by the bounce parser; they are
# neither body text nor files an agent wants to open.
_REPORT_DATA_TYPES = DELIVERY_STATUS_TYPES | RETURNED_HEADER_TYPES


def _collect(part: Part, defects: list[str], index: int) -> _Content:
    """Gather bodies and files in tree order.

    message/rfc822 parts are never entered: a forwarded mail is one file,
    and its text and ids are not this mail's.
    """
    if part.children:
        if part.content_type == "multipart/alternative":
            return _collect_alternative(part, defects)
        content = _Content()
        for child_index, child in enumerate(part.children):
            content.extend(_collect(child, defects, child_index))
        return content

    if part.is_multipart or part.content_type in _REPORT_DATA_TYPES:
        return _Content()

    disposition, disposition_params = _disposition(part, defects)
    filename = get_param(disposition_params, "filename", defects, "attachment filename") or part.param("name", defects)

    if part.content_type in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        return _body_content(part, defects)

    return _Content(files=[_pending_file(part, filename, index, defects)])


def _collect_alternative(part: Part, defects: list[str]) -> _Content:
    """Take the plain text and the HTML from the alternatives, files from all.

    Senders put the simplest version first, so the first alternative with
    text and the last one with HTML are used.
    """
    children = [_collect(child, defects, index) for index, child in enumerate(part.children)]
    content = _Content()

    content.texts = next((child.texts for child in children if child.texts), [])
    content.htmls = next((child.htmls for child in reversed(children) if child.htmls), [])
    for child in children:
        content.files += child.files
    return content


def _disposition(part: Part, defects: list[str]) -> tuple[str, Params]:
    raw = part.header("content-disposition")
    if raw is None:
        return "", []
    main, params = split_value_and_params(unfold(decode_raw(raw, defects, "Content-Disposition header")))
    return main.strip().lower(), params


def _body_content(part: Part, defects: list[str]) -> _Content:
    payload = decode_payload(part, defects)
    charset = part.param("charset", defects)
    is_html = part.content_type == "text/html"

    if is_html and not charset:
        charset = html_meta_charset(payload)
    text = normalize_text(decode_bytes(payload, charset, defects, f"{part.content_type} body"))

    if is_html:
        return _Content(htmls=[text])

    if (part.param("format", defects) or "").lower() == "flowed":
        text = unflow(text, (part.param("delsp", defects) or "").lower() == "yes")
    return _Content(texts=[text])


def _pending_file(part: Part, filename: str | None, index: int, defects: list[str]) -> _PendingFile:
    data = decode_payload(part, defects)

    if not filename and part.content_type in RETURNED_MESSAGE_TYPES:
        filename = _forwarded_message_name(data)

    content_id_text = _header_text(part, "content-id", defects)
    content_id = content_id_text.strip().strip("<>").strip() if content_id_text else None

    return _PendingFile(
        filename=_safe_filename(filename) or _generated_name(part.content_type, index),
        content_type=part.content_type,
        content_id=content_id or None,
        data=data,
    )


def _forwarded_message_name(data: bytes) -> str:
    """Name an attached message after its Subject, as mail clients do."""
    # Repairs inside the attached message are not defects of this mail.
    inner_defects: list[str] = []
    headers, _body = split_header_block(data, inner_defects)
    raw_subject = next((value for name, value in headers if name == "subject"), None)
    subject = decode_text(raw_subject, inner_defects, "Subject") if raw_subject is not None else ""

    # A Subject may contain "/" or "\", which are not part of a filename.
    subject = subject.replace("/", "_").replace("\\", "_")
    return f"{subject or 'message'}.eml"


_UNSAFE_IN_FILENAME = re.compile(r"[\x00-\x1f\x7f]")


def _safe_filename(filename: str | None) -> str:
    """Drop directories and control characters from a sender-given filename.

    Old Windows mailers send whole paths such as C:\\Users\\kim\\a.pdf, and
    a forwarded Subject may contain "/".
    """
    if not filename:
        return ""
    name = re.split(r"[\\/]", filename)[-1]
    return _UNSAFE_IN_FILENAME.sub("", name).strip().strip(".") or ""


def _generated_name(content_type: str, index: int) -> str:
    extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return f"attachment-{index + 1}{extension}"


def _finish_attachment(pending: _PendingFile, cids: set[str]) -> Attachment:
    inline = pending.content_type.startswith("image/") and pending.content_id is not None and pending.content_id in cids
    return Attachment(
        filename=pending.filename,
        content_type=pending.content_type,
        size=len(pending.data),
        sha256=hashlib.sha256(pending.data).hexdigest(),
        inline=inline,
        content_id=pending.content_id,
        data=pending.data,
    )
