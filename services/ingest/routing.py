"""Which inboxes a mail is for: envelope recipients first, then headers.

The forwarding receiver and the HTTP upload call :func:`header_addresses`
and :func:`normalize_address`. A provider that forwards mail puts the
forwarding address in the SMTP envelope, but keeps the customer's original
To and Cc. A relay that hands mail on (or a webhook that has no envelope)
loses the envelope, and then only headers that forwarders add still name the
forwarding address: Delivered-To, X-Forwarded-To and X-Original-To.
"""

from __future__ import annotations

import email.policy
import re
from email.parser import BytesHeaderParser

from services.ingest.summary import header_block

# Most specific first: these name the address the mail was delivered to,
# while To and Cc name the addresses the customer wrote.
ROUTING_HEADERS = ("Delivered-To", "X-Forwarded-To", "X-Original-To", "To", "Cc")

# An address inside a header value, with or without angle brackets. Display
# names are not parsed: only an exact forwarding address ever matches.
_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]@]+@[^\s<>,;:\"()\[\]@]+")


def normalize_address(address: str) -> str:
    """Return ``address`` lower-cased, without angle brackets or a ``+tag``.

    Forwarding addresses are generated in lower case without ``+``, so a
    provider that adds a subaddress still reaches the inbox.
    """
    address = address.strip().strip("<>").strip().lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    local = local.split("+", 1)[0] or local
    return f"{local}@{domain}"


def domain_of(address: str) -> str:
    """Return the domain of ``address`` in lower case, '' when it has none."""
    return address.rpartition("@")[2].strip().strip(">").lower()


def header_addresses(raw: bytes) -> list[str]:
    """Return the normalized addresses of the routing headers, most specific first."""
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block(raw))
    values: dict[str, list[str]] = {}
    for name, value in headers.raw_items():
        values.setdefault(name.lower(), []).append(value)

    found: list[str] = []
    for name in ROUTING_HEADERS:
        for value in values.get(name.lower(), []):
            for match in _ADDRESS.findall(value):
                address = normalize_address(match)
                if address not in found:
                    found.append(address)
    return found
