"""The satisfaction survey page that CSAT mails link to, and its answer endpoint.

``services/api`` mounts these routes with :func:`add_routes`. They need no
API token, because the customer has none. The credential is the token in
the link, an HMAC of the conversation id under the server secret that the
outbound service makes, and the database keeps only its SHA-256. A GET
shows the form and never records anything, so link
scanners that open every URL in a mail cannot vote; only an explicit POST
of the form stores a rating. Each survey takes one answer before it expires;
the answer is stored with a ``CSAT_ANSWERED`` conversation event in the same
transaction (through the outbox, which the stage services publish).
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from messagehub import outbox, topics
from messagehub.events import conversation_event
from messagehub.settings import Settings

log = logging.getLogger(__name__)

PATH_PREFIX = "/csat/"
MAX_COMMENT_CHARACTERS = 2000
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
_POOL_KEY = web.AppKey("csat_pool", AsyncConnectionPool)

# Page texts per locale; the survey row records the inbox's locale.
_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "How did we do?",
        "question": "How satisfied are you with the help you got from {inbox}?",
        "rating_1": "1 – Very dissatisfied", "rating_2": "2 – Dissatisfied",
        "rating_3": "3 – Neutral", "rating_4": "4 – Satisfied", "rating_5": "5 – Very satisfied",
        "comment": "Anything you would like to add? (optional)",
        "submit": "Send my rating",
        "missing_rating": "Please choose a rating from 1 to 5.",
        "comment_too_long": "Please keep the comment under {limit} characters.",
        "thanks": "Thank you! You rated {rating} out of 5.",
        "not_found": "This survey link is not valid. Please use the link from the email.",
        "expired": "This survey has expired. Thank you for your time.",
    },
    "ja": {
        "title": "アンケートご協力のお願い",
        "question": "{inbox}の対応にどの程度ご満足いただけましたか。",
        "rating_1": "1 – 不満", "rating_2": "2 – やや不満", "rating_3": "3 – どちらでもない",
        "rating_4": "4 – やや満足", "rating_5": "5 – 満足",
        "comment": "ご意見・ご感想（任意）",
        "submit": "回答を送信する",
        "missing_rating": "1から5の評価をお選びください。",
        "comment_too_long": "ご意見は{limit}文字以内でご入力ください。",
        "thanks": "ご回答ありがとうございました。評価：{rating}（5段階）",
        "not_found": "このアンケートのリンクは無効です。メールに記載のリンクをご利用ください。",
        "expired": "このアンケートの回答期限は終了しました。ご協力ありがとうございました。",
    },
}

# The page loads nothing and posts only to itself; the token in the URL is
# kept out of Referer headers and caches.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}


def is_public_path(path: str) -> bool:
    """Tell whether ``path`` belongs to the survey, which needs no API token."""
    return path.startswith(PATH_PREFIX)


def add_routes(app: web.Application, settings: Settings) -> None:
    """Add the survey page and its answer endpoint, and the pool they use, to ``app``."""
    async def pool_context(app: web.Application) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=2, open=False,
                                   kwargs={"row_factory": dict_row, "autocommit": False})
        await pool.open(wait=True, timeout=30)
        app[_POOL_KEY] = pool
        yield
        await pool.close()

    app.cleanup_ctx.append(pool_context)
    app.router.add_get(PATH_PREFIX + "{token}", show_survey)
    app.router.add_post(PATH_PREFIX + "{token}", answer_survey)


async def show_survey(request: web.Request) -> web.Response:
    """Show the form, or the thanks when answered, without recording anything."""
    token = request.match_info["token"]
    async with request.app[_POOL_KEY].connection() as conn:
        survey = await _find_survey(conn, token)
    if survey is None:
        return _message_page("en", "not_found", status=404)
    if survey["answered_at"] is not None:
        return _message_page(survey["locale"], "thanks", rating=str(survey["rating"]))
    if survey["expired"]:
        return _message_page(survey["locale"], "expired", status=410)

    preselected = request.query.get("rating", "")
    return _form_page(survey, preselected=preselected if preselected in "12345" else "")


async def answer_survey(request: web.Request) -> web.Response:
    """Store the posted rating and comment once, emit CSAT_ANSWERED, then show the thanks."""
    token = request.match_info["token"]
    form = await request.post()
    rating_text = str(form.get("rating", ""))
    comment = str(form.get("comment", "")).strip()

    async with request.app[_POOL_KEY].connection() as conn:
        survey = await _find_survey(conn, token)
        if survey is None:
            return _message_page("en", "not_found", status=404)
        if survey["answered_at"] is None and not survey["expired"]:
            error = _invalid_answer(rating_text, comment)
            if error:
                return _form_page(survey, preselected=rating_text, error=error, comment=comment,
                                  status=400)
            await _store_answer(conn, survey, int(rating_text), comment or None)

    # Post/Redirect/Get: reloading the thanks page does not post again.
    raise web.HTTPSeeOther(location=PATH_PREFIX + token)


def _invalid_answer(rating_text: str, comment: str) -> str | None:
    if rating_text not in ("1", "2", "3", "4", "5"):
        return "missing_rating"
    if len(comment) > MAX_COMMENT_CHARACTERS:
        return "comment_too_long"
    return None


async def _find_survey(conn: AsyncConnection[Any], token: str) -> dict[str, Any] | None:
    if not _TOKEN.fullmatch(token):
        return None
    cursor = await conn.execute(
        "SELECT s.*, s.expires_at <= now() AS expired, i.name AS inbox_name, "
        "ct.email AS contact_email, c.contact_id FROM csat_surveys s "
        "JOIN inboxes i ON i.id = s.inbox_id JOIN conversations c ON c.id = s.conversation_id "
        "LEFT JOIN contacts ct ON ct.id = c.contact_id WHERE s.token_sha256 = %s",
        (hashlib.sha256(token.encode()).hexdigest(),))
    survey = await cursor.fetchone()
    await conn.rollback()
    return survey


async def _store_answer(conn: AsyncConnection[Any], survey: dict[str, Any], rating: int,
                        comment: str | None) -> None:
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE csat_surveys SET rating = %s, comment = %s, answered_at = now() "
            "WHERE conversation_id = %s AND answered_at IS NULL AND expires_at > now()",
            (rating, comment, survey["conversation_id"]))
        if cursor.rowcount == 0:
            return
        conversation_id, inbox_id = str(survey["conversation_id"]), str(survey["inbox_id"])
        await outbox.add(conn, topics.CONVERSATION_EVENTS, inbox_id, "ConversationEvent",
                         conversation_event(
                             "CSAT_ANSWERED", fact="csat-answered", inbox_id=inbox_id,
                             conversation_id=conversation_id, csat_rating=rating,
                             csat_comment=comment,
                             contact_id=str(survey["contact_id"]) if survey["contact_id"] else None,
                             contact_email=survey["contact_email"]))
    log.info("api: inbox %s conversation %s: survey answered with rating %d", inbox_id,
             conversation_id, rating)


def _texts(locale: str) -> dict[str, str]:
    return _TEXTS.get(locale.replace("_", "-").split("-")[0].lower(), _TEXTS["en"])


def _form_page(survey: dict[str, Any], *, preselected: str, error: str | None = None,
               comment: str = "", status: int = 200) -> web.Response:
    texts = _texts(survey["locale"])
    options = "\n".join(
        f'<label class="rating"><input type="radio" name="rating" value="{value}" required'
        f'{" checked" if str(value) == preselected else ""}> {html.escape(texts[f"rating_{value}"])}'
        "</label>" for value in range(1, 6))
    alert = (f'<p class="error" role="alert">{html.escape(texts[error].format(limit=MAX_COMMENT_CHARACTERS))}</p>'
             if error else "")
    body = f"""<h1>{html.escape(texts["title"])}</h1>
{alert}
<form method="post">
<fieldset><legend>{html.escape(texts["question"].format(inbox=survey["inbox_name"]))}</legend>
{options}
</fieldset>
<label for="comment">{html.escape(texts["comment"])}</label>
<textarea id="comment" name="comment" rows="5" maxlength="{MAX_COMMENT_CHARACTERS}">{html.escape(comment)}</textarea>
<button type="submit">{html.escape(texts["submit"])}</button>
</form>"""
    return _page(survey["locale"], texts["title"], body, status=status)


def _message_page(locale: str, key: str, *, status: int = 200, rating: str = "") -> web.Response:
    texts = _texts(locale)
    body = f'<h1>{html.escape(texts["title"])}</h1>\n<p id="message">{html.escape(texts[key].format(rating=rating))}</p>'
    return _page(locale, texts["title"], body, status=status)


def _page(locale: str, title: str, body: str, *, status: int) -> web.Response:
    language = "ja" if locale.startswith("ja") else "en"
    document = f"""<!DOCTYPE html>
<html lang="{language}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
fieldset {{ border: 0; padding: 0; margin: 1rem 0; }}
label.rating {{ display: block; padding: .4rem 0; }}
textarea {{ width: 100%; box-sizing: border-box; margin: .5rem 0 1rem; }}
button {{ padding: .6rem 1.2rem; font-size: 1rem; }}
.error {{ color: #a00; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
    return web.Response(text=document, content_type="text/html", charset="utf-8", status=status,
                        headers=_SECURITY_HEADERS)
