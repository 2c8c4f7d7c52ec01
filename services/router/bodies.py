"""Body text helpers: line ends, format=flowed, quoted history and HTML.

``mime.parse_mail`` calls these after it has decoded the body parts.
``normalize_text`` and ``unflow`` clean plain text, and ``strip_quoted``
keeps only the new part of a reply. ``sanitize_html`` runs before HTML can
reach a browser, ``html_to_text`` serves mail without a plain-text part, and
``cid_references`` separates inline images from attachments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html.parser import HTMLParser
from urllib.parse import unquote

import nh3

# --------------------------------------------------------------------------
# Plain text
# --------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Convert CRLF and lone CR line ends to "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def unflow(text: str, delete_space: bool) -> str:
    """Join the soft line breaks of format=flowed text (RFC 3676).

    A line ending in a space continues on the next line, unless it is the
    signature separator "-- ". Quote depth must match to join, and the
    space-stuffing added by the sender is removed.
    """
    out: list[str] = []
    open_line: str | None = None
    open_depth = 0

    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]

        if open_line is not None and depth == open_depth:
            open_line += content
        else:
            if open_line is not None:
                out.append(open_line)
            open_line = ">" * depth + (" " if depth else "") + content
            open_depth = depth

        if not (content.endswith(" ") and content != "-- "):
            out.append(open_line)
            open_line = None
        elif delete_space:
            open_line = open_line[:-1]

    if open_line is not None:
        out.append(open_line)
    return "\n".join(out)


# A reply header that a mail client puts above the quoted history. Gmail
# wraps long ones, so two lines are tried joined as well.
_REPLY_HEADERS = [
    re.compile(r"^On .{1,250}wrote:\s*$"),
    re.compile(r"^Am .{1,250}schrieb .{0,120}:\s*$"),
    re.compile(r"^Le .{1,250}a écrit\s?:\s*$"),
    re.compile(r"^El .{1,250}escribió:\s*$"),
    re.compile(r"^Il .{1,250}ha scritto:\s*$"),
    re.compile(r"^Op .{1,250}schreef .{0,120}:\s*$"),
    re.compile(r"^\d{4}年\d{1,2}月\d{1,2}日.{0,200}:\s*$"),
    re.compile(r"^-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original)\s*-{2,}\s*$", re.I),
]

# Outlook starts the quoted history with a header block instead of a line
# such as "On ... wrote:", sometimes after a line of underscores.
_OUTLOOK_FROM = re.compile(r"^\*?(?:From|Von|De|Da|Van|差出人)\s?:\*?\s", re.I)
_OUTLOOK_NEXT = re.compile(r"^\*?(?:Sent|Date|Gesendet|Datum|Envoyé|Enviado|Inviato|Verzonden|送信日時)\s?:\*?\s", re.I)
_UNDERSCORE_LINE = re.compile(r"^_{10,}\s*$")


def strip_quoted(text: str) -> str:
    """Return the text without the quoted history and the reply header.

    Everything from the first reply header or Outlook header block on is
    dropped, and so are lines quoted with ">" anywhere.
    """
    lines = text.split("\n")
    cut = _find_history_start(lines)
    kept = [line for line in lines[:cut] if not line.startswith(">")]

    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return "\n".join(kept) + "\n" if kept else ""


def _find_history_start(lines: list[str]) -> int:
    for index, line in enumerate(lines):
        stripped = line.strip()
        joined = f"{stripped} {lines[index + 1].strip()}" if index + 1 < len(lines) else stripped

        if any(pattern.match(stripped) or pattern.match(joined) for pattern in _REPLY_HEADERS):
            return index
        if _UNDERSCORE_LINE.match(stripped) and _starts_outlook_block(lines, index + 1):
            return index
        if _starts_outlook_block(lines, index):
            return index
    return len(lines)


def _starts_outlook_block(lines: list[str], index: int) -> bool:
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or not _OUTLOOK_FROM.match(lines[index].strip()):
        return False
    following = [line.strip() for line in lines[index + 1 : index + 4]]
    return any(_OUTLOOK_NEXT.match(line) for line in following)


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

# cid: is needed so inline images keep their reference; data: stays out,
# because data URLs can carry scripts in some contexts and are not needed.
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid"}

_STYLE_PROPERTIES = {
    "color",
    "background-color",
    "font-weight",
    "font-style",
    "font-size",
    "font-family",
    "text-align",
    "text-decoration",
    "vertical-align",
    "width",
    "height",
    "border",
    "padding",
    "margin",
}

_EXTRA_ATTRIBUTES = {
    "*": {"style", "dir", "lang", "title"},
    "td": {"width", "height", "valign", "bgcolor"},
    "th": {"width", "height", "valign", "bgcolor"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor"},
    "font": {"color", "face", "size"},
}


# CSS values that load a resource (a tracking pixel) or run script in old
# browsers (expression()), or hide such a word in an escape. The property
# allow-list alone keeps "width: expression(...)" and
# "background-color: url(...)", so declarations with these go entirely.
_UNSAFE_STYLE_VALUE = re.compile(r"url\s*\(|expression\s*\(|image-set\s*\(|\\|javascript:",
                                 re.IGNORECASE)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)


def safe_style(value: str) -> str | None:
    """Return a style attribute without its unsafe declarations; None when none is left."""
    # A comment can split a keyword: "exp/**/ression(".
    declarations = _CSS_COMMENT.sub("", value).split(";")
    kept = [d.strip() for d in declarations if d.strip() and not _UNSAFE_STYLE_VALUE.search(d)]
    return "; ".join(kept) or None


def sanitize_html(html: str, cid_urls: Mapping[str, str] | None = None) -> str:
    """Remove scripts, event handlers and unsafe URLs; keep layout and cid: images.

    ``cid_urls`` maps content ids to URLs. An image whose src refers to one
    of those content ids gets its URL in the same pass, and other cid:
    references stay as they are.
    """
    attributes = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
    for tag, names in _EXTRA_ATTRIBUTES.items():
        attributes.setdefault(tag, set()).update(names)

    def filter_attribute(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return safe_style(value)
        if tag == "img" and attribute == "src" and value[:4].lower() == "cid:" and cid_urls:
            return cid_urls.get(unquote(value[4:]), value)
        return value

    return nh3.clean(
        html,
        tags=set(nh3.ALLOWED_TAGS) | {"font"},
        clean_content_tags={"script", "style", "title"},
        attributes=attributes,
        attribute_filter=filter_attribute,
        url_schemes=_URL_SCHEMES,
        filter_style_properties=_STYLE_PROPERTIES,
    )


_CID_URL = re.compile(r"""cid:([^"'\s<>)]+)""", re.I)


def cid_references(html: str) -> set[str]:
    """Return the content ids that the HTML refers to with cid: URLs."""
    return {unquote(match.group(1)) for match in _CID_URL.finditer(html)}


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)


def html_meta_charset(data: bytes) -> str | None:
    """Return the charset that a <meta> tag declares in the first 4 KiB."""
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii") if match else None


_BLOCK_TAGS = frozenset({"p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "hr"})
_SKIPPED_TAGS = frozenset({"script", "style", "head", "title"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag == "br":
            self.pieces.append("\n")
        elif tag in _BLOCK_TAGS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            # Only ASCII whitespace collapses; a no-break space is content.
            self.pieces.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(html: str) -> str:
    """Render HTML as plain text for mail that has no text/plain part."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()

    lines = [line.strip() for line in "".join(extractor.pieces).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""
