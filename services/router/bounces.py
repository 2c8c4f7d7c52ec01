"""Recognition and reading of bounces (non-delivery reports).

A bounce is a multipart/report delivery status notification (RFC 3464), or
a plain-text failure notice from MAILER-DAEMON or postmaster, or null-sender
mail that names its failed recipients. The DSN fields and the returned
headers are read here directly from the parts, because Python's ``email``
turns message/delivery-status into sub-messages and text/rfc822-headers into
an ordinary text attachment. Called by ``mime.parse_mail``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.router.addresses import Address, extract_ids, normalize_email
from services.router.charsets import guess_8bit
from services.router.headers import decode_raw
from services.router.parts import Part, decode_payload, parse_part, split_header_block


@dataclass(frozen=True)
class Bounce:
    """Failure details of a bounce: the failed recipients, the status and the returned mail's ids."""

    failed_recipients: list[str]
    status: str | None  # e.g. "5.1.2"
    original_message_id: str | None  # of the mail that bounced
    original_in_reply_to: str | None
    original_references: list[str] = field(default_factory=list)


DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
RETURNED_HEADER_TYPES = frozenset({"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"})
RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})

_DAEMON_LOCAL_PARTS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mdaemon"})
_STATUS_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")

# Postfix and qmail list each failed recipient as "<addr>: reason".
_TEXT_RECIPIENT = re.compile(r"^\s*<([^<>\s]+@[^<>\s]+)>:", re.M)

# Phrases after whose line Exim, qmail and others paste the returned message
# into the text of the notice instead of attaching it. The pattern is not
# anchored to the line: with "^.*" the search tried every position of every
# line, 5% of the router's time on ordinary mail.
_RETURNED_TEXT_MARKER = re.compile(
    r"copy of the (?:original )?message|original message (?:headers|follows)"
    r"|returned message|message headers follow|undelivered message",
    re.I,
)


def is_daemon_sender(address: Address | None) -> bool:
    """Tell whether an address is a mail system's (MAILER-DAEMON, postmaster)."""
    if address is None:
        return False
    local = address.email.rpartition("@")[0] or address.email
    return local.lower() in _DAEMON_LOCAL_PARTS


def find_parts(root: Part, content_types: frozenset[str]) -> list[Part]:
    """Return the parts of these types, not descending into attached messages."""
    found: list[Part] = []
    stack = [root]
    while stack:
        part = stack.pop()
        if part.content_type in content_types:
            found.append(part)
        stack.extend(reversed(part.children))
    return found


def read_bounce(
    root: Part,
    sender: Address | None,
    return_path: str | None,
    text: str,
    defects: list[str],
) -> Bounce | None:
    """Return the Bounce when the mail is a non-delivery report, else None.

    ``sender`` is the From address and ``text`` the decoded plain-text body,
    used for notices that are not RFC 3464 reports.
    """
    status_parts = find_parts(root, DELIVERY_STATUS_TYPES)
    if not status_parts and _is_other_report(root, defects):
        # Read receipts and abuse reports also return the original headers
        # from a null sender, but nothing failed.
        return None

    is_report = bool(status_parts)
    from_daemon = is_daemon_sender(sender)
    if not (is_report or from_daemon or return_path == ""):
        # The common case, decided before the text is searched for a returned message.
        return None

    failed_header = _x_failed_recipients(root, defects)
    returned = _returned_header_block(root, text, defects)
    null_sender_failure = return_path == "" and (bool(failed_header) or returned is not None)
    if not (is_report or from_daemon or null_sender_failure):
        return None

    recipients, status = _read_delivery_status(status_parts, defects)
    recipients = recipients or failed_header or _recipients_from_text(text)
    if status is None:
        match = _STATUS_CODE.search(text)
        status = match.group(1) if match else None

    return _build_bounce(recipients, status, returned, defects)


def _build_bounce(
    recipients: list[str],
    status: str | None,
    returned: list[tuple[str, bytes]] | None,
    defects: list[str],
) -> Bounce:
    message_ids: list[str] = []
    in_reply_to: list[str] = []
    references: list[str] = []

    for name, value in returned or []:
        ids = extract_ids(decode_raw(value, defects, f"returned {name} header"))
        if name == "message-id" and not message_ids:
            message_ids = ids
        elif name == "in-reply-to" and not in_reply_to:
            in_reply_to = ids
        elif name == "references" and not references:
            references = ids

    return Bounce(
        failed_recipients=recipients,
        status=status,
        original_message_id=message_ids[0] if message_ids else None,
        original_in_reply_to=in_reply_to[0] if in_reply_to else None,
        original_references=references,
    )


def _is_other_report(root: Part, defects: list[str]) -> bool:
    if root.content_type != "multipart/report":
        return False
    report_type = (root.param("report-type", defects) or "").strip().lower()
    return report_type not in ("", "delivery-status")


def _x_failed_recipients(root: Part, defects: list[str]) -> list[str]:
    # Exim names the failed recipients in this header, comma-separated.
    recipients: list[str] = []
    for raw in root.header_values("x-failed-recipients"):
        for item in re.split(r"[,\s]+", decode_raw(raw, defects, "X-Failed-Recipients header")):
            address = normalize_email(item.strip("<>"))
            if "@" in address and address not in recipients:
                recipients.append(address)
    return recipients


def _recipients_from_text(text: str) -> list[str]:
    recipients: list[str] = []
    for match in _TEXT_RECIPIENT.finditer(text):
        address = normalize_email(match.group(1))
        if address not in recipients:
            recipients.append(address)
    return recipients


def _read_delivery_status(parts: list[Part], defects: list[str]) -> tuple[list[str], str | None]:
    """Read failed recipients and the first failure status from DSN fields.

    Recipients with Action "failed" (or a 5.x.x status) count as failed.
    When none failed, as in a delay notice, the status of the first
    recipient is returned with an empty recipient list.
    """
    failed: list[str] = []
    first_failed_status: str | None = None
    first_status: str | None = None

    for part in parts:
        for fields in _field_groups(decode_payload(part, defects)):
            recipient = _recipient_of(fields)
            if recipient is None:
                continue
            status = _status_of(fields)
            first_status = first_status or status
            action = fields.get("action", "").strip().lower()
            permanent = (status or "").startswith("5.") and not action
            if (action == "failed" or permanent) and recipient not in failed:
                failed.append(recipient)
                first_failed_status = first_failed_status or status

    return failed, first_failed_status or first_status


def _field_groups(data: bytes) -> list[dict[str, str]]:
    """Split a message/delivery-status body into its blank-line separated groups."""
    text, _codec = guess_8bit(data)
    # NUL never belongs in a report field, and PostgreSQL rejects it in the stored bounce.
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    groups: list[dict[str, str]] = []

    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        last_name: str | None = None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and last_name is not None:
                fields[last_name] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            if colon:
                last_name = name.strip().lower()
                fields.setdefault(last_name, value.strip())
        if fields:
            groups.append(fields)
    return groups


def _recipient_of(fields: dict[str, str]) -> str | None:
    value = fields.get("final-recipient") or fields.get("original-recipient")
    if not value:
        return None
    # "rfc822; <user@example.org>": the address type comes before the ";".
    address = value.split(";", 1)[-1].strip().strip("<>").strip()
    return normalize_email(address) if address else None


def _status_of(fields: dict[str, str]) -> str | None:
    for name in ("status", "diagnostic-code"):
        match = _STATUS_CODE.search(fields.get(name, ""))
        if match:
            return match.group(1)
    return None


def _returned_header_block(root: Part, text: str, defects: list[str]) -> list[tuple[str, bytes]] | None:
    """Return the header fields of the returned message, wherever the notice put them."""
    for part in find_parts(root, RETURNED_HEADER_TYPES | RETURNED_MESSAGE_TYPES):
        # Repairs inside the returned message are not defects of this mail.
        inner = parse_part(decode_payload(part, defects), [])
        if inner.headers:
            return inner.headers

    return _headers_pasted_in_text(text)


def _headers_pasted_in_text(text: str) -> list[tuple[str, bytes]] | None:
    marker = _RETURNED_TEXT_MARKER.search(text)
    if marker is None:
        return None

    line_end = text.find("\n", marker.end())
    rest = text[line_end:].lstrip("\n") if line_end >= 0 else ""

    # Some MTAs indent the pasted message; a header block cannot be indented.
    lines = rest.split("\n")
    if lines and lines[0].startswith((" ", "\t")):
        rest = "\n".join(line.strip() for line in lines)

    headers, _body = split_header_block(rest.encode("utf-8"), [])
    threading_headers = {"message-id", "in-reply-to", "references"}
    return headers if any(name in threading_headers for name, _value in headers) else None
