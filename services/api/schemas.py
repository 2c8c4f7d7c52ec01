"""JSON Schemas of the API's request and response bodies.

:mod:`services.api.openapi` publishes them under ``components/schemas`` and
:mod:`services.api.validation` checks request bodies against the same
dicts. Request schemas are self-contained (no ``$ref``), so each can be
checked on its own; ``x-error`` replaces the generic message of a failed
``pattern`` or ``format``.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

LOCALES = ("en", "ja")
SENDER_NAME_STYLES = ("friendly", "professional")
AVAILABILITIES = ("online", "busy", "offline")
CHOOSERS = ("round_robin", "balanced")
IMAP_SECURITY = ("tls", "starttls", "none")
SMTP_ENCRYPTIONS = ("auto", "tls", "starttls", "none")
SMTP_AUTH_METHODS = ("auto", "login", "plain", "cram-md5")
AFTER_IMPORT = ("leave", "mark_read", "move")
SCOPES = ("admin", "agent", "service")
STATUSES = ("open", "resolved")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONNECTION_TEST_REASONS = ("dns", "refused", "timeout", "tls_mismatch", "certificate",
                           "authentication", "app_password", "mechanism", "unreachable",
                           "protocol", "config")


def _string(max_length: int = 200, *, min_length: int = 0, nullable: bool = False,
            error: str | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": ["string", "null"] if nullable else "string",
                      "maxLength": max_length, **extra}
    if error:
        schema["x-error"] = error
    if min_length:
        schema["minLength"] = min_length
    return schema


def _enum(values: tuple[str, ...], **extra: Any) -> Schema:
    return {"type": "string", "enum": list(values), **extra}


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] = (),
            description: str = "", closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


EMAIL = _string(254, min_length=3, pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$",
                error="must be an email address such as support@example.com")
UUID = {"type": "string", "format": "uuid", "x-error": "must be a UUID"}
HOST = _string(253, min_length=1, pattern=r"^[A-Za-z0-9.:\[\]_-]+$",
               description="Host name or IP address of the server.",
               error="must be a host name such as imap.example.com, without spaces, "
                             "scheme or port")
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
HTTPS_URL = _string(2000, nullable=True, pattern=r"^https?://[^\s]+$",
                    error="must be an http:// or https:// URL")
TIME_OF_DAY = {"type": "string", "pattern": r"^\d{1,2}:\d{2}$",
               "x-error": "must be a time HH:MM, e.g. 09:00 (24:00 closes a day)"}
INTERVALS = {"type": "array", "maxItems": 12,
             "items": {"type": "array", "prefixItems": [TIME_OF_DAY, TIME_OF_DAY],
                       "minItems": 2, "maxItems": 2},
             "description": "Opening intervals as [opens, closes] pairs; [] is closed, "
                            "[[\"00:00\", \"24:00\"]] open all day; a closing time at or "
                            "before the opening time ends on the next day."}
PASSWORD = _string(1000, min_length=1, writeOnly=True,
                   description="Written only; never returned. Omit to keep the stored one.")

# Names shown in the From of the mail we send: one line, no control characters.
ONE_LINE = {"pattern": "^[^\\u0000-\\u001f\\u007f]*$",
            "x-error": "must be one line without control characters"}

INBOX_CREATE = _object({
    "name": _string(100, min_length=1, description="Unique name of the inbox.", **ONE_LINE),
    "email": {**EMAIL, "description": "The business address, e.g. support@example.com."},
    "locale": _enum(LOCALES, description="Language of the automatic texts."),
}, required=("name", "email"))

INBOX_SETTINGS = _object({
    "name": _string(100, min_length=1, **ONE_LINE),
    "email": EMAIL,
    "avatar_url": HTTPS_URL,
    "greeting_enabled": {"type": "boolean"},
    "greeting_text": _string(5000, nullable=True,
                             description="Custom greeting; null for the default text."),
    "csat_enabled": {"type": "boolean"},
    "csat_text": _string(5000, nullable=True),
    "help_center_url": HTTPS_URL,
    "sender_name_style": _enum(SENDER_NAME_STYLES, description=(
        "friendly: \"Jane from Acme\"; professional: \"Acme\".")),
    "business_name": _string(100, nullable=True, **ONE_LINE),
    "locale": _enum(LOCALES),
}, description="The Settings tab. Fields left out keep their value.")

COLLABORATORS = _object({
    "agents": {"type": "array", "items": {"type": "string", "maxLength": 254},
               "maxItems": 500, "uniqueItems": True,
               "description": "Agent ids or email addresses; replaces the collaborators."},
    "auto_assign_enabled": {"type": "boolean"},
    "auto_assign_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000,
                          "description": "Open conversations per agent; null for no limit."},
    "assign_chooser": _enum(CHOOSERS),
}, description="The Collaborators tab. Fields left out keep their value.")

BUSINESS_HOURS = _object({
    "enabled": {"type": "boolean"},
    "time_zone": _string(64, min_length=1, description="IANA time zone, e.g. Europe/Berlin."),
    "hours": _object({day: INTERVALS for day in WEEKDAYS},
                     description="Weekdays named here replace their intervals."),
    "holidays": {"type": "array", "maxItems": 366, "uniqueItems": True,
                 "items": {"type": "string", "format": "date",
                           "x-error": "must be a date YYYY-MM-DD"}},
    "out_of_hours_enabled": {"type": "boolean"},
    "out_of_hours_text": _string(5000, nullable=True),
}, description="The Business hours tab. Fields left out keep their value.")

IMAP_SETTINGS = _object({
    "enabled": {"type": "boolean", "description": "Sync the inbox from this account."},
    "host": HOST,
    "port": PORT,
    "username": _string(254, min_length=1),
    "password": PASSWORD,
    "security": _enum(IMAP_SECURITY, description=(
        "tls: implicit TLS (SSL), usually port 993; starttls: usually 143; none: plaintext, "
        "for a server on loopback only.")),
    "folders": {"type": "array", "minItems": 1, "maxItems": 50, "uniqueItems": True,
                "items": _string(200, min_length=1)},
    "after_import": _enum(AFTER_IMPORT),
    "move_to": _string(200, nullable=True),
}, description="IMAP of the Configuration tab. Fields left out keep their value.")

SMTP_SETTINGS = _object({
    "enabled": {"type": "boolean", "description": "Send the inbox's mail through this server."},
    "host": HOST,
    "port": PORT,
    "username": _string(254, description="Empty for a server without AUTH."),
    "password": PASSWORD,
    "helo_domain": _string(253, nullable=True),
    "encryption": _enum(SMTP_ENCRYPTIONS, description=(
        "auto: implicit TLS on 465, STARTTLS elsewhere; tls (SSL); starttls; none (loopback).")),
    "auth_method": _enum(SMTP_AUTH_METHODS),
    "max_sends_per_minute": {"type": ["integer", "null"], "minimum": 1, "maximum": 100000},
    "save_to_sent": {"type": "boolean"},
}, description="SMTP of the Configuration tab; needs IMAP first. Fields left out keep their "
               "value.")

AGENT_CREATE = _object({
    "name": _string(100, min_length=1, **ONE_LINE),
    "email": EMAIL,
    "availability": _enum(AVAILABILITIES),
    "inboxes": {"type": "array", "items": _string(200, min_length=1), "maxItems": 500,
                "description": "Names or ids of inboxes to add the agent to."},
}, required=("name", "email"))

AVAILABILITY = _object({"availability": _enum(AVAILABILITIES)}, required=("availability",))

REPLY = _object({
    "text": _string(200_000, min_length=1),
    "html": _string(400_000, nullable=True),
    "agent": _string(254, description="Agent id or email; an agent token replies as itself."),
}, required=("text",))

ASSIGN = _object({
    "agent": _string(254, min_length=1, description="Agent id or email."),
    "exceed_limit": {"type": "boolean", "description": "Assign even at the inbox's limit."},
}, required=("agent",))

UNASSIGN = _object({
    "requeue": {"type": "boolean", "description": "Put it at the back of the queue."},
})

EMPTY = _object({})

TOKEN_CREATE = _object({
    "name": _string(100, min_length=1),
    "scope": _enum(SCOPES),
    "agent": _string(254, description="For scope agent: the agent's id or email."),
}, required=("name", "scope"))

_RESPONSE_OBJECT: Schema = {"type": "object", "additionalProperties": True}

ERROR = _object({"error": _object({
    "code": {"type": "string"},
    "message": {"type": "string"},
    "fields": {"type": "array", "items": _object({"field": {"type": "string"},
                                                   "message": {"type": "string"}})},
}, required=("code", "message"))}, required=("error",))

CONNECTION_TEST_RESULT = _object({
    "ok": {"type": "boolean"},
    "reason": {"type": ["string", "null"], "enum": [*CONNECTION_TEST_REASONS, None]},
    "step": {"type": ["string", "null"]},
    "message": {"type": "string"},
    "hint": {"type": ["string", "null"]},
    "seconds": {"type": "number"},
}, required=("ok", "reason", "message", "hint", "seconds"))

COMPONENTS: dict[str, Schema] = {
    "InboxCreate": INBOX_CREATE,
    "InboxSettings": INBOX_SETTINGS,
    "Collaborators": COLLABORATORS,
    "BusinessHours": BUSINESS_HOURS,
    "ImapSettings": IMAP_SETTINGS,
    "SmtpSettings": SMTP_SETTINGS,
    "AgentCreate": AGENT_CREATE,
    "Availability": AVAILABILITY,
    "Reply": REPLY,
    "Assign": ASSIGN,
    "Unassign": UNASSIGN,
    "Empty": EMPTY,
    "TokenCreate": TOKEN_CREATE,
    "Error": ERROR,
    "ConnectionTestResult": CONNECTION_TEST_RESULT,
    "Object": _RESPONSE_OBJECT,
}
