"""Rules of the customer-facing texts: defaults per locale, placeholders, HTML.

The cast: Acme's support inbox writes to Alice Example and 山田 太郎.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outbound.texts import (
    KINDS,
    LOCALES,
    PLACEHOLDERS,
    AutoText,
    custom_text,
    default_text,
    friendly_sender_name,
    render_auto_text,
    render_html,
    render_text,
    text_to_html,
)

SURVEY_URL = "https://acme.example/csat/8f2c?rating=&lang=en"
HELP_CENTER_URL = "https://help.acme.example/"

ALL_VALUES = {
    "customer_name": "Alice Example",
    "inbox_name": "Acme Support",
    "next_opening": "Monday, 4 March at 09:00 (CET)",
    "survey_url": SURVEY_URL,
    "help_center_url": HELP_CENTER_URL,
}


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_default_text__complete(kind: str, locale: str) -> None:
    template = default_text(kind, locale)

    assert template.subject_hint
    assert template.text.strip()
    assert template.html.strip()
    assert set(re.findall(r"\{(\w+)\}", template.text)) <= set(PLACEHOLDERS)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_default_text__renders_without_leftovers(kind: str, locale: str) -> None:
    rendered = render_auto_text(default_text(kind, locale), **ALL_VALUES)

    assert "{" not in rendered.text
    assert "{" not in rendered.html
    assert "Acme Support" in rendered.text
    assert "\n\n\n" not in rendered.text


def test_default_text__japanese_register() -> None:
    greeting = render_auto_text(default_text("greeting", "ja"), customer_name="山田 太郎", inbox_name="Acme")

    assert greeting.text.startswith("山田 太郎 様\n\n")
    assert "お問い合わせいただき、誠にありがとうございます" in greeting.text
    assert "自動送信" in greeting.text


@pytest.mark.parametrize("locale", ["ja", "ja-JP", "ja_JP", "JA"])
def test_default_text__japanese_tags(locale: str) -> None:
    assert default_text("csat", locale) == default_text("csat", "ja")


@pytest.mark.parametrize("locale", ["de", "fr-CA", "", "xx_YY"])
def test_default_text__unknown_locale_english(locale: str) -> None:
    assert default_text("greeting", locale) == default_text("greeting", "en")


def test_default_text__unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="invalid text kind 'farewell'"):
        default_text("farewell", "en")


@pytest.mark.parametrize("locale", LOCALES)
def test_out_of_hours__mentions_next_opening(locale: str) -> None:
    rendered = render_auto_text(default_text("out_of_hours", locale), **ALL_VALUES)

    assert "Monday, 4 March at 09:00 (CET)" in rendered.text
    assert "Monday, 4 March at 09:00 (CET)" in rendered.html


@pytest.mark.parametrize("locale", LOCALES)
def test_out_of_hours__without_next_opening(locale: str) -> None:
    values = {**ALL_VALUES, "next_opening": ""}

    rendered = render_auto_text(default_text("out_of_hours", locale), **values)

    assert "{next_opening}" not in rendered.text
    assert "Acme Support" in rendered.text


@pytest.mark.parametrize("locale", LOCALES)
def test_csat__survey_link(locale: str) -> None:
    rendered = render_auto_text(default_text("csat", locale), **ALL_VALUES)

    assert f"\n{SURVEY_URL}\n" in rendered.text
    escaped_url = SURVEY_URL.replace("&", "&amp;")
    assert f'<a href="{escaped_url}">{escaped_url}</a>' in rendered.html


@pytest.mark.parametrize("locale", LOCALES)
def test_greeting__help_center_optional(locale: str) -> None:
    with_link = render_auto_text(default_text("greeting", locale), **ALL_VALUES)
    without_link = render_auto_text(default_text("greeting", locale), **{**ALL_VALUES, "help_center_url": ""})

    assert HELP_CENTER_URL in with_link.text
    assert f'<a href="{HELP_CENTER_URL}">' in with_link.html
    assert "help" not in without_link.text.lower()
    assert "ヘルプセンター" not in without_link.text
    assert "\n\n\n" not in without_link.text


@pytest.mark.parametrize("locale", LOCALES)
def test_greeting__unknown_customer_name(locale: str) -> None:
    rendered = render_auto_text(default_text("greeting", locale), customer_name="", inbox_name="Acme Support")

    assert not rendered.text.startswith("\n")
    assert rendered.text.split("\n")[0].strip()
    assert not rendered.html.startswith("<div><br></div>")


def test_render_text__substitutes() -> None:
    assert render_text("Hello {customer_name}, this is {inbox_name}.", **ALL_VALUES) == (
        "Hello Alice Example, this is Acme Support."
    )


def test_render_text__unknown_placeholder_kept() -> None:
    assert render_text("Order {order_id} for {customer_name}", customer_name="Alice") == (
        "Order {order_id} for Alice"
    )


@pytest.mark.parametrize("template", ["{", "}", "{}", "{0}", "{{customer_name}", "{customer name}", "{ inbox_name }"])
def test_render_text__stray_braces_kept(template: str) -> None:
    assert render_text(template, customer_name="Alice", inbox_name="Acme") == template.replace(
        "{customer_name}", "Alice"
    )


def test_render_text__values_not_rendered_again() -> None:
    rendered = render_text("Hello {customer_name}", customer_name="{inbox_name}", inbox_name="Acme")

    assert rendered == "Hello {inbox_name}"


def test_render_text__values_inserted_as_text() -> None:
    assert render_text("Hi {customer_name}", customer_name="<b>Al</b> & co") == "Hi <b>Al</b> & co"


def test_render_text__missing_known_placeholder_removes_line() -> None:
    template = "Hi {customer_name},\n\nThanks.\n\nHelp: {help_center_url}\n\nAcme\n"

    assert render_text(template, customer_name="Alice") == "Hi Alice,\n\nThanks.\n\nAcme\n"


def test_render_text__empty_value_removes_line() -> None:
    template = "Hi {customer_name},\n\nThanks.\nSee {help_center_url}\nAcme\n"

    assert render_text(template, customer_name=" ", help_center_url="") == "Thanks.\nAcme\n"


def test_render_text__author_spacing_kept() -> None:
    template = "Thanks.\n\n\nAcme\n"

    assert render_text(template) == template


def test_render_html__values_escaped() -> None:
    template = '<div>Hi {customer_name}</div>\n<div><a href="{survey_url}">Rate us</a></div>'

    rendered = render_html(template, customer_name='<script>"Al" & co</script>', survey_url=SURVEY_URL)

    assert "<div>Hi &lt;script&gt;&quot;Al&quot; &amp; co&lt;/script&gt;</div>" in rendered
    assert 'href="https://acme.example/csat/8f2c?rating=&amp;lang=en"' in rendered


def test_render_html__empty_value_removes_line() -> None:
    html = text_to_html("Hi {customer_name},\n\nThanks.\n")

    assert render_html(html, customer_name="") == "<div>Thanks.</div>"


def test_text_to_html__escapes() -> None:
    assert text_to_html("a < b & c > d\n") == "<div>a &lt; b &amp; c &gt; d</div>"


def test_text_to_html__blank_lines() -> None:
    assert text_to_html("One\n\nTwo\n") == "<div>One</div>\n<div><br></div>\n<div>Two</div>"


@pytest.mark.parametrize(
    ("text", "link"),
    [
        ("See https://help.acme.example/returns.", "https://help.acme.example/returns"),
        ("(https://help.acme.example/a)", "https://help.acme.example/a"),
        ("https://en.wikipedia.org/wiki/Mail_(protocol)", "https://en.wikipedia.org/wiki/Mail_(protocol)"),
        ("詳細はhttps://help.acme.example/faqをご覧ください", "https://help.acme.example/faq"),
        ("Link: http://acme.example/?a=1&b=2", "http://acme.example/?a=1&amp;b=2"),
    ],
)
def test_text_to_html__links(text: str, link: str) -> None:
    assert f'<a href="{link}">{link}</a>' in text_to_html(text)


def test_text_to_html__url_placeholder_linked() -> None:
    html = text_to_html("Rate us: {survey_url}")

    assert html == '<div>Rate us: <a href="{survey_url}">{survey_url}</a></div>'


def test_custom_text__rendered() -> None:
    template = custom_text("Hello {customer_name}!\nWe will answer soon.\n", subject_hint="Thanks")

    rendered = render_auto_text(template, customer_name="Alice <a@b>")

    assert rendered == AutoText(
        subject_hint="Thanks",
        text="Hello Alice <a@b>!\nWe will answer soon.\n",
        html="<div>Hello Alice &lt;a@b&gt;!</div>\n<div>We will answer soon.</div>",
    )


@given(st.text(max_size=200), st.dictionaries(st.sampled_from(PLACEHOLDERS), st.text(max_size=20)))
def test_render_text__never_raises(template: str, values: dict[str, str]) -> None:
    render_text(template, **values)
    render_html(text_to_html(template), **values)


def test_friendly_sender_name__english() -> None:
    assert friendly_sender_name("Jane Doe", "Acme", "en") == "Jane Doe from Acme"


def test_friendly_sender_name__japanese() -> None:
    assert friendly_sender_name("佐藤", "株式会社アクメ", "ja") == "株式会社アクメ 佐藤"


def test_friendly_sender_name__no_organisation() -> None:
    assert friendly_sender_name("Jane Doe", "", "en") == "Jane Doe"
