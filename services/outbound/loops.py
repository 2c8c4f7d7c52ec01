"""Loop protection for automatic mail: who must never get a greeting, note or survey.

The outbound stage asks :func:`automatic_mail_block` before it sends a
greeting, an out-of-hours note or a CSAT survey, whatever the stage that
requested it decided, because a single automatic answer to an autoresponder,
a bounce or a mailing list can start a loop that fills both mailboxes. The
answer is a reason to suppress the mail, or None. Agent replies are never
blocked here: a person chose to write them.

The rules look at the recipient's address and at the mail being answered:
the router's classification of it and its own headers (RFC 3834
Auto-Submitted, Precedence, the RFC 2369/2919 list headers, Exchange's
X-Auto-Response-Suppress, a null Return-Path). The module does no IO.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = ["AUTOMATED_KINDS", "automatic_mail_block", "read_headers", "unattended_address_reason"]

# Message kinds from the router that no automatic mail may answer.
AUTOMATED_KINDS = frozenset({"auto_reply", "bounce", "list", "forwarding_confirmation"})

# Local parts that no person reads, or that belong to list software.
_UNATTENDED_LOCAL_PART = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?"
    r"|auto[-_.]?(?:reply|responder)|notifications?|daemon|listserv|majordomo|mailman"
    r"|owner-.+|.+-(?:request|owner|bounces?))(?:[-+_.=].*)?$")

# First domain labels of list and group hosts (lists.example.org,
# groups.example.com) and whole domains of group services.
_LIST_HOST_LABELS = frozenset({"lists", "list", "groups", "mailman", "listserv"})
_GROUP_DOMAINS = frozenset({"googlegroups.com"})

# Headers that only list and group software adds (RFC 2369, RFC 2919, Google Groups).
_LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help", "mailing-list",
                 "x-mailing-list", "x-google-group-id", "x-beenthere")
_AUTORESPONDER_HEADERS = ("x-autoreply", "x-autorespond", "x-autoreply-from", "x-mail-autoreply")
_AUTOMATED_PRECEDENCE = frozenset({"bulk", "list", "junk", "auto_reply"})
_SUPPRESS_TOKENS = frozenset({"all", "autoreply", "oof"})


def unattended_address_reason(address: str, *, own_domains: Iterable[str] = ()) -> str | None:
    """Return why no automatic mail may go to ``address``, or None when it may.

    ``own_domains`` are domains whose mail ends up back in messagehub (the
    inbound domain, the inbox's own domain is not one of them).
    """
    if "@" not in address:
        return f"recipient {address!r} is not an email address"
    local, domain = address.lower().rsplit("@", 1)

    if domain in {own.lower() for own in own_domains}:
        return f"recipient {address} is one of messagehub's own addresses"
    if _UNATTENDED_LOCAL_PART.match(local):
        return f"recipient {address} is a no-reply, bounce or list-software address"
    if domain in _GROUP_DOMAINS or domain.split(".", 1)[0] in _LIST_HOST_LABELS:
        return f"recipient {address} is a mailing-list or group address"
    return None


def read_headers(raw: bytes) -> Message:
    """Return the header fields of a raw mail, without reading its body."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end + 2]
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def automatic_mail_block(recipient: str, *, answered_kind: str | None,
                         answered_headers: Message | None,
                         own_domains: Iterable[str] = ()) -> str | None:
    """Return why an automatic mail to ``recipient`` must be suppressed, or None.

    ``answered_kind`` and ``answered_headers`` describe the mail the automatic
    mail answers (the customer's latest mail); both are None for a survey,
    which answers the resolution, not a mail.
    """
    reason = unattended_address_reason(recipient, own_domains=own_domains)
    if reason:
        return reason
    if answered_kind in AUTOMATED_KINDS:
        return f"the mail it answers is classified as {answered_kind}"
    if answered_headers is not None:
        return _automated_headers_reason(answered_headers)
    return None


def _automated_headers_reason(headers: Message) -> str | None:
    auto_submitted = _value(headers, "auto-submitted")
    if auto_submitted and auto_submitted.split(";")[0].split("(")[0].strip() != "no":
        return f"the mail it answers has Auto-Submitted: {auto_submitted}"

    precedence = re.sub(r"\(.*?\)", "", _value(headers, "precedence")).strip()
    if precedence in _AUTOMATED_PRECEDENCE:
        return f"the mail it answers has Precedence: {precedence}"

    for name in _LIST_HEADERS:
        if headers.get(name) is not None:
            return f"the mail it answers came through a list or group ({name} header)"
    for name in _AUTORESPONDER_HEADERS:
        if _value(headers, name) not in ("", "no", "false", "0"):
            return f"the mail it answers is an autoresponse ({name} header)"

    suppress = {token.strip() for token in _value(headers, "x-auto-response-suppress").split(",")}
    if suppress & _SUPPRESS_TOKENS:
        return "the mail it answers asks for no automatic replies (X-Auto-Response-Suppress)"
    if _value(headers, "return-path").replace(" ", "") == "<>":
        return "the mail it answers has a null Return-Path, as bounces do"
    return None


def _value(headers: Message, name: str) -> str:
    value = headers.get(name)
    return str(value).strip().lower() if value is not None else ""
