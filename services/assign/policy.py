"""Which automatic answer a customer's mail gets, and which conversations are assigned: pure rules.

Automatic mail (greeting, out-of-hours note) must never start a loop or
land on a list: it goes only to a customer mail from a person, never to an
autoresponder, a bounce, list mail or a no-reply address. The stage in
``stage.py`` and ``answers.py`` gather the facts from the database and ask
these functions.
"""

from __future__ import annotations

import re
from datetime import timedelta

AUTOMATIC_MAIL_KINDS = frozenset({"customer"})
# Only a conversation that a customer opened is work for an agent. One
# opened by an autoresponder or a list post is kept but not assigned.
ASSIGNABLE_KINDS = frozenset({"customer"})

# An agent who answered this recently is probably still at work, so a
# customer's reply outside business hours gets no out-of-hours note.
AGENT_REPLY_QUIET_PERIOD = timedelta(minutes=10)

GREETING = "greeting"
OUT_OF_HOURS = "out_of_hours"

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


def is_assignable(message_kind: str | None) -> bool:
    """Return True when a conversation opened by this kind of mail goes to an agent."""
    return message_kind in ASSIGNABLE_KINDS


def automatic_answer(*, message_kind: str | None, contact_email: str | None,
                     first_message: bool, hours_open: bool | None, greeting_enabled: bool,
                     out_of_hours_enabled: bool, agent_replied_recently: bool) -> str | None:
    """Return the automatic answer a customer's mail gets: GREETING, OUT_OF_HOURS or None.

    ``hours_open`` is None when the inbox has no business hours. Outside
    hours the note replaces the greeting, so a mail never gets both. When the
    note is off, a new conversation still gets its greeting. A later mail
    gets only the note, and none when an agent answered within
    AGENT_REPLY_QUIET_PERIOD. Once per closed period is the caller's check.
    """
    if not may_send_automatic_mail(message_kind, contact_email):
        return None
    if hours_open is False and out_of_hours_enabled:
        return None if agent_replied_recently else OUT_OF_HOURS
    if first_message and greeting_enabled:
        return GREETING
    return None
