"""Threading decisions of the router, as pure functions.

The router asks these functions which keys to look up, in which order, and
then looks them up in its tables. The order is the product's threading
rule: a reply address that messagehub issued names the conversation; then
In-Reply-To; then every References id, newest first, because clients such as
Outlook put an id the inbox never saw (a reply sent from the mail client) in
In-Reply-To while an older References entry still names our thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REPLY_LOCAL_PART_PREFIX = "reply+"
_TOKEN_RE = re.compile(r"^[a-z2-7]{16,64}$")


def reply_address(token: str, inbound_domain: str) -> str:
    """Return the reply address of a conversation token."""
    return f"{REPLY_LOCAL_PART_PREFIX}{token}@{inbound_domain}"


def reply_tokens(addresses: Iterable[str], inbound_domain: str) -> list[str]:
    """Return the conversation tokens named by our reply addresses among ``addresses``."""
    tokens: list[str] = []
    domain = inbound_domain.lower()

    for address in addresses:
        local, _, address_domain = address.strip().lower().rpartition("@")
        if address_domain != domain or not local.startswith(REPLY_LOCAL_PART_PREFIX):
            continue
        token = local[len(REPLY_LOCAL_PART_PREFIX):]
        if _TOKEN_RE.match(token) and token not in tokens:
            tokens.append(token)
    return tokens


def lookup_ids(in_reply_to: Iterable[str], references: Iterable[str]) -> list[str]:
    """Return the Message-IDs to look up, in the order they decide the thread.

    ``references`` is in header order (oldest first); it is searched newest
    first. Each id appears once.
    """
    ordered: list[str] = []
    for message_id in [*in_reply_to, *reversed(list(references))]:
        if message_id not in ordered:
            ordered.append(message_id)
    return ordered


def thread_keys_of(message_id: str | None, in_reply_to: Iterable[str],
                   references: Iterable[str]) -> list[str]:
    """Return every id that should lead later mail to this message's conversation.

    Ids only mentioned in References are kept too: when two replies share a
    root the inbox never received, the root id joins them.
    """
    keys = [message_id] if message_id else []
    for key in [*in_reply_to, *references]:
        if key not in keys:
            keys.append(key)
    return keys
