"""Deterministic ids for records and events.

Every event id is a UUIDv5 of the fact it records, so a fact emitted twice
(after a crash, a redelivery or a replay) carries the same id, and every
record id derived from its source mail is stable across a replay of the
topics into an empty database.
"""

from __future__ import annotations

import hashlib
import hmac
import base64
import uuid

# A fixed namespace of our own; changing it would change every id.
MESSAGEHUB_NAMESPACE = uuid.UUID("6f1c2a7e-3b0d-5a44-9c1e-8d2f4b6a9e10")


def derive_id(*parts: str) -> str:
    """Return the UUIDv5 of ``parts`` joined with ``/``."""
    return str(uuid.uuid5(MESSAGEHUB_NAMESPACE, "/".join(parts)))


def new_id() -> str:
    """Return a random UUID for records that no source fact determines."""
    return str(uuid.uuid4())


def reply_token(secret: str, conversation_id: str) -> str:
    """Return the unguessable token of a conversation's reply address.

    It is an HMAC of the conversation id, so a replay gives the same token
    while nobody without the secret can compute one.
    """
    digest = hmac.new(secret.encode(), conversation_id.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:15]).decode().lower()


def attachment_path(message_id: str, sha256: str) -> str:
    """Return the API path that serves one attachment of a message.

    The router writes it into HTML bodies for inline images, and the API's
    message JSON gives it for every attachment.
    """
    return f"/v1/messages/{message_id}/attachments/{sha256}"
