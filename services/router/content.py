"""Body texts, HTML and attachments of a MIME tree.

``mime.parse_mail`` calls ``collect_content`` on the parsed tree and
``finish_attachment`` once the HTML is known, because cid references in the
HTML decide which images are inline.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass, field

from services.router.bodies import html_meta_charset, normalize_text, unflow
from services.router.bounces import DELIVERY_STATUS_TYPES, RETURNED_HEADER_TYPES, RETURNED_MESSAGE_TYPES
from services.router.charsets import decode_bytes
from services.router.headers import decode_raw, decode_text, get_param, split_value_and_params, unfold
from services.router.parts import Params, Part, decode_payload, split_header_block


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


@dataclass
class PendingFile:
    """An attachment before the HTML is known, which decides ``inline``."""

    filename: str
    content_type: str
    content_id: str | None
    data: bytes


@dataclass
class Content:
    """Body texts, HTML bodies and files found under one part."""

    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    files: list[PendingFile] = field(default_factory=list)

    def extend(self, other: Content) -> None:
        self.texts += other.texts
        self.htmls += other.htmls
        self.files += other.files


# Machine-readable parts of delivery, read-receipt and abuse reports. The
# bounce parser reads the delivery ones, and none of them is body text or a
# file an agent wants to open.
_REPORT_DATA_TYPES = (
    DELIVERY_STATUS_TYPES
    | RETURNED_HEADER_TYPES
    | {"message/disposition-notification", "message/global-disposition-notification", "message/feedback-report"}
)


def collect_content(part: Part, defects: list[str], index: int = 0) -> Content:
    """Gather bodies and files in tree order.

    message/rfc822 parts are never entered: a forwarded mail is one file,
    and its text and ids are not this mail's.
    """
    if part.children:
        if part.content_type == "multipart/alternative":
            return _collect_alternative(part, defects)
        content = Content()
        for child_index, child in enumerate(part.children):
            content.extend(collect_content(child, defects, child_index))
        return content

    if part.is_multipart or part.content_type in _REPORT_DATA_TYPES:
        return Content()

    disposition, disposition_params = _disposition(part, defects)
    filename = get_param(disposition_params, "filename", defects, "attachment filename") or part.param("name", defects)

    if part.content_type in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        return _body_content(part, defects)

    return Content(files=[_pending_file(part, filename, index, defects)])


def _collect_alternative(part: Part, defects: list[str]) -> Content:
    """Take the plain text and the HTML from the alternatives, files from all.

    Senders put the simplest version first, so the first alternative with
    text and the last one with HTML are used.
    """
    children = [collect_content(child, defects, index) for index, child in enumerate(part.children)]
    content = Content()

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


def _body_content(part: Part, defects: list[str]) -> Content:
    payload = decode_payload(part, defects)
    charset = part.param("charset", defects)
    is_html = part.content_type == "text/html"

    if is_html and not charset:
        charset = html_meta_charset(payload)
    text = normalize_text(decode_bytes(payload, charset, defects, f"{part.content_type} body"))

    if is_html:
        return Content(htmls=[text])

    if (part.param("format", defects) or "").lower() == "flowed":
        text = unflow(text, (part.param("delsp", defects) or "").lower() == "yes")
    return Content(texts=[text])


def _pending_file(part: Part, filename: str | None, index: int, defects: list[str]) -> PendingFile:
    data = decode_payload(part, defects)

    if not filename and part.content_type in RETURNED_MESSAGE_TYPES:
        filename = _forwarded_message_name(data)

    content_id_text = part.header_text("content-id", defects)
    content_id = content_id_text.strip().strip("<>").strip() if content_id_text else None

    return PendingFile(
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


def finish_attachment(pending: PendingFile, cids: set[str]) -> Attachment:
    """Build the Attachment; an image is inline when the HTML refers to its Content-ID."""
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
