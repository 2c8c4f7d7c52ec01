"""Customer-facing texts of automatic mail, in English and Japanese, and their rendering.

The outbound service takes a greeting, out-of-hours note or CSAT survey from
default_text, or an inbox's custom text from its settings, fills in the
placeholders with render_auto_text and passes the result to
compose.build_mail. compose also uses text_to_html for replies that have no
HTML of their own, and friendly_sender_name for the From display name.

Templates are plain text with placeholders such as ``{inbox_name}``. A line
with a placeholder that is empty, or one of PLACEHOLDERS that is not given,
is removed. So a template can hold optional lines: the help-center line
disappears for an inbox without a help center, and the salutation for a
customer whose name is unknown.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "LOCALES",
    "PLACEHOLDERS",
    "AutoText",
    "custom_text",
    "default_text",
    "friendly_sender_name",
    "render_auto_text",
    "render_html",
    "render_text",
    "text_to_html",
]

KINDS = ("greeting", "out_of_hours", "csat")
LOCALES = ("en", "ja")
DEFAULT_LOCALE = "en"

# Placeholders the defaults use and the settings screen documents. render_text
# also substitutes any other {name} it is given a value for.
PLACEHOLDERS = ("customer_name", "inbox_name", "next_opening", "survey_url", "help_center_url")
URL_PLACEHOLDERS = ("survey_url", "help_center_url")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Only ASCII URL characters, because Japanese text often follows a URL with
# no space ("https://example.com/faqをご覧ください").
_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_URL_TRAILING_PUNCTUATION = ".,;:!?'"

_LINK = re.compile(_URL.pattern + "|" + "|".join(re.escape("{" + name + "}") for name in URL_PLACEHOLDERS))

# The line an empty text line becomes in HTML, as Gmail's editor writes it.
_HTML_BLANK_LINE = "<div><br></div>"

_Escape = Callable[[str], str]
_BlankTest = Callable[[str], bool]


@dataclass(frozen=True)
class AutoText:
    """An automatic mail's subject for when no reply subject applies, its text and its HTML.

    Before rendering all three are templates. ``html`` is a fragment of one
    line per text line, which compose.build_mail wraps in a document.
    """

    subject_hint: str
    text: str
    html: str


def friendly_sender_name(agent_name: str, organisation: str, locale: str) -> str:
    """Return the friendly-style sender name, such as "Jane from Acme" or "Acme 佐藤"."""
    if not organisation:
        return agent_name
    if _language(locale) == "ja":
        return f"{organisation} {agent_name}"
    return f"{agent_name} from {organisation}"


def default_text(kind: str, locale: str) -> AutoText:
    """Return the default template of ``kind`` in ``locale``, or in English for other locales.

    ``locale`` may be a language tag such as "ja-JP" or "ja_JP". Raises
    ValueError for a kind other than those in KINDS.
    """
    if kind not in KINDS:
        raise ValueError(f"invalid text kind {kind!r}: expected one of {', '.join(KINDS)}")
    subject_hint, text = _DEFAULTS[_language(locale)][kind]
    return custom_text(text, subject_hint=subject_hint)


def custom_text(text: str, *, subject_hint: str = "") -> AutoText:
    """Return an AutoText for a plain-text template, such as an inbox's own greeting."""
    return AutoText(subject_hint=subject_hint, text=text, html=text_to_html(text))


def render_auto_text(auto_text: AutoText, **values: str) -> AutoText:
    """Return ``auto_text`` with its placeholders filled, escaping values in the HTML."""
    return AutoText(
        subject_hint=render_text(auto_text.subject_hint, **values),
        text=render_text(auto_text.text, **values),
        html=render_html(auto_text.html, **values),
    )


def render_text(template: str, **values: str) -> str:
    """Return ``template`` with each ``{name}`` replaced by ``values[name]``.

    A line with a placeholder whose value is empty, whitespace or missing is
    removed, together with a blank line that the removal would leave doubled.
    Missing means not in ``values`` but in PLACEHOLDERS. Other unknown
    placeholders and stray braces are left as written, so a custom text never
    fails to render. Values are inserted once and are not searched for
    placeholders themselves.
    """
    return _render(template, values, escape=_keep, is_blank=_is_blank_text_line)


def render_html(template: str, **values: str) -> str:
    """Return the HTML ``template`` rendered like render_text, with values HTML-escaped."""
    return _render(template, values, escape=_escape_html, is_blank=_is_blank_html_line)


def text_to_html(text: str) -> str:
    """Return an HTML fragment that shows ``text`` with its line breaks and links.

    Each line becomes one ``<div>`` line, and an empty line becomes
    ``<div><br></div>``, so render_html can remove the same lines from the
    HTML as render_text removes from the text. http(s) URLs and the URL
    placeholders become links.
    """
    lines = re.sub(r"\r\n?", "\n", text).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "\n".join(_html_line(line) for line in lines)


def _html_line(line: str) -> str:
    if not line.strip():
        return _HTML_BLANK_LINE
    return f"<div>{_linkify(line)}</div>"


def _linkify(line: str) -> str:
    """Return ``line`` HTML-escaped, with URLs and URL placeholders as links."""
    pieces = []
    position = 0
    for match in _LINK.finditer(line):
        url = _strip_trailing_punctuation(match.group())
        end = match.start() + len(url)
        pieces.append(html.escape(line[position:match.start()]))
        pieces.append(f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
        position = end
    pieces.append(html.escape(line[position:]))
    return "".join(pieces)


def _strip_trailing_punctuation(url: str) -> str:
    """Return ``url`` without the sentence punctuation that usually follows a link.

    A closing parenthesis stays when the URL opened one, as in Wikipedia links.
    """
    while url and (
        url[-1] in _URL_TRAILING_PUNCTUATION or (url[-1] == ")" and url.count("(") < url.count(")"))
    ):
        url = url[:-1]
    return url


def _render(template: str, values: dict[str, str], *, escape: _Escape, is_blank: _BlankTest) -> str:
    output: list[str] = []
    removed_line = False
    for line in template.split("\n"):
        if any(_is_empty(name, values) for name in _PLACEHOLDER.findall(line)):
            removed_line = True
            continue

        # Drop a blank line that follows another, or opens the text, only
        # when a removed line caused it, so the author's own spacing stays.
        if removed_line and is_blank(line) and (not output or is_blank(output[-1])):
            continue
        output.append(_PLACEHOLDER.sub(lambda match: _value(match, values, escape), line))
        removed_line = removed_line and is_blank(line)
    return "\n".join(output)


def _is_empty(name: str, values: dict[str, str]) -> bool:
    if name in values:
        return not values[name].strip()
    return name in PLACEHOLDERS


def _value(match: re.Match[str], values: dict[str, str], escape: _Escape) -> str:
    name = match.group(1)
    if name not in values:
        return match.group()
    return escape(values[name])


def _keep(value: str) -> str:
    return value


def _escape_html(value: str) -> str:
    return html.escape(value, quote=True)


def _is_blank_text_line(line: str) -> bool:
    return not line.strip()


def _is_blank_html_line(line: str) -> bool:
    return not line.strip() or line.strip() == _HTML_BLANK_LINE


def _language(locale: str) -> str:
    """Return the supported language of a tag such as "ja-JP", or DEFAULT_LOCALE."""
    language = locale.replace("_", "-").split("-")[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


# (subject hint, text) per language and kind. Japanese texts use business
# keigo, and carry the customary note that the mail was sent automatically.
_DEFAULTS: dict[str, dict[str, tuple[str, str]]] = {
    "en": {
        "greeting": (
            "We received your message",
            """\
Hi {customer_name},

Thank you for contacting {inbox_name}. We have received your message, and a member of our team will reply as soon as possible.

In the meantime, you may find an answer in our help center: {help_center_url}

If you would like to add anything, simply reply to this email.

Best regards,
{inbox_name}
""",
        ),
        "out_of_hours": (
            "We received your message",
            """\
Hi {customer_name},

Thank you for contacting {inbox_name}. Your message arrived outside our business hours, so our team will reply once we are back.
We will be back on {next_opening}.

In the meantime, you may find an answer in our help center: {help_center_url}

If you would like to add anything, simply reply to this email.

Best regards,
{inbox_name}
""",
        ),
        "csat": (
            "How did we do?",
            """\
Hi {customer_name},

Thank you for contacting {inbox_name}. We hope we were able to help.
Would you take a moment to tell us how we did? Please use this link:

{survey_url}

Your feedback helps us improve our support.

Best regards,
{inbox_name}
""",
        ),
    },
    "ja": {
        "greeting": (
            "お問い合わせを受け付けました",
            """\
{customer_name} 様

この度は{inbox_name}にお問い合わせいただき、誠にありがとうございます。
お問い合わせを受け付けました。内容を確認のうえ、担当者より順次ご連絡いたします。
恐れ入りますが、今しばらくお待ちくださいますようお願い申し上げます。

よくあるご質問は、ヘルプセンター（{help_center_url}）でもご案内しております。

追加でお伝えいただきたいことがございましたら、本メールにそのままご返信ください。

※本メールは自動送信しております。

{inbox_name}
""",
        ),
        "out_of_hours": (
            "お問い合わせを受け付けました（営業時間外）",
            """\
{customer_name} 様

この度は{inbox_name}にお問い合わせいただき、誠にありがとうございます。
ただいま営業時間外のため、営業再開後に担当者より順次ご連絡いたします。
次回の営業開始は{next_opening}です。
ご返信までお時間をいただきますが、何卒ご了承くださいますようお願い申し上げます。

よくあるご質問は、ヘルプセンター（{help_center_url}）でもご案内しております。

追加でお伝えいただきたいことがございましたら、本メールにそのままご返信ください。

※本メールは自動送信しております。

{inbox_name}
""",
        ),
        "csat": (
            "アンケートご協力のお願い",
            """\
{customer_name} 様

この度は{inbox_name}にお問い合わせいただき、誠にありがとうございました。
今後のサポート品質向上のため、今回の対応についてのアンケートにご協力をお願いいたします。
下記のリンクからご回答いただけます。

{survey_url}

お忙しいところ恐れ入りますが、ご協力のほどよろしくお願い申し上げます。

{inbox_name}
""",
        ),
    },
}
