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

ALL_TOPICS = tuple(RECORD_OF_TOPIC)
