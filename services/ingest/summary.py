"""The header summary that rides on ``mail.received`` beside the raw digest.

It is informational (for subscribers and logs); the router parses the raw
mail itself. Reading it must never fail, so every field falls back to None.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import parseaddr

_MESSAGE_ID = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_MAX_SUMMARY_CHARS = 998


@dataclass(frozen=True)
class HeaderSummary:
    message_id: str | None
    subject: str | None
    from_address: str | None


def summarize(raw: bytes) -> HeaderSummary:
    """Return Message-ID, Subject and From address of ``raw``, each None when unreadable."""
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    return HeaderSummary(
        message_id=_message_id(headers.get("Message-ID")),
        subject=_subject(headers.get("Subject")),
        from_address=_from_address(headers.get("From")),
    )


def _message_id(value: object) -> str | None:
    match = _MESSAGE_ID.search(str(value)) if value is not None else None
    return match.group(1)[:_MAX_SUMMARY_CHARS] if match else None


def _subject(value: object) -> str | None:
    if value is None:
        return None
    try:
        return str(make_header(decode_header(str(value))))[:_MAX_SUMMARY_CHARS]
    except (LookupError, UnicodeError, ValueError):
        # An unknown charset or a broken encoded word: keep the raw text.
        return str(value)[:_MAX_SUMMARY_CHARS]


def _from_address(value: object) -> str | None:
    if value is None:
        return None
    address = parseaddr(str(value))[1]
    return address[:_MAX_SUMMARY_CHARS] or None
