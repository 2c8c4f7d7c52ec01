"""Threading decisions of the router, as pure functions.

The router stage calls these functions to learn which keys to look up,
in which order, and whether a conversation it found may take the mail. It
runs the lookups against its tables itself. The rules, scoped to one inbox:

1. A reply address that messagehub issued (``reply+<token>@<inbound
   domain>``) in To, Cc, Delivered-To or the envelope names the
   conversation.
2. In-Reply-To, then every References id newest first, matched against the
   thread keys of the inbox: the Message-IDs of its messages, incoming and
   outgoing, and every id those messages referred to. Newest first matters
   because Outlook puts an id the inbox never saw (a reply sent from the
   mail client) in In-Reply-To while an older References entry still names
   our thread. Keeping referred ids as keys joins two replies whose shared
   root the inbox never received.
3. The mail's own Message-ID: a reply that arrived first already named it.
4. A bounded subject fallback: the most recent conversation of the same
   correspondent (the contact, or the mailing list for list mail) with the
   same normalized subject, active within the inbox's window, where the new
   mail or the conversation's first mail is a reply. It never joins mail of
   two different contacts.
5. Otherwise a new conversation.

Ids are validated before they are trusted. ``mime.parse_mail`` already
drops values without "@", free text, and addresses written where an id
belongs ("Message from Name <address>"). A conversation found through
rules 1 to 3 takes the mail only if the mail is connected to its people,
because ids travel with every copy of a mail and can be quoted by anyone:

- A key that messagehub issued (a reply token, or a Message-ID of our own
  domain) was sent only to the conversation's participants, so the sender
  (From or Sender) must be one of them.
- Any other key (a customer's Message-ID, an unknown root) is accepted when
  the sender is a participant, when the mail is addressed to one (To or
  Cc, leaving out the inbox's own addresses), or when it comes from the same
  mailing list. This keeps reply-all and list threads whole.
- A bounce is accepted when one of its failed recipients is a participant:
  only mail we sent to them can bounce back to us.

A stranger who quotes another conversation's ids or reply token therefore
starts a conversation of their own. The price is that a customer who
answers from a different address, without copying anyone of the
conversation, also starts a new one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

REPLY_LOCAL_PART_PREFIX = "reply+"
# Longer subject keys are stored as their digest: a btree index row must stay
# under about a third of PostgreSQL's 8 KiB page (2704 bytes).
MAX_SUBJECT_KEY_BYTES = 1000
_TOKEN_RE = re.compile(r"^[a-z2-7]{16,64}$")

# The rule that placed a message, as stored in messages.threaded_by.
RULE_REPLY_TOKEN = "reply_token"
RULE_IN_REPLY_TO = "in_reply_to"
RULE_REFERENCES = "references"
RULE_OWN_MESSAGE_ID = "own_message_id"
RULE_SUBJECT = "subject"
RULE_NEW = "new"


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


def is_our_id(message_id: str, message_id_domain: str) -> bool:
    """Tell whether a Message-ID was generated by messagehub."""
    return message_id.rpartition("@")[2].lower() == message_id_domain.lower()


# ---------------------------------------------------------------------------
# Candidates and trust
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A conversation that a key of the mail points to."""

    conversation_id: str
    key: str  # the reply token or Message-ID that found it
    rule: str  # one of the RULE_* names
    ours: bool  # the key is a reply token or a Message-ID that messagehub issued


@dataclass(frozen=True)
class Parties:
    """The addresses of a mail that the trust check compares with participants.

    All addresses are lowercased; the inbox's own addresses are left out.
    """

    senders: frozenset[str]  # From and Sender
    recipients: frozenset[str]  # To and Cc
    list_key: str | None  # participant key of the mailing list, "list:<id>"
    failed_recipients: frozenset[str] | None  # set for bounces only


def list_participant(list_id: str) -> str:
    """Return the participant key that stands for a mailing list."""
    return f"list:{list_id}"


def is_trusted(candidate: Candidate, parties: Parties, participants: frozenset[str]) -> bool:
    """Tell whether the conversation of ``candidate`` may take the mail.

    ``participants`` are the conversation's participant keys among the
    mail's addresses (the stage looks up only those).
    """
    if parties.failed_recipients is not None:
        return bool(parties.failed_recipients & participants)
    if parties.senders & participants:
        return True
    if candidate.ours:
        return False
    if parties.list_key is not None and parties.list_key in participants:
        return True
    return bool(parties.recipients & participants)


def choose(candidates: Iterable[Candidate], parties: Parties,
           participants: Mapping[str, frozenset[str]]) -> tuple[Candidate | None, list[Candidate]]:
    """Return the first trusted candidate and the ones rejected before it.

    ``participants`` maps a conversation id to its participant keys among
    the mail's addresses.
    """
    rejected: list[Candidate] = []
    for candidate in candidates:
        known = participants.get(candidate.conversation_id, frozenset())
        if is_trusted(candidate, parties, known):
            return candidate, rejected
        rejected.append(candidate)
    return None, rejected


# ---------------------------------------------------------------------------
# Subject fallback
# ---------------------------------------------------------------------------

# Reply and forward prefixes of common clients, in several languages, and
# counters such as "Re[2]:" or "Re(2):". "R:" is Italian Outlook's reply.
_REPLY_PREFIX = re.compile(
    r"^(?:re|r|fw|fwd|aw|wg|sv|vs|antw|antwort|rif|tr|res|enc|odp|pd|rv|ynt|"
    r"回复|答复|回覆|转发|轉寄|返信|転送)\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*:\s*",
    re.I,
)
# A list tag such as "[p5ml]" or "[notmuch]" before or between prefixes.
_LIST_TAG = re.compile(r"^\[[^\[\]]{1,40}\]\s*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class NormalizedSubject:
    text: str  # without prefixes and list tags, case-folded; "" when nothing is left
    is_reply: bool  # a reply or forward prefix was removed


def normalize_subject(subject: str) -> NormalizedSubject:
    """Strip reply and forward prefixes and list tags, then case-fold.

    NFKC first, so the full-width "Ｒｅ：" of Japanese clients reads as
    "Re:".
    """
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", subject)).strip()
    is_reply = False

    while True:
        prefix = _REPLY_PREFIX.match(text)
        if prefix:
            is_reply = True
            text = text[prefix.end():]
            continue
        tag = _LIST_TAG.match(text)
        if tag and tag.end() < len(text):
            text = text[tag.end():]
            continue
        break

    return NormalizedSubject(text=text.strip().casefold(), is_reply=is_reply)


def subject_key(correspondent: str, subject: str) -> str | None:
    """Return the key under which the subject fallback finds a conversation.

    ``correspondent`` is the contact's address, or the list's participant key
    for list mail. None when the subject is empty after normalization,
    because an empty subject carries no thread information.
    """
    normalized = normalize_subject(subject)
    if not normalized.text:
        return None
    key = f"{correspondent.lower()}\n{normalized.text}"
    if len(key.encode("utf-8")) > MAX_SUBJECT_KEY_BYTES:
        # A digest keeps equal keys equal and fits the index.
        return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key


def subject_window_start(arrived_at: datetime, window_days: int) -> datetime | None:
    """Return the oldest last-message time the subject fallback accepts; None when it is off."""
    if window_days <= 0:
        return None
    return arrived_at - timedelta(days=window_days)


def starts_new_conversation(status: str, last_message_at: datetime, arrived_at: datetime,
                            new_conversation_after_days: int | None) -> bool:
    """Tell whether a mail for a resolved conversation starts a new one instead of reopening it."""
    if status != "resolved" or new_conversation_after_days is None:
        return False
    return arrived_at - last_message_at > timedelta(days=new_conversation_after_days)
