"""Attachments of a message, at the URLs the router writes into its HTML.

The router stores each attachment's decoded bytes in the raw mail store
under their SHA-256 and rewrites ``cid:`` images of an HTML body to
``/v1/messages/{message}/attachments/{sha256}``. This handler serves them
to any token that may read the message's conversation.

Mail content is untrusted. Only raster image types the HTML may show are
served inline, under their own type. Everything else (SVG, HTML, PDF...)
goes out as ``application/octet-stream`` with ``Content-Disposition:
attachment``, so a browser saves it instead of rendering it on the API's
origin. Every answer carries ``nosniff`` and a sandboxing CSP.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.api import access
from services.api.errors import not_found
from services.api.state import pool

INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


async def get_attachment(request: web.Request) -> web.Response:
    digest = request.match_info["sha256"].lower()

    async with pool(request).connection() as conn:
        message = await access.message_for(conn, request)
        attachment = _attachment_of(message, digest)
        cursor = await conn.execute("SELECT content FROM raw_mails WHERE sha256 = %s", (digest,))
        stored = await cursor.fetchone()
    if stored is None:
        raise not_found("attachment", digest)

    return web.Response(body=bytes(stored["content"]), headers=_headers(attachment))


def _attachment_of(message: dict[str, Any], digest: str) -> dict[str, Any]:
    if _SHA256.fullmatch(digest):
        for attachment in message["attachments"]:
            if attachment.get("sha256") == digest:
                return dict(attachment)
    raise not_found("attachment", digest)


def _headers(attachment: dict[str, Any]) -> dict[str, str]:
    content_type = str(attachment.get("content_type") or "").lower()
    filename = str(attachment.get("filename") or "attachment")
    inline = content_type in INLINE_TYPES
    disposition = "inline" if inline else "attachment"
    return {
        "Content-Type": content_type if inline else "application/octet-stream",
        # RFC 6266 with RFC 5987's encoding, so any file name is safe in the header.
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        # The URL names the bytes by their digest, so they never change.
        "Cache-Control": "private, max-age=31536000, immutable",
    }
