"""Rules of outbound mail building: headers, threading, loop protection, bodies.

Every built mail is parsed back with the standard library, as a receiving
client would. The cast: Acme's support inbox, the agents Jane Doe and
佐藤 花子, and the customers Alice Example and 山田 太郎.
"""

from __future__ import annotations

import email.policy
import re
from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.outbound.compose import (
    HeaderInjectionError,
    Sender,
    build_mail,
    make_message_id,
    reply_subject,
    validate_address,
)
from services.outbound.headers import normalize_display_name
from services.outbound.texts import default_text, render_auto_text

ACME = Sender(
    inbox_name="Acme Support",
    inbox_email="support@acme.example",
    business_name="Acme",
    sender_name_style="friendly",
    agent_name="Jane Doe",
)
ALICE = ("Alice Example", "alice.example@mail.example.org")
TARO = ("山田 太郎", "taro.yamada@example.jp")
CUSTOMER_MAIL_ID = "<c01.parcel4471@mail.example.org>"
REPLY_TOKEN_ADDRESS = "reply+k3f9x2@inbound.acme.example"
DATE = datetime(2024, 3, 5, 14, 31, 5, tzinfo=timezone(timedelta(hours=1)))

ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=")

# Any text a person could type: no control characters, no line or paragraph
# separators (which build_mail rejects), no lone surrogates.
TYPED_TEXT = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))

# Any text that has a UTF-8 form.
BODY_TEXT = st.characters(exclude_categories=["Cs"])


def build(**overrides: Any) -> bytes:
    """Build an agent reply to Alice, with ``overrides`` replacing the defaults."""
    arguments: dict[str, Any] = {
        "sender": ACME,
        "to": [ALICE],
        "subject": "Re: Parcel 4471 arrived damaged",
        "text": "Hello Alice,\n\nWe are sending a new parcel today.\n\nJane\n",
        "html": None,
        "message_id": "k2x7.1709645465000@acme.example",
        "in_reply_to": CUSTOMER_MAIL_ID,
        "references": [CUSTOMER_MAIL_ID],
        "reply_to": REPLY_TOKEN_ADDRESS,
        "automatic": False,
        "date": DATE,
    }
    arguments.update(overrides)
    return build_mail(**arguments)


def parse(raw: bytes) -> EmailMessage:
    """Parse ``raw`` as email.message_from_bytes does with policy.default."""
    message = BytesParser(EmailMessage, policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def mailboxes(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    return [(address.display_name, address.addr_spec) for address in message[name].addresses]


def body_text(message: EmailMessage, subtype: str) -> str:
    """Return the decoded text of the ``subtype`` part with LF line ends."""
    part = message.get_body((subtype,))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def assert_short_lines(raw: bytes) -> None:
    lines = raw.split(b"\r\n")
    for line in lines:
        assert len(line) <= 78, line
        assert b"\n" not in line, line
        assert b"\r" not in line, line
    for word in ENCODED_WORD.findall(raw):
        assert len(word) <= 75, word


def test_build_mail__headers_round_trip() -> None:
    message = parse(build())

    assert mailboxes(message, "From") == [("Jane Doe from Acme", "support@acme.example")]
    assert mailboxes(message, "To") == [ALICE]
    assert mailboxes(message, "Reply-To") == [("Jane Doe from Acme", REPLY_TOKEN_ADDRESS)]
    assert message["Subject"] == "Re: Parcel 4471 arrived damaged"
    assert message["Message-ID"] == "<k2x7.1709645465000@acme.example>"
    assert message["Date"].datetime == DATE
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    assert message.defects == []


def test_build_mail__crlf_and_ascii_only() -> None:
    raw = build(subject="Re: 返信", text="こんにちは\n")

    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_build_mail__japanese_headers_round_trip() -> None:
    sender = Sender(
        inbox_name="Acme サポート",
        inbox_email="support@acme.example",
        business_name="株式会社アクメ",
        sender_name_style="friendly",
        agent_name="佐藤 花子",
        locale="ja",
    )
    subject = reply_subject("見積書の数量変更について（至急）")

    message = parse(build(sender=sender, to=[TARO], subject=subject))

    assert message["Subject"] == "Re: 見積書の数量変更について（至急）"
    assert mailboxes(message, "From") == [("株式会社アクメ 佐藤 花子", "support@acme.example")]
    assert mailboxes(message, "To") == [TARO]


def test_build_mail__long_headers_fold_short() -> None:
    subject = "Re: " + "配送中に破損した商品の交換と返金についてのご相談" * 4
    recipients = [TARO, ALICE, ("Acme, Inc. Purchasing", "purchasing@acme-partner.example")] * 3
    references = [f"<reply-{index}.{'x' * 30}@mail.example.org>" for index in range(15)]

    raw = build(subject=subject, to=recipients, references=references)
    message = parse(raw)

    assert_short_lines(raw)
    assert message["Subject"] == subject
    assert mailboxes(message, "To") == recipients


def test_build_mail__encoded_words_only_where_needed() -> None:
    raw = build(subject="Re: 返信 [#123] Order")

    subject_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"Subject:"))
    assert subject_line.startswith(b"Subject: Re: =?UTF-8?")
    assert subject_line.endswith(b" [#123] Order")


def test_build_mail__ascii_name_with_comma_quoted() -> None:
    raw = build(to=[("Example, Alice", "alice.example@mail.example.org")])

    assert b'To: "Example, Alice" <alice.example@mail.example.org>' in raw
    assert mailboxes(parse(raw), "To") == [("Example, Alice", "alice.example@mail.example.org")]


def test_build_mail__recipient_without_name() -> None:
    message = parse(build(to=[("", "alice.example@mail.example.org"), (None, "bob@mail.example.org")]))

    assert mailboxes(message, "To") == [
        ("", "alice.example@mail.example.org"),
        ("", "bob@mail.example.org"),
    ]


def test_build_mail__display_name_spaces_normalised() -> None:
    names = [(" Alice  Example ", "alice.example@mail.example.org"), ("山田　太郎", "taro.yamada@example.jp")]

    message = parse(build(to=names))

    assert mailboxes(message, "To") == [
        ("Alice Example", "alice.example@mail.example.org"),
        ("山田　太郎", "taro.yamada@example.jp"),
    ]


def test_build_mail__cc_recipients() -> None:
    bob = ("Bob Example", "bob@mail.example.org")

    message = parse(build(cc=[bob]))

    assert mailboxes(message, "Cc") == [bob]
    assert "Bcc" not in message


def test_build_mail__long_japanese_name_decodes() -> None:
    # CPython's parser (3.11) adds a space between the encoded words of a
    # display name, so this name, too long for one word, is checked with the
    # RFC 2047 decoder of email.header, as mail clients decode it.
    name = "株式会社サンプル商事カスタマーサポートセンター東京"

    raw = build(to=[(name, "support@sample-shoji.example")])

    assert_short_lines(raw)
    raw_value = next(value for key, value in parse(raw).raw_items() if key == "To")
    assert str(make_header(decode_header(raw_value))) == f"{name} <support@sample-shoji.example>"


def test_build_mail__threading_headers() -> None:
    references = ["<c01.parcel4471@mail.example.org>", "conv-c01.reply-1@acme.example"]

    message = parse(build(in_reply_to="<c01.bob.2@mail.example.org>", references=references))

    assert message["In-Reply-To"] == "<c01.bob.2@mail.example.org>"
    assert message["References"].split() == [
        "<c01.parcel4471@mail.example.org>",
        "<conv-c01.reply-1@acme.example>",
        "<c01.bob.2@mail.example.org>",
    ]


def test_build_mail__references_no_duplicates() -> None:
    references = [CUSTOMER_MAIL_ID, "<c01.bob.2@mail.example.org>", CUSTOMER_MAIL_ID]

    message = parse(build(in_reply_to="<c01.bob.2@mail.example.org>", references=references))

    assert message["References"].split() == [CUSTOMER_MAIL_ID, "<c01.bob.2@mail.example.org>"]


def test_build_mail__references_capped() -> None:
    references = [f"<m{index}@mail.example.org>" for index in range(30)]

    message = parse(build(in_reply_to="<m29@mail.example.org>", references=references, max_references=5))

    assert message["References"].split() == [
        "<m0@mail.example.org>",
        "<m26@mail.example.org>",
        "<m27@mail.example.org>",
        "<m28@mail.example.org>",
        "<m29@mail.example.org>",
    ]


def test_build_mail__exchange_bracket_id_kept() -> None:
    exchange_id = "<[7c1e0f3a9b2d4e6f8a1b3c5d7e9f0a2b-QkFTRTY0U0FNUExF]@mail.example.org>"

    message = parse(build(in_reply_to=exchange_id, references=[exchange_id]))

    raw_values = dict(message.raw_items())
    assert str(raw_values["In-Reply-To"]).strip() == exchange_id
    assert str(raw_values["References"]).strip() == exchange_id


def test_build_mail__unusable_reference_left_out(caplog: pytest.LogCaptureFixture) -> None:
    references = ["<bad id@mail.example.org>", CUSTOMER_MAIL_ID]

    message = parse(build(references=references))

    assert message["References"].split() == [CUSTOMER_MAIL_ID]
    assert "bad id@mail.example.org" in caplog.text


def test_build_mail__new_conversation_no_threading() -> None:
    message = parse(build(in_reply_to=None, references=[]))

    assert "In-Reply-To" not in message
    assert "References" not in message


def test_build_mail__automatic_headers() -> None:
    message = parse(build(automatic=True))

    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message["Precedence"] == "bulk"


def test_build_mail__agent_reply_no_automatic_headers() -> None:
    message = parse(build(automatic=False))

    assert "Auto-Submitted" not in message
    assert "X-Auto-Response-Suppress" not in message
    assert "Precedence" not in message


def test_build_mail__auto_generated_survey() -> None:
    message = parse(build(automatic=True, auto_submitted="auto-generated"))

    assert message["Auto-Submitted"] == "auto-generated"


def test_build_mail__invalid_auto_submitted_raises() -> None:
    with pytest.raises(ValueError, match="auto_submitted"):
        build(automatic=True, auto_submitted="no")


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Order\r\nBcc: everyone@example.org"},
        {"subject": "Order\nBcc: everyone@example.org"},
        {"subject": "Order\rBcc: everyone@example.org"},
        {"subject": "Order\0"},
        {"subject": "Order\u2028Bcc: everyone@example.org"},
        {"to": [("Alice\r\nBcc: everyone@example.org", "alice.example@mail.example.org")]},
        {"to": [("Alice", "alice.example@mail.example.org\r\nBcc: everyone@example.org")]},
        {"cc": [("Bob\n", "bob@mail.example.org")]},
        {"reply_to": "reply+k3f9x2@inbound.acme.example\r\nBcc: everyone@example.org"},
        {"message_id": "k2x7@acme.example\r\nBcc: everyone@example.org"},
        {"in_reply_to": "<c01@mail.example.org>\r\nBcc: everyone@example.org"},
        {"references": ["<c01@mail.example.org>\nBcc: everyone@example.org"]},
        {"extra_headers": {"X-Campaign": "spring\r\nBcc: everyone@example.org"}},
        {"extra_headers": {"X-Campaign\r\nBcc": "spring"}},
    ],
)
def test_build_mail__line_break_raises_injection(overrides: dict[str, Any]) -> None:
    with pytest.raises(HeaderInjectionError):
        build(**overrides)


@pytest.mark.parametrize("field", ["inbox_name", "business_name", "agent_name", "inbox_email"])
def test_sender__line_break_raises_injection(field: str) -> None:
    values: dict[str, Any] = {
        "inbox_name": "Acme Support",
        "inbox_email": "support@acme.example",
        "business_name": "Acme",
        "sender_name_style": "friendly",
        "agent_name": "Jane Doe",
    }
    values[field] += "\r\nBcc: everyone@example.org"

    with pytest.raises(HeaderInjectionError):
        Sender(**values)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("alice", "exactly one '@'"),
        ("alice@mail@example.org", "exactly one '@'"),
        ("alice example@mail.example.org", "whitespace"),
        ("alice@mail.example.org ", "whitespace"),
        ("アリス@example.jp", "non-ASCII"),
        ("alice@例え.jp", "non-ASCII"),
        ("@mail.example.org", "local part"),
        ("alice<x>@mail.example.org", "special character"),
        ("alice@", "domain"),
        ("alice@-mail.example.org", "domain"),
        ("alice@mail..example.org", "domain"),
    ],
)
def test_build_mail__invalid_address_names_field(address: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"to\[0\] address") as raised:
        build(to=[("Alice", address)])

    assert reason in str(raised.value)
    assert not isinstance(raised.value, HeaderInjectionError)


def test_build_mail__invalid_reply_to_names_field() -> None:
    with pytest.raises(ValueError, match="reply_to"):
        build(reply_to="reply token@inbound.acme.example")


def test_build_mail__no_recipient_raises() -> None:
    with pytest.raises(ValueError, match="missing to"):
        build(to=[])


def test_build_mail__invalid_message_id_raises() -> None:
    with pytest.raises(ValueError, match="message_id"):
        build(message_id="<k2x7 @acme.example>")


def test_build_mail__naive_date_raises() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build(date=datetime(2024, 3, 5, 14, 31))


def test_build_mail__date_defaults_to_now() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)

    sent_at = parse(build(date=None))["Date"].datetime

    assert before <= sent_at <= datetime.now(timezone.utc)


def test_validate_address__accepts_japanese_carrier_dots() -> None:
    # Addresses that break RFC 5322 but were issued by Japanese carriers.
    for address in ["taro..yamada@docomo.ne.jp", "taro.yamada.@ezweb.ne.jp"]:
        assert validate_address("to", address) == address


def test_build_mail__bodies_round_trip() -> None:
    text = "Hello Alice,\n\nWe are sending a new parcel today.\n\nJane\n"

    message = parse(build(text=text))

    assert body_text(message, "plain") == text
    assert "<div>We are sending a new parcel today.</div>" in body_text(message, "html")


def test_build_mail__html_from_text_escaped() -> None:
    text = "Use <b>code</b> & see https://help.acme.example/returns?a=1&b=2.\n"

    html = body_text(parse(build(text=text)), "html")

    assert "&lt;b&gt;code&lt;/b&gt; &amp;" in html
    assert '<a href="https://help.acme.example/returns?a=1&amp;b=2">' in html
    assert "<b>" not in html


def test_build_mail__given_html_used() -> None:
    html = "<p>Hello <strong>Alice</strong></p>"

    message = parse(build(html=html))

    assert html in body_text(message, "html")
    assert "<!DOCTYPE html>" in body_text(message, "html")


def test_build_mail__japanese_body_round_trip() -> None:
    text = "山田様\n\nいつもお世話になっております。\n交換品を本日発送いたしました。\n"

    raw = build(text=text)

    assert_short_lines(raw)
    assert body_text(parse(raw), "plain") == text


def test_build_mail__long_latin_lines_short() -> None:
    text = "Your order for Müller GmbH shipped today. " * 20 + "\n" + "x" * 300 + "  \n"

    raw = build(text=text)

    assert_short_lines(raw)
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert body_text(parse(raw), "plain") == text


def test_build_mail__crlf_text_normalised() -> None:
    message = parse(build(text="Line one\r\nLine two\rLine three\n"))

    assert body_text(message, "plain") == "Line one\nLine two\nLine three\n"


def test_build_mail__same_input_same_bytes() -> None:
    assert build() == build()


def test_build_mail__rendered_default_text() -> None:
    greeting = render_auto_text(
        default_text("greeting", "ja"),
        customer_name="山田 太郎",
        inbox_name="Acme サポート",
    )
    sender = Sender("Acme サポート", "support@acme.example", "Acme", "friendly", None, locale="ja")

    raw = build(
        sender=sender, to=[TARO], subject=reply_subject("配送について"),
        text=greeting.text, html=greeting.html, automatic=True,
    )
    message = parse(raw)

    assert_short_lines(raw)
    assert mailboxes(message, "From") == [("Acme サポート", "support@acme.example")]
    assert body_text(message, "plain").startswith("山田 太郎 様\n")
    assert "山田 太郎 様" in body_text(message, "html")


def test_build_mail__extra_headers_written() -> None:
    unsubscribe = "<https://acme.example/unsubscribe/" + "a" * 80 + ">"

    message = parse(build(extra_headers={"List-Unsubscribe": unsubscribe, "X-Note": "返信不要"}))

    assert message["List-Unsubscribe"] == unsubscribe
    assert message["X-Note"] == "返信不要"


@pytest.mark.parametrize("name", ["From", "subject", "Bcc", "Message-ID", "X Note", "X-Note:", ""])
def test_build_mail__invalid_extra_header_name_raises(name: str) -> None:
    with pytest.raises(ValueError, match="extra header name"):
        build(extra_headers={name: "value"})


def test_sender__friendly_with_agent() -> None:
    assert ACME.display_name == "Jane Doe from Acme"


def test_sender__friendly_automatic_uses_inbox_name() -> None:
    sender = Sender("Acme Support", "support@acme.example", "Acme", "friendly", None)

    assert sender.display_name == "Acme Support"


def test_sender__professional_uses_business_name() -> None:
    sender = Sender("Acme Support", "support@acme.example", "Acme", "professional", "Jane Doe")

    assert sender.display_name == "Acme"


def test_sender__friendly_japanese() -> None:
    sender = Sender("Acme サポート", "support@acme.example", "株式会社アクメ", "friendly", "佐藤", "ja-JP")

    assert sender.display_name == "株式会社アクメ 佐藤"


def test_sender__invalid_style_raises() -> None:
    with pytest.raises(ValueError, match="sender_name_style"):
        Sender("Acme Support", "support@acme.example", "Acme", "casual", None)


def test_make_message_id__form() -> None:
    message_id = make_message_id("acme.example")

    assert re.fullmatch(r"[a-z2-7]{26}\.\d{13}@acme\.example", message_id)


def test_make_message_id__unique() -> None:
    message_ids = {make_message_id("acme.example") for _ in range(10_000)}

    assert len(message_ids) == 10_000


def test_make_message_id__no_recipient_data() -> None:
    local_part, domain = ALICE[1].split("@")

    for _ in range(10_000):
        message_id = make_message_id("acme.example")
        assert local_part not in message_id
        assert domain not in message_id
        assert ALICE[0].lower() not in message_id


@pytest.mark.parametrize("domain", ["acme example", "acme.example\r\nBcc: x", "", "acme.example>", "@acme.example"])
def test_make_message_id__invalid_domain_raises(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        make_message_id(domain)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Parcel 4471 arrived damaged", "Re: Parcel 4471 arrived damaged"),
        ("Re: Parcel 4471", "Re: Parcel 4471"),
        ("Re: RE: Aw: 返信: [#123] Order", "Re: [#123] Order"),
        ("RE[2]: Order", "Re: Order"),
        ("Re(3): Order", "Re: Order"),
        ("re:re:Order", "Re: Order"),
        ("RE : Commande", "Re: Commande"),
        ("ＲＥ：注文について", "Re: 注文について"),
        ("返信：注文について", "Re: 注文について"),
        ("SV: AW: Antw: Odp: Order", "Re: Order"),
        ("回复: 订单", "Re: 订单"),
        ("[Ticket#2024031510000012] RE: Order", "Re: [Ticket#2024031510000012] Order"),
        ("[#123][Urgent] Order", "Re: [#123][Urgent] Order"),
        ("Fwd: Order", "Re: Fwd: Order"),
        ("Re: Fwd: Order", "Re: Fwd: Order"),
        ("WG: Bestellung", "Re: WG: Bestellung"),
        ("Research: results", "Re: Research: results"),
        ("Re: 【重要】定期メンテナンスのお知らせ", "Re: 【重要】定期メンテナンスのお知らせ"),
        ("  Order   4471  ", "Re: Order   4471"),
    ],
)
def test_reply_subject__one_prefix(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


@pytest.mark.parametrize("subject", ["", "   ", "Re:", "RE: re: "])
def test_reply_subject__empty(subject: str) -> None:
    assert reply_subject(subject) == "Re:"
    assert reply_subject(subject, fallback="Your message to Acme") == "Re: Your message to Acme"


@given(st.text(TYPED_TEXT, max_size=60))
def test_reply_subject__idempotent(subject: str) -> None:
    once = reply_subject(subject)

    assert reply_subject(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(TYPED_TEXT, max_size=200))
def test_build_mail__any_subject_round_trips(subject: str) -> None:
    raw = build(subject=subject)

    assert_short_lines(raw)
    assert parse(raw)["Subject"] == subject


# Ten characters of up to four UTF-8 bytes fit one encoded word, which keeps
# these names clear of the display-name quirk of CPython's parser.
@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(TYPED_TEXT, max_size=10), min_size=1, max_size=4))
def test_build_mail__any_recipient_name_round_trips(names: list[str]) -> None:
    recipients = [(name, f"customer{index}@mail.example.org") for index, name in enumerate(names)]

    raw = build(to=recipients)

    assert_short_lines(raw)
    assert mailboxes(parse(raw), "To") == [(normalize_display_name(name), address) for name, address in recipients]


@settings(max_examples=200, deadline=None)
@given(st.text(TYPED_TEXT, max_size=10))
def test_build_mail__any_business_name_round_trips(business_name: str) -> None:
    sender = Sender("Acme Support", "support@acme.example", business_name, "professional", None)

    raw = build(sender=sender)

    assert_short_lines(raw)
    expected_name = normalize_display_name(business_name or "Acme Support")
    assert mailboxes(parse(raw), "From") == [(expected_name, "support@acme.example")]


# Names with a non-ASCII character, so that none becomes a quoted-string,
# which email.header leaves quoted. CPython's parser adds spaces between the
# encoded words of a long display name, so the RFC 2047 decoder of
# email.header checks these names.
@settings(max_examples=300, deadline=None)
@given(st.text(TYPED_TEXT, min_size=11, max_size=60).filter(lambda name: not name.isascii()))
def test_build_mail__any_long_name_decodes(name: str) -> None:
    raw = build(to=[(name, "customer@mail.example.org")])

    assert_short_lines(raw)
    raw_value = next(value for key, value in parse(raw).raw_items() if key == "To")
    decoded = str(make_header(decode_header(str(raw_value))))
    shown_name = normalize_display_name(name)
    expected = f"{shown_name} <customer@mail.example.org>" if shown_name else "customer@mail.example.org"
    assert decoded == expected


@settings(max_examples=200, deadline=None)
@given(st.text(BODY_TEXT, max_size=400))
def test_build_mail__any_body_round_trips(text: str) -> None:
    raw = build(text=text)

    assert_short_lines(raw)
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert body_text(parse(raw), "plain") == expected
