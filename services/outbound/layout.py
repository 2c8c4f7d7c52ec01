"""The frame of an outgoing HTML body: the inbox's avatar above, its help center below.

The outbound stage passes every body through :func:`frame_html` before
compose.build_mail wraps it in a document. Automatic texts carry the
help-center link in their own wording (the ``{help_center_url}``
placeholder), so only agent replies get the footer link. Only https URLs
are used: an http image is blocked or flagged by most clients, and any
other scheme has no place in a mail.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

__all__ = ["frame_html", "https_url"]

AVATAR_SIZE_PX = 48
_HELP_CENTER_LABEL = {"en": "Help center", "ja": "ヘルプセンター"}


def https_url(value: str | None) -> str | None:
    """Return ``value`` when it is an absolute https URL without spaces, else None."""
    if not value:
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or any(c.isspace() for c in value):
        return None
    return value


def frame_html(body_html: str, *, inbox_name: str, avatar_url: str | None,
               help_center_url: str | None, locale: str, help_center_footer: bool) -> str:
    """Return ``body_html`` with the avatar line above and, if asked, the help-center line below."""
    lines = []
    avatar = https_url(avatar_url)
    if avatar:
        lines.append(
            f'<div><img src="{html.escape(avatar)}" alt="{html.escape(inbox_name)}" '
            f'width="{AVATAR_SIZE_PX}" height="{AVATAR_SIZE_PX}" '
            f'style="border-radius:{AVATAR_SIZE_PX // 2}px"></div>')
    lines.append(body_html)

    help_center = https_url(help_center_url)
    if help_center and help_center_footer:
        label = _HELP_CENTER_LABEL.get(locale.replace("_", "-").split("-")[0].lower(),
                                       _HELP_CENTER_LABEL["en"])
        link = html.escape(help_center)
        lines.append(f'<div><br></div>\n<div style="color:#666666">{html.escape(label)}: '
                     f'<a href="{link}">{link}</a></div>')
    return "\n".join(lines)
