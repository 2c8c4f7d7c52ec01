"""Builders of the event records that more than one stage emits."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from messagehub import ids

CONVERSATION_EVENT_FIELDS = (
    "status", "previous_status", "contact_id", "contact_email", "subject", "message_id",
    "rfc_message_id", "direction", "message_kind", "mail_received_at", "assignee_id",
    "previous_assignee_id", "reason",
    # Added in version 2 of the schema.
    "agent_id", "request_id", "csat_rating", "csat_comment", "error_class", "smtp_code",
    "error_detail")
# Version of schemas/ConversationEvent.avsc; the contract tests keep the two equal.
CONVERSATION_EVENT_SCHEMA_VERSION = 2


def conversation_event(event_type: str, *, fact: str, inbox_id: str, conversation_id: str,
                       occurred_at: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """Return a ConversationEvent record whose id is derived from ``fact``.

    ``fact`` names what happened uniquely within the conversation (for
    example the message id of MESSAGE_ADDED), so emitting it again gives the
    same event id.
    """
    unknown = set(fields) - set(CONVERSATION_EVENT_FIELDS)
    if unknown:
        raise TypeError(f"unknown ConversationEvent fields: {sorted(unknown)}")

    record: dict[str, Any] = {name: None for name in CONVERSATION_EVENT_FIELDS}
    record.update(fields)
    record.update({
        "event_id": ids.derive_id("conversation-event", conversation_id, event_type, fact),
        "type": event_type,
        "occurred_at": occurred_at or datetime.now(timezone.utc),
        "inbox_id": inbox_id,
        "conversation_id": conversation_id,
        "schema_version": CONVERSATION_EVENT_SCHEMA_VERSION,
    })
    return record
