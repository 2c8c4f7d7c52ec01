"""The Kafka topics of messagehub and the record each one carries.

Every topic is keyed by inbox id, so one inbox's records stay in order on
one partition. ``messagehub up`` (and the operators' KafkaTopic resources in
production) create them; no service relies on auto-creation.
"""

from __future__ import annotations

MAIL_RECEIVED = "mail.received"
CONVERSATION_EVENTS = "conversation.events"
OUTBOUND_REQUESTS = "outbound.requests"
MAIL_SENT = "mail.sent"
MAIL_FAILED = "mail.failed"
ROUTER_DEAD_LETTER = "router.dead-letter"
ASSIGN_DEAD_LETTER = "assign.dead-letter"
OUTBOUND_DEAD_LETTER = "outbound.dead-letter"

RECORD_OF_TOPIC = {
    MAIL_RECEIVED: "MailReceived",
    CONVERSATION_EVENTS: "ConversationEvent",
    OUTBOUND_REQUESTS: "OutboundRequest",
    MAIL_SENT: "MailSent",
    MAIL_FAILED: "MailFailed",
    ROUTER_DEAD_LETTER: "DeadLetter",
    ASSIGN_DEAD_LETTER: "DeadLetter",
    OUTBOUND_DEAD_LETTER: "DeadLetter",
}

# Ingest replicas join one consumer group on this topic and sync the IMAP
# inboxes whose id, as a key, falls on the partitions they are assigned. It
# carries no records; its partitions are only the unit of ownership.
IMAP_ASSIGNMENT = "ingest.imap-assignment"
IMAP_ASSIGNMENT_PARTITIONS = 16

ALL_TOPICS = (*RECORD_OF_TOPIC, IMAP_ASSIGNMENT)
