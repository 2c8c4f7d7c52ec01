"""Reported helpdesk faults replayed through ``parse_mail``.

Each test reads one shared case mail and checks the exact decoded values
that the case list expects. Tests of the single rules, on small mails
written here, are in ``test_mime_rules.py``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.mime import Address, ParsedMail, parse_mail


def parse_case(cases_dir: Path, name: str) -> ParsedMail:
    return parse_mail((cases_dir / name).read_bytes())


def build_multipart(body: str) -> bytes:
    """Build a multipart/mixed mail with boundary "b1" around an LF-separated body."""
    headers = "From: Ines Park <ines@example.net>\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    return headers.encode() + body.replace("\n", "\r\n").encode("utf-8")


def scenario_message(cases_dir: Path, name: str, label: str) -> bytes:
    """Return one message of a scenario file, with CRLF line ends as on the wire."""
    text = (cases_dir / name).read_text(encoding="utf-8")
    match = re.search(
        rf"^----- BEGIN MESSAGE {label}\b[^\n]*\n(.*?)^----- END MESSAGE {label} -----",
        text,
        re.S | re.M,
    )
    assert match is not None, f"message {label} not found in {name}"
    return match.group(1).replace("\n", "\r\n").encode("utf-8")


# ---------------------------------------------------------------------------
# Threading ids and addresses
# ---------------------------------------------------------------------------


def test_parse_mail__new_inquiry_ids_and_addresses(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "01-new-inquiry-with-cc.eml")

    assert mail.message_id == "c01.parcel4471@mail.example.org"
    assert mail.in_reply_to == []
    assert mail.references == []
    assert mail.subject == "Parcel 4471 arrived damaged"
    assert mail.from_ == Address(name="Alice Example", email="alice@example.org")
    assert mail.to == [Address(name="Support", email="support@example.com")]
    assert mail.cc == [Address(name="Bob Example", email="bob@example.org")]
    assert mail.return_path == "alice@example.org"
    assert mail.delivered_to == ["support@example.com"]
    assert mail.kind == "customer"
    assert mail.defects == []


def test_parse_mail__cc_reply_all_ids(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "02-cc-reply-all-before-agent.eml")

    assert mail.in_reply_to == ["c01.parcel4471@mail.example.org"]
    assert mail.references == ["c01.parcel4471@mail.example.org"]
    assert mail.from_ == Address(name="Bob Example", email="bob@example.org")
    assert mail.new_text == "One more detail: the outer box was wet on the left side when it arrived.\n\nBob\n"
    assert mail.kind == "customer"


def test_parse_mail__outlook_reply_keeps_all_references(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "03-reply-to-outlook-sent-reply.eml")

    outlook_id = "AM9PR07MB7712C0FFEE0123@AM9PR07MB7712.eurprd07.prod.outlook.example.com"
    assert mail.in_reply_to == [outlook_id]
    assert mail.references == ["c01.parcel4471@mail.example.org", outlook_id]
    assert mail.new_text == "Thanks Kim, please ship the replacement to the same address.\n\nAlice\n"


def test_parse_mail__exchange_bracket_message_id(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "06-exchange-bracket-message-id.eml")

    assert mail.message_id == "[7c1e0f3a9b2d4e6f8a1b3c5d7e9f0a2b-QkFTRTY0U0FNUExF]@mail.example.org"
    assert f"<{mail.message_id}>" == "<[7c1e0f3a9b2d4e6f8a1b3c5d7e9f0a2b-QkFTRTY0U0FNUExF]@mail.example.org>"
    assert mail.subject == "Cannot log in after password reset"
    assert mail.kind == "customer"


def test_parse_mail__shared_ancestor_reply(cases_dir: Path) -> None:
    mail = parse_mail(scenario_message(cases_dir, "04-common-ancestor-references.txt", "M2"))

    assert mail.message_id == "x04.dave@mail.example.org"
    assert mail.references == ["x04.root@mail.example.org"]
    assert mail.cc == [Address(name="Support", email="support@example.com")]


# ---------------------------------------------------------------------------
# Charsets
# ---------------------------------------------------------------------------


def test_parse_mail__iso2022jp_without_charset(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "17-iso2022jp-missing-charset.eml")

    assert mail.subject == "見積書の数量変更について"
    assert mail.from_ is not None
    assert mail.from_.name == "鈴木 一郎"
    assert mail.text == (
        "山田様\n\nいつもお世話になっております。\n"
        "先日お送りした見積書について、数量を10台に変更してください。\n\n鈴木\n"
    )


def test_parse_mail__iso2022jp_nec_and_ibm_characters(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "18-iso2022jp-nec-special-chars.eml")

    assert mail.subject == "会議室①の予約について（№3）"
    assert mail.from_ is not None
    assert mail.from_.name == "髙橋 花子"
    assert mail.text == (
        "鈴木様\n\n会議室①と会議室②を、来週月曜日の10時から予約しました。\n"
        "参加者は㈱サンプル商事の3名です（受付番号№3）。\n\n髙橋\n"
    )
    assert mail.defects == []


def test_parse_mail__escape_sequence_split_across_words(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "20-iso2022jp-split-escape-sequence.eml")

    assert mail.subject == "【重要】定期メンテナンス作業のお知らせ（第2回）"
    assert mail.text == "3月25日（月）22時から翌2時まで、定期メンテナンスを行います。\n"


def test_parse_mail__shift_jis_label_with_cp932_bytes(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "22-sjis-label-cp932-chars.eml")

    assert mail.subject == "①番窓口の受付時間について"
    assert mail.text == (
        "お世話になります。㈱サンプル商事の髙橋です。\n①番窓口と②番窓口の土曜日の受付時間を教えてください。\n"
    )
    assert mail.defects == []


def test_parse_mail__raw_utf8_headers(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "25-raw-utf8-headers.eml")

    assert mail.subject == "請求書の再発行について"
    assert mail.from_ == Address(name="山田 太郎", email="taro.yamada@example.jp")
    assert mail.text == "請求書を紛失しました。再発行をお願いできますか。\n"

    # The name must be a clean str that a database driver can encode.
    assert mail.from_.name.encode("utf-8") == "山田 太郎".encode()


# ---------------------------------------------------------------------------
# MIME structure and attachments
# ---------------------------------------------------------------------------


def test_parse_mail__bounce_inner_boundary_missing(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "26-bounce-inner-multipart-no-boundary.eml")

    assert mail.kind == "bounce"
    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["rita@nohost.example.org"]
    assert mail.bounce.status == "5.1.2"
    assert mail.bounce.original_message_id == "conv-c26.reply-1@example.com"
    assert mail.bounce.original_in_reply_to == "c26.rita.orig@mail.example.org"
    assert mail.bounce.original_references == ["c26.rita.orig@mail.example.org"]
    assert mail.from_ is not None
    assert mail.from_.email == "mailer-daemon@mx2.example.org"
    assert mail.return_path == ""


def test_parse_mail__bounce_keeps_cut_off_inner_body(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "26-bounce-inner-multipart-no-boundary.eml")

    [returned] = mail.attachments
    assert returned.content_type == "message/rfc822"
    assert returned.filename == "Re: Return label for order 8120.eml"

    inner = parse_mail(returned.data)
    assert inner.message_id == "conv-c26.reply-1@example.com"
    assert inner.text.startswith("Hi Rita, your return label is attached.")
    assert any("boundary" in defect for defect in inner.defects)


def test_parse_mail__rfc2231_and_rfc2047_filenames(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "27-rfc2231-and-2047-filenames.eml")

    assert [attachment.filename for attachment in mail.attachments] == [
        "見積書①_2024年度.pdf",
        "納品書.xlsx",
        "請求書_3月分.pdf",
    ]
    assert mail.attachments[0].content_type == "application/pdf"
    assert mail.attachments[0].data.startswith(b"%PDF-1.4")
    assert mail.text == "見積書、納品書、請求書を添付します。\n"


def test_parse_mail__cid_image_is_inline(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "28-inline-cid-no-disposition.eml")

    [image] = mail.attachments
    assert image.filename == "image001.png"
    assert image.content_type == "image/png"
    assert image.inline is True
    assert image.content_id == "image001.png@01DA7B2C.5E6F7A80"
    assert image.data.startswith(b"\x89PNG")
    assert [attachment for attachment in mail.attachments if not attachment.inline] == []

    assert mail.html is not None
    assert 'src="cid:image001.png@01DA7B2C.5E6F7A80"' in mail.html


def test_parse_mail__forwarded_message_attachment(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "30-forward-as-attachment-rfc822.eml")

    assert mail.from_ == Address(name="Alice Example", email="alice@example.org")
    assert mail.text == "The shop confirmation is attached; the item count is wrong (should be 2).\n"
    assert mail.message_id == "c30.alice.fwdattach@mail.example.org"
    assert mail.references == []

    [forwarded] = mail.attachments
    assert forwarded.filename == "Your order 5531.eml"
    assert forwarded.content_type == "message/rfc822"
    assert forwarded.size == len(forwarded.data) > 0
    assert forwarded.data.startswith(b"Date: Thu, 21 Mar 2024 18:00:00 +0100\r\n")
    assert forwarded.data.endswith(b"Thank you for your order 5531: 3 x desk lamp.\r\n")

    inner = parse_mail(forwarded.data)
    assert inner.message_id == "order5531.confirm@shop.example.com"
    assert inner.from_ == Address(name="Example Shop", email="orders@shop.example.com")


def test_parse_mail__base64_padded_chunks(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "31-base64-concatenated-chunks.eml")

    [csv] = mail.attachments
    assert csv.filename == "order-7311.csv"
    assert csv.size == 53
    assert csv.data == b"order_id,item,qty\n7311,desk lamp,2\n7311,lamp shade,2\n"


def test_parse_mail__missing_header_body_separator(cases_dir: Path) -> None:
    mail = parse_mail(scenario_message(cases_dir, "16-imap-poison-message.txt", "M1"))

    assert mail.message_id == "c16.jack.broken@mail.example.org"
    assert mail.text == "Please find my order form below: 3 chairs, 1 desk."
    assert mail.defects


# ---------------------------------------------------------------------------
# Automatic mail
# ---------------------------------------------------------------------------


def test_parse_mail__null_sender_dsn(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "34-bounce-null-sender.eml")

    assert mail.kind == "bounce"
    assert mail.return_path == ""
    assert mail.from_ == Address(name="Mail Delivery System", email="MAILER-DAEMON@mx.example.org")
    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["alice@example.org"]
    assert mail.bounce.status == "5.2.2"
    assert mail.bounce.original_message_id == "conv-c01.reply-1@example.com"
    assert mail.bounce.original_in_reply_to == "c01.parcel4471@mail.example.org"
    assert mail.bounce.original_references == ["c01.parcel4471@mail.example.org"]

    # The delivery-status and returned headers are report data, not files.
    assert mail.attachments == []


def test_parse_mail__mailman_post_is_list_mail(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "35-precedence-list-mailman.eml")

    assert mail.kind == "list"
    assert mail.precedence == "list"
    assert mail.list_id == "announce.lists.example.org"
    assert mail.sender == Address(name="", email="announce-bounces@lists.example.org")
    assert mail.bounce is None


def test_parse_mail__out_of_office_is_auto_reply(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "36-ooo-auto-submitted.eml")

    assert mail.kind == "auto_reply"
    assert mail.auto_submitted is True
    assert mail.in_reply_to == ["greeting.c01@example.com"]
    assert mail.references == ["greeting.c01@example.com"]
    assert mail.bounce is None


def test_parse_mail__gmail_forwarding_confirmation(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "41-gmail-forwarding-confirmation.eml")

    assert mail.kind == "forwarding_confirmation"
    assert mail.forwarding_confirmation is not None
    assert mail.forwarding_confirmation.provider == "gmail"
    assert mail.forwarding_confirmation.code == "482913775"
    assert mail.forwarding_confirmation.link == "https://mail-settings.google.example.com/mail/vf-EXAMPLETOKEN-482913775"
    assert mail.subject == (
        "(#482913775) Gmail Forwarding Confirmation - Receive Mail from helpdesk.legacy@legacy.example.org"
    )


def test_parse_mail__auto_forwarded_mail_headers(cases_dir: Path) -> None:
    mail = parse_case(cases_dir, "42-gmail-x-forwarded-to.eml")

    assert mail.x_forwarded_to == ["support-fwd-7f3a@inbound.example.com"]
    assert mail.delivered_to == ["support-fwd-7f3a@inbound.example.com"]
    assert mail.to == [Address(name="Helpdesk", email="helpdesk.legacy@legacy.example.org")]
    assert mail.from_ == Address(name="Dana Example", email="dana@example.org")
    assert mail.kind == "customer"


# ---------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------


def check_types(mail: ParsedMail) -> list[str]:
    """Return what is wrong with the field types of a result, empty when sane."""
    problems: list[str] = []
    if mail.message_id is not None and ("@" not in mail.message_id or "<" in mail.message_id):
        problems.append(f"message_id {mail.message_id!r}")
    if not all(isinstance(value, str) for value in mail.in_reply_to + mail.references):
        problems.append("ids are not all str")
    if not isinstance(mail.subject, str) or "\n" in mail.subject:
        problems.append(f"subject {mail.subject!r}")
    if mail.date is not None and mail.date.tzinfo is None:
        problems.append("naive date")
    if "\r" in mail.text or "\r" in mail.new_text:
        problems.append("carriage return in text")
    if mail.kind not in {"customer", "auto_reply", "bounce", "list", "forwarding_confirmation"}:
        problems.append(f"kind {mail.kind!r}")
    for attachment in mail.attachments:
        if attachment.size != len(attachment.data) or not attachment.filename:
            problems.append(f"attachment {attachment.filename!r}")
    if mail.html is not None and "<script" in mail.html.lower():
        problems.append("script in html")
    problems += [f"{path} is not storable text" for path in unstorable_strings(mail, "mail")]
    return problems


def unstorable_strings(value: object, path: str) -> list[str]:
    """Return the paths of strings that a UTF-8 database column would reject."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [path]
        return [path] if "\x00" in value else []
    if isinstance(value, list):
        return [bad for index, item in enumerate(value) for bad in unstorable_strings(item, f"{path}[{index}]")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            bad
            for field in dataclasses.fields(value)
            for bad in unstorable_strings(getattr(value, field.name), f"{path}.{field.name}")
        ]
    return []


def test_parse_mail__every_case_mail_is_sane(cases_dir: Path) -> None:
    for path in sorted(cases_dir.glob("*.eml")):
        mail = parse_mail(path.read_bytes())

        assert check_types(mail) == [], path.name
        assert not any("could not be parsed" in defect for defect in mail.defects), path.name


def test_parse_mail__corpus_never_raises(corpus_dir: Path) -> None:
    paths = sorted(corpus_dir.rglob("*.eml"))
    assert paths, f"no .eml files under {corpus_dir}"

    failures: dict[str, list[str]] = {}
    for path in paths:
        mail = parse_mail(path.read_bytes())
        problems = check_types(mail)
        problems += [defect for defect in mail.defects if "could not be parsed" in defect]
        if problems:
            failures[str(path.relative_to(corpus_dir))] = problems

    assert failures == {}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_mail__arbitrary_bytes_never_raise(raw: bytes) -> None:
    mail = parse_mail(raw)

    assert check_types(mail) == []
    assert not any("could not be parsed" in defect for defect in mail.defects)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_parse_mail__damaged_multipart_never_raises(data: st.DataObject) -> None:
    raw = bytearray(
        build_multipart(
            '--b1\nContent-Type: text/plain; charset="iso-2022-jp"\n\n\x1b$B$3$s\x1b(B\n'
            '--b1\nContent-Type: image/png; name*0*=utf-8\'\'%E6%97; name*1*=%A5.png\nContent-ID: <i@x>\n'
            "Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
            "--b1\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b\n"
            "--b1--\n",
        )
    )
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))

    mail = parse_mail(bytes(raw))

    assert check_types(mail) == []
    assert not any("could not be parsed" in defect for defect in mail.defects)
