"""Which automatic answer a new conversation gets, as pure rules.

Automatic mail (greeting, out-of-hours note) must never start a loop or
land on a list: it goes only to a customer mail from a person, never to an
autoresponder, a bounce, list mail or a no-reply address.
"""

from __future__ import annotations

import re

AUTOMATIC_MAIL_KINDS = frozenset({"customer"})

# Local parts that no person reads; answering them feeds a loop or a bounce.
_UNATTENDED_LOCAL_PART = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?"
    r"|auto[-_.]?reply|notifications?)(?:[-+_.].*)?$")


def is_unattended_address(address: str | None) -> bool:
    """Return True for an address that no person reads, such as noreply@."""
    if not address or "@" not in address:
        return True
    local = address.rsplit("@", 1)[0].lower()
    return bool(_UNATTENDED_LOCAL_PART.match(local))


def may_send_automatic_mail(message_kind: str | None, contact_email: str | None) -> bool:
    """Return True when a greeting or out-of-hours note may answer this mail."""
    return message_kind in AUTOMATIC_MAIL_KINDS and not is_unattended_address(contact_email)
