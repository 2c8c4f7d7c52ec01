"""Rules of the router's MIME decoding, one small hand-written mail each.

The cast: Ines Park writes to the shop's support desk, Tomas Berg is in
copy, and Yuki Mori writes Japanese mail.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.router.addresses import extract_ids, extract_reply_ids, parse_addresses
from services.router.bodies import sanitize_html, strip_quoted, unflow
from services.router.charsets import decode_bytes, normalize_charset
from services.router.headers import decode_base64_chunks, decode_text
from services.router.mime import Address, ParsedMail, parse_mail


def build(headers: str, body: bytes | str = "Hello.\n") -> bytes:
    """Build a mail from LF-separated header lines and a body, with CRLF line ends."""
    head = headers.strip("\n").replace("\n", "\r\n").encode("utf-8")
    data = body.encode("utf-8") if isinstance(body, str) else body
    return head + b"\r\n\r\n" + data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse(headers: str, body: bytes | str = "Hello.\n") -> ParsedMail:
    return parse_mail(build(headers, body))


BASIC = """\
From: Ines Park <ines@example.net>
To: Support <support@example.com>
Subject: Question about my order
Message-ID: <ines.1@mail.example.net>
Date: Mon, 06 May 2024 09:30:00 +0200
"""


# ---------------------------------------------------------------------------
# Charset policy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("Shift_JIS", "cp932"),
        ("x-sjis", "cp932"),
        ("windows-31j", "cp932"),
        ("MS932", "cp932"),
        ("GB2312", "gb18030"),
        ("gbk", "gb18030"),
        ("ks_c_5601-1987", "cp949"),
        ("ISO-2022-JP", "iso-2022-jp"),
        ('"iso-2022-jp-ms"', "iso-2022-jp"),
        ("CP50221", "iso-2022-jp"),
        ("UTF-8", "utf-8"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_charset__policy_labels(label: str | None, codec: str | None) -> None:
    assert normalize_charset(label) == codec


def test_decode_bytes__shift_jis_as_cp932() -> None:
    defects: list[str] = []

    text = decode_bytes("①㈱髙".encode("cp932"), "Shift_JIS", defects, "body")

    assert text == "①㈱髙"
    assert defects == []


def test_decode_bytes__gb2312_as_gb18030() -> None:
    # 镕 is in GBK but not in GB2312; Chinese mailers label GBK as GB2312.
    defects: list[str] = []

    assert decode_bytes("镕钢".encode("gbk"), "gb2312", defects, "body") == "镕钢"
    assert defects == []


def test_decode_bytes__ks_c_5601_reads_cp949() -> None:
    # 똠 exists only in the CP949 extension of EUC-KR.
    assert decode_bytes("똠방각하".encode("cp949"), "ks_c_5601-1987", [], "body") == "똠방각하"


def test_decode_bytes__iso2022jp_cp932_rows() -> None:
    # ESC $ B, then NEC row 13 "①" (2D 21) and IBM extension "髙" (7C 62).
    data = b"\x1b$B-!|b\x1b(B ok"

    assert decode_bytes(data, "iso-2022-jp", [], "body") == "①髙 ok"


def test_decode_bytes__iso2022jp_halfwidth_katakana() -> None:
    # ESC ( I selects JIS X 0201 katakana; 0x31 is "ｱ".
    assert decode_bytes(b"\x1b(I1\x1b(B!", "iso-2022-jp", [], "body") == "ｱ!"


def test_decode_bytes__iso2022jp_line_break_reset() -> None:
    # The mailer forgot ESC ( B before the line break.
    data = b"\x1b$B$3$s\r\nabc"

    assert decode_bytes(data, "iso-2022-jp", [], "body") == "こん\r\nabc"


def test_decode_bytes__missing_charset_with_jis_escapes() -> None:
    data = "こんにちは".encode("iso2022_jp")

    assert decode_bytes(data, None, [], "body") == "こんにちは"


def test_decode_bytes__undeclared_utf8() -> None:
    defects: list[str] = []

    assert decode_bytes("Grüße".encode(), None, defects, "body") == "Grüße"
    assert defects == ["body: no charset declared for 8-bit text, decoded as utf-8"]


def test_decode_bytes__mislabelled_utf8_cp932() -> None:
    defects: list[str] = []

    text = decode_bytes("お世話になります".encode("cp932"), "utf-8", defects, "body")

    assert text == "お世話になります"
    assert defects == ["body: text is not valid utf-8, decoded as cp932"]


def test_decode_bytes__latin1_last_resort() -> None:
    defects: list[str] = []

    text = decode_bytes(b"caf\xe9\n", "us-ascii", defects, "body")

    assert text == "café\n"
    assert defects == ["body: text is not valid us-ascii, decoded as latin-1"]


def test_decode_bytes__bytes_codec_label_is_unknown() -> None:
    defects: list[str] = []

    assert decode_bytes(b"aGVsbG8=", "base64", defects, "body") == "aGVsbG8="
    assert defects == []


def test_decode_bytes__unknown_charset() -> None:
    defects: list[str] = []

    text = decode_bytes("naïve".encode(), "x-made-up-charset", defects, "body")

    assert text == "naïve"
    assert defects == ["body: unknown charset 'x-made-up-charset', decoded as utf-8"]


def test_decode_bytes__latin1_over_cp932_private_use() -> None:
    # F6 ("ö") followed by "s" is a CP932 user-defined character.
    defects: list[str] = []

    assert decode_bytes(b"Fr\xf6sche", None, defects, "body") == "Frösche"
    assert defects == ["body: no charset declared for 8-bit text, decoded as latin-1"]


def test_decode_bytes__euc_jp_with_nec_row() -> None:
    # Python's euc_jp lacks NEC row 13; the JIS row is read through CP932.
    data = "会議室".encode("euc_jp") + bytes((0x2D | 0x80, 0x21 | 0x80))

    assert decode_bytes(data, "EUC-JP", [], "body") == "会議室①"


# ---------------------------------------------------------------------------
# Header text
# ---------------------------------------------------------------------------


def test_decode_text__utf8_split_across_words() -> None:
    # "日本" is E6 97 A5 E6 9C AC; the first word ends in the middle of 本.
    first = base64.b64encode(b"\xe6\x97\xa5\xe6").decode()
    second = base64.b64encode(b"\x9c\xac").decode()
    raw = f"=?UTF-8?B?{first}?=\r\n =?UTF-8?B?{second}?=".encode()

    assert decode_text(raw, [], "Subject") == "日本"


def test_decode_text__space_after_word_kept() -> None:
    raw = b"Re: =?ISO-8859-1?Q?Gr=FC=DFe_aus?= Berlin"

    assert decode_text(raw, [], "Subject") == "Re: Grüße aus Berlin"


def test_decode_text__different_charsets_side_by_side() -> None:
    raw = b"=?UTF-8?Q?caf=C3=A9?= =?ISO-8859-1?Q?_cr=E8me?="

    assert decode_text(raw, [], "Subject") == "café crème"


def test_decode_text__raw_cp932_header() -> None:
    defects: list[str] = []

    assert decode_text("見積もり".encode("cp932"), defects, "Subject") == "見積もり"
    assert defects == ["Subject: raw 8-bit header decoded as cp932"]


def test_decode_text__raw_iso2022jp_header() -> None:
    # Old Japanese mailers put JIS escapes into headers without encoded-words.
    assert decode_text("納期".encode("iso2022_jp"), [], "Subject") == "納期"


def test_decode_text__raw_8bit_inside_encoded_word() -> None:
    # The raw F6 belongs to the word's ISO-8859-1, not to a guessed charset.
    raw = b"=?iso-8859-1?Q?Gr=FC=DFe_an_J\xf6rg?= und Tomas"

    assert decode_text(raw, [], "Subject") == "Grüße an Jörg und Tomas"


def test_parse_mail__subject_unfolded() -> None:
    mail = parse(BASIC.replace("Subject: Question about my order", "Subject: Question about\n my order"))

    assert mail.subject == "Question about my order"


# ---------------------------------------------------------------------------
# Addresses and ids
# ---------------------------------------------------------------------------


def test_parse_addresses__common_forms() -> None:
    value = '"Park, Ines" <ines@Example.NET>, tomas@EXAMPLE.net (Tomas Berg); Yuki <yuki.mori@example.jp>'

    assert parse_addresses(value, [], "To") == [
        Address(name="Park, Ines", email="ines@example.net"),
        Address(name="Tomas Berg", email="tomas@example.net"),
        Address(name="Yuki", email="yuki.mori@example.jp"),
    ]


def test_parse_addresses__unquoted_comma_in_name() -> None:
    assert parse_addresses("Park, Ines <ines@example.net>", [], "From") == [
        Address(name="Park, Ines", email="ines@example.net")
    ]


def test_parse_addresses__missing_commas() -> None:
    value = "Ines Park <ines@example.net> Tomas Berg <tomas@example.net>"

    assert parse_addresses(value, [], "To") == [
        Address(name="Ines Park", email="ines@example.net"),
        Address(name="Tomas Berg", email="tomas@example.net"),
    ]
    assert parse_addresses("ines@example.net tomas@example.net", [], "To") == [
        Address(name="", email="ines@example.net"),
        Address(name="", email="tomas@example.net"),
    ]


def test_parse_addresses__unbracketed_name_words() -> None:
    assert parse_addresses("Ines Park ines@example.net", [], "From") == [
        Address(name="Ines Park", email="ines@example.net")
    ]


def test_parse_addresses__comments_inside_brackets() -> None:
    assert parse_addresses("Ines <ines(home)@example.net(mail host)>", [], "From") == [
        Address(name="Ines", email="ines@example.net")
    ]


def test_parse_addresses__raw_utf8_address() -> None:
    # RFC 6532 allows UTF-8 in the address itself.
    assert parse_addresses("Jörg <jörg@bücher.example>", [], "From") == [
        Address(name="Jörg", email="jörg@bücher.example")
    ]


def test_parse_addresses__group_and_null_sender() -> None:
    assert parse_addresses("undisclosed-recipients:;", [], "To") == []
    assert parse_addresses("<>", [], "From") == [Address(name="", email="")]


def test_parse_addresses__keeps_local_part_case() -> None:
    [address] = parse_addresses("Ines.Park@Example.NET", [], "To")

    assert address.email == "Ines.Park@example.net"


def test_parse_addresses__encoded_name_inside_quotes() -> None:
    [address] = parse_addresses('"=?UTF-8?B?5qOu?= Yuki" <yuki.mori@example.jp>', [], "From")

    assert address.name == "森 Yuki"


def test_extract_ids__free_text_and_comments() -> None:
    value = 'Your message of "Mon, 6 May" <a1@mail.example.net> (sent by Ines)'

    assert extract_ids(value) == ["a1@mail.example.net"]


def test_extract_ids__no_whitespace_between_ids() -> None:
    assert extract_ids("<a1@x.example><a2@x.example>  <a1@x.example>") == ["a1@x.example", "a2@x.example"]


def test_extract_ids__rejects_insane_ids() -> None:
    assert extract_ids("<no-at-sign>") == []
    assert extract_ids("<with space@x.example>") == []
    assert extract_ids("see my last mail") == []
    assert extract_ids("ines@example.net wrote something") == []


def test_extract_ids__bare_id_without_brackets() -> None:
    assert extract_ids("20240506.1234@mail.example.net") == ["20240506.1234@mail.example.net"]


def test_extract_reply_ids__author_address_is_no_id() -> None:
    value = 'Message from Tomas Berg <tomas@example.org> \n of "Mon, 06 May 2024 09:30:00 +0200"'

    assert extract_reply_ids(value, set()) == []


def test_extract_reply_ids__own_address_is_no_id() -> None:
    value = "<tomas@example.org> <t1@mail.example.org>"

    assert extract_reply_ids(value, {"tomas@example.org"}) == ["t1@mail.example.org"]


def test_extract_reply_ids__trailing_free_text_is_ignored() -> None:
    value = "<t1@mail.example.org>; from tomas@example.org on Mon, May 06, 2024 at 09:30"

    assert extract_reply_ids(value, set()) == ["t1@mail.example.org"]


def test_parse_mail__in_reply_to_names_the_author() -> None:
    mail = parse(BASIC.replace("To: Support <support@example.com>",
                               "To: Tomas Berg <tomas@example.org>")
                 + "In-Reply-To: Message from Tomas Berg <tomas@example.org>\n"
                 + "References: <t0@mail.example.org>\n")

    assert mail.in_reply_to == []
    assert mail.references == ["t0@mail.example.org"]


def test_parse_mail__unusable_message_id_is_none() -> None:
    mail = parse(BASIC.replace("<ines.1@mail.example.net>", "<local-only>"))

    assert mail.message_id is None
    assert "Message-ID header contains no valid id" in mail.defects


def test_parse_mail__references_in_header_order() -> None:
    headers = BASIC + "References: <r1@x.example>\n <r2@x.example> <r3@x.example>\nIn-Reply-To: <r3@x.example>"

    mail = parse(headers)

    assert mail.references == ["r1@x.example", "r2@x.example", "r3@x.example"]
    assert mail.in_reply_to == ["r3@x.example"]


def test_parse_mail__return_path_forms() -> None:
    assert parse(BASIC).return_path is None
    assert parse(BASIC + "Return-Path: <>").return_path == ""
    assert parse(BASIC + "Return-Path: <Ines@Example.NET>").return_path == "Ines@example.net"


def test_parse_mail__delivery_headers() -> None:
    headers = (
        BASIC
        + "Delivered-To: support@example.com\n"
        + "Delivered-To: support-fwd@inbound.example.com\n"
        + "Delivered-To: support@example.com\n"
        + "X-Original-To: Support@Example.COM\n"
        + "X-Forwarded-To: support-fwd@inbound.example.com, archive@example.com"
    )

    mail = parse(headers)

    assert mail.delivered_to == ["support@example.com", "support-fwd@inbound.example.com"]
    assert mail.x_original_to == ["Support@example.com"]
    assert mail.x_forwarded_to == ["support-fwd@inbound.example.com", "archive@example.com"]


def test_parse_mail__date_is_timezone_aware() -> None:
    mail = parse(BASIC.replace("Mon, 06 May 2024 09:30:00 +0200", "Mon, 06 May 2024 09:30:00 -0000"))

    assert mail.date is not None
    assert mail.date.utcoffset() is not None
    assert "Date header has no time zone, taken as UTC" in mail.defects


def test_parse_mail__invalid_date() -> None:
    mail = parse(BASIC.replace("Mon, 06 May 2024 09:30:00 +0200", "sometime last week"))

    assert mail.date is None
    assert any(defect.startswith("Date header is not a valid date") for defect in mail.defects)


# ---------------------------------------------------------------------------
# MIME structure
# ---------------------------------------------------------------------------

MULTIPART = BASIC + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"'


def test_parse_mail__multipart_boundary_never_appears() -> None:
    mail = parse(MULTIPART, "The boundary is missing.\n")

    assert mail.text == "The boundary is missing.\n"
    assert "boundary 'b1' of multipart/mixed not found" in mail.defects


def test_parse_mail__multipart_without_boundary_parameter() -> None:
    mail = parse(BASIC + "Content-Type: multipart/alternative", "Plain words.\n")

    assert mail.text == "Plain words.\n"
    assert "multipart/alternative without a boundary parameter, read as text" in mail.defects


def test_parse_mail__multipart_closing_boundary_missing() -> None:
    body = "--b1\nContent-Type: text/plain\n\nFirst part.\n--b1\nContent-Type: text/plain\n\nCut off here.\n"

    mail = parse(MULTIPART, body)

    assert mail.text == "First part.\nCut off here.\n"
    assert "closing boundary of multipart/mixed missing" in mail.defects


def test_parse_mail__junk_after_closing_boundary() -> None:
    body = "--b1\nContent-Type: text/plain\n\nOnly this.\n--b1-->\nEpilogue that is not part of the text.\n"

    mail = parse(MULTIPART, body)

    assert mail.text == "Only this."
    assert mail.defects == []


def test_parse_mail__boundary_prefix_of_inner_boundary() -> None:
    body = (
        "--b1\nContent-Type: multipart/alternative; boundary=\"b1-2\"\n\n"
        "--b1-2\nContent-Type: text/plain\n\nInner plain.\n"
        "--b1-2--\n"
        "--b1--\n"
    )

    assert parse(MULTIPART, body).text == "Inner plain."


def test_parse_mail__unindented_header_continuation() -> None:
    part = (
        "--b1\nContent-Type: application/zip;\nname=\"logs.zip\"\n"
        "Content-Transfer-Encoding: base64\n\nUEsDBA==\n--b1--\n"
    )

    mail = parse(MULTIPART, part)

    [attachment] = mail.attachments
    assert attachment.filename == "logs.zip"
    assert attachment.data == b"PK\x03\x04"
    assert "unindented header continuation joined" in mail.defects


def test_parse_mail__alternative_bodies() -> None:
    body = (
        "--b2\nContent-Type: text/plain; charset=utf-8\n\nPlain version.\n"
        "--b2\nContent-Type: text/html; charset=utf-8\n\n<p>HTML version.</p>\n"
        "--b2--\n"
    )

    mail = parse(BASIC + 'Content-Type: multipart/alternative; boundary="b2"', body)

    assert mail.text == "Plain version."
    assert mail.html == "<p>HTML version.</p>"
    assert mail.attachments == []


def test_parse_mail__html_only_mail_gets_text() -> None:
    body = "<html><head><style>p{color:red}</style></head><body><p>Hello&nbsp;there</p><p>Second<br>line</p></body></html>"

    mail = parse(BASIC + "Content-Type: text/html; charset=utf-8", body)

    assert mail.text == "Hello\xa0there\n\nSecond\nline\n"


def test_parse_mail__html_charset_from_meta_tag() -> None:
    body = '<meta charset="iso-8859-1"><p>Gr\xfc\xdfe</p>'.encode("latin-1")

    mail = parse(BASIC + "Content-Type: text/html", body)

    assert mail.html is not None
    assert "Grüße" in mail.html


def test_parse_mail__quoted_printable_body() -> None:
    body = "Caf=C3=A9 au lait, sehr gro=\n=C3=9F.\n"

    mail = parse(BASIC + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable", body)

    assert mail.text == "Café au lait, sehr groß.\n"


def test_parse_mail__transfer_encoding_misspelled() -> None:
    mail = parse(BASIC + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: Quoted Printable", "gro=C3=9F\n")

    assert mail.text == "groß\n"
    assert mail.defects == []


def test_parse_mail__format_flowed_is_joined() -> None:
    body = "This line was wrapped by the \nsender's client.\n> quoted and \n> wrapped\n-- \nInes\n"

    mail = parse(BASIC + "Content-Type: text/plain; charset=utf-8; format=flowed", body)

    assert mail.text == "This line was wrapped by the sender's client.\n> quoted and wrapped\n-- \nInes\n"


def test_unflow__delsp_removes_the_space() -> None:
    assert unflow("日本 \n語\n", delete_space=True) == "日本語\n"


def test_parse_mail__deep_nesting_stops() -> None:
    depth = 60
    opening = "".join(f'--n{i}\nContent-Type: multipart/mixed; boundary="n{i + 1}"\n\n' for i in range(depth))
    closing = "".join(f"--n{i}--\n" for i in reversed(range(depth)))

    mail = parse(BASIC + 'Content-Type: multipart/mixed; boundary="n0"', opening + "deep\n" + closing)

    assert any("nesting deeper" in defect for defect in mail.defects)


def test_parse_mail__plain_text_labelled_base64() -> None:
    headers = BASIC + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64"

    mail = parse(headers, "Hello, this is not base64 at all.\nIt is plain text.\n")

    assert mail.text == "Hello, this is not base64 at all.\nIt is plain text.\n"
    assert "text/plain part: declared base64 but is plain text, kept as is" in mail.defects


def test_decode_base64_chunks__separately_padded_lines() -> None:
    data = base64.b64encode(b"first chunk.") + b"\r\n" + base64.b64encode(b"second") + b"\r\n"

    assert decode_base64_chunks(data, [], "part") == b"first chunk.second"


def test_decode_base64_chunks__skips_junk_characters() -> None:
    defects: list[str] = []

    assert decode_base64_chunks(b"aGVs*bG8=", defects, "part") == b"hello"
    assert defects == ["part: invalid characters skipped in base64"]


# ---------------------------------------------------------------------------
# Attachments
# ---------------------------------------------------------------------------


def attachment_mail(part_headers: str, payload: bytes = b"%PDF-1.4 test") -> bytes:
    encoded = base64.b64encode(payload).decode()
    body = (
        "--b1\nContent-Type: text/plain\n\nSee attached.\n"
        f"--b1\n{part_headers}\nContent-Transfer-Encoding: base64\n\n{encoded}\n"
        "--b1--\n"
    )
    return build(MULTIPART, body)


def test_attachment__extended_filename_wins_in_either_order() -> None:
    plain_first = 'Content-Type: application/pdf\nContent-Disposition: attachment; filename="a.pdf";\n filename*=UTF-8\'\'%C3%A9t%C3%A9.pdf'
    extended_first = 'Content-Type: application/pdf\nContent-Disposition: attachment; filename*=UTF-8\'\'%C3%A9t%C3%A9.pdf;\n filename="a.pdf"'

    for headers in (plain_first, extended_first):
        [attachment] = parse_mail(attachment_mail(headers)).attachments
        assert attachment.filename == "été.pdf"


def test_attachment__rfc2231_continuations() -> None:
    headers = (
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment;\n"
        " filename*0*=ISO-8859-1''Rechnung%20M%E4;\n"
        ' filename*1="rz.pdf"'
    )

    [attachment] = parse_mail(attachment_mail(headers)).attachments

    assert attachment.filename == "Rechnung März.pdf"


def test_attachment__encoded_word_name_parameter() -> None:
    headers = 'Content-Type: application/pdf; name="=?UTF-8?Q?Angebot_f=C3=BCr_Ines.pdf?="'

    [attachment] = parse_mail(attachment_mail(headers)).attachments

    assert attachment.filename == "Angebot für Ines.pdf"


def test_attachment__content_type_without_semicolon() -> None:
    [attachment] = parse_mail(attachment_mail('Content-Type: application/pdf name="offer.pdf"')).attachments

    assert attachment.content_type == "application/pdf"
    assert attachment.filename == "offer.pdf"


def test_attachment__windows_path_is_stripped() -> None:
    headers = 'Content-Type: application/pdf\nContent-Disposition: attachment; filename="C:\\Users\\ines\\offer.pdf"'

    [attachment] = parse_mail(attachment_mail(headers)).attachments

    assert attachment.filename == "offer.pdf"


def test_attachment__nameless_part_gets_generated_name() -> None:
    [attachment] = parse_mail(attachment_mail("Content-Type: image/png", b"\x89PNG")).attachments

    assert attachment.filename == "attachment-2.png"
    assert attachment.data == b"\x89PNG"
    assert attachment.size == 4
    assert attachment.sha256 == hashlib.sha256(b"\x89PNG").hexdigest()


def test_attachment__text_with_filename_is_a_file() -> None:
    headers = 'Content-Type: text/plain; name="notes.txt"\nContent-Disposition: inline; filename="notes.txt"'

    mail = parse_mail(attachment_mail(headers, b"my notes"))

    assert mail.text == "See attached."
    assert [attachment.filename for attachment in mail.attachments] == ["notes.txt"]


def related_mail(html: str) -> bytes:
    body = (
        '--r1\nContent-Type: text/html; charset=utf-8\n\n' + html + "\n"
        '--r1\nContent-Type: image/png; name="logo.png"\nContent-ID: <logo.1@mail.example.net>\n'
        "Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
        "--r1--\n"
    )
    return build(BASIC + 'Content-Type: multipart/related; boundary="r1"', body)


def test_attachment__cid_referenced_image_is_inline() -> None:
    [image] = parse_mail(related_mail('<p>Logo: <img src="cid:logo.1@mail.example.net"></p>')).attachments

    assert image.inline is True
    assert image.content_id == "logo.1@mail.example.net"


def test_attachment__unreferenced_image_is_not_inline() -> None:
    [image] = parse_mail(related_mail("<p>No image here.</p>")).attachments

    assert image.inline is False
    assert image.content_id == "logo.1@mail.example.net"


def test_attachment__forwarded_message_is_not_walked() -> None:
    inner = (
        "From: Tomas Berg <tomas@example.net>\n"
        "Subject: Delivery a/b for order 88\n"
        "Message-ID: <tomas.88@mail.example.net>\n"
        "\n"
        "Inner text that is not Ines's.\n"
    )
    body = (
        "--b1\nContent-Type: text/plain\n\nForwarding Tomas's mail.\n"
        f"--b1\nContent-Type: message/rfc822\n\n{inner}"
        "--b1--\n"
    )

    mail = parse(MULTIPART + "\nReferences: <ines.0@mail.example.net>", body)

    assert mail.text == "Forwarding Tomas's mail."
    assert mail.references == ["ines.0@mail.example.net"]
    [forwarded] = mail.attachments
    assert forwarded.filename == "Delivery a_b for order 88.eml"
    # The line break before the boundary belongs to the boundary.
    assert forwarded.data == inner.rstrip("\n").replace("\n", "\r\n").encode()


def test_attachment__forwarded_message_without_subject() -> None:
    body = "--b1\nContent-Type: message/rfc822\n\nFrom: tomas@example.net\n\nHi.\n--b1--\n"

    [forwarded] = parse(MULTIPART, body).attachments

    assert forwarded.filename == "message.eml"


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------


def test_parse_mail__html_is_sanitized() -> None:
    html = (
        '<p onclick="steal()">Hi<script>alert(1)</script></p>'
        '<a href="javascript:alert(2)">x</a>'
        '<img src="data:image/png;base64,AAAA">'
        '<img src="cid:logo.1@mail.example.net" onerror="steal()">'
        '<a href="https://shop.example.com/orders/7">order</a>'
    )

    mail = parse(BASIC + "Content-Type: text/html; charset=utf-8", html)

    assert mail.html is not None
    assert "script" not in mail.html
    assert "alert" not in mail.html
    assert "onclick" not in mail.html
    assert "onerror" not in mail.html
    assert "javascript:" not in mail.html
    assert "data:" not in mail.html
    assert 'src="cid:logo.1@mail.example.net"' in mail.html
    assert 'href="https://shop.example.com/orders/7"' in mail.html


def test_sanitize_html__rewrites_known_cid_sources() -> None:
    html = ('<p><img src="cid:logo.1%40mail.example.net" onerror="steal()">'
            '<img src="CID:chart.2@mail.example.net"><img src="cid:unknown@mail.example.net"></p>')

    clean = sanitize_html(html, {"logo.1@mail.example.net": "/v1/messages/m1/attachments/aa",
                                 "chart.2@mail.example.net": "/v1/messages/m1/attachments/bb"})

    assert '<img src="/v1/messages/m1/attachments/aa">' in clean
    assert '<img src="/v1/messages/m1/attachments/bb">' in clean
    assert '<img src="cid:unknown@mail.example.net">' in clean
    assert "onerror" not in clean


# ---------------------------------------------------------------------------
# Reply text
# ---------------------------------------------------------------------------


def test_strip_quoted__wrapped_gmail_header() -> None:
    text = "Yes, Tuesday works.\n\nOn Mon, 6 May 2024 at 09:30, Ines Park <\nines@example.net> wrote:\n> Does Tuesday work?\n"

    assert strip_quoted(text) == "Yes, Tuesday works.\n"


def test_strip_quoted__outlook_header_block() -> None:
    text = (
        "Thanks, received.\n\n"
        "From: Support <support@example.com>\n"
        "Sent: Monday, May 6, 2024 10:02 AM\n"
        "To: Ines Park <ines@example.net>\n"
        "Subject: RE: Question\n\nYour parcel left today.\n"
    )

    assert strip_quoted(text) == "Thanks, received.\n"


def test_strip_quoted__original_message_separator() -> None:
    text = "See below.\n\n-----Original Message-----\nFrom: Tomas Berg\nOld text\n"

    assert strip_quoted(text) == "See below.\n"


def test_strip_quoted__german_header_and_inline_quotes() -> None:
    text = "> Frage eins?\nAntwort eins.\n\nAm 06.05.2024 um 09:30 schrieb Ines Park <ines@example.net>:\n> Alt\n"

    assert strip_quoted(text) == "Antwort eins.\n"


def test_strip_quoted__plain_from_line_is_kept() -> None:
    text = "From: the warehouse we heard nothing.\nPlease check.\n"

    assert strip_quoted(text) == text


def test_strip_quoted__from_to_lines_are_kept() -> None:
    text = "Please ship it like this:\nFrom: Berlin warehouse\nTo: Ines Park, Paris\n"

    assert strip_quoted(text) == text


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def test_kind__plain_mail_is_customer() -> None:
    mail = parse(BASIC)

    assert mail.kind == "customer"
    assert mail.auto_submitted is False
    assert mail.bounce is None
    assert mail.precedence is None
    assert mail.list_id is None


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: vacation",
        "Precedence: auto_reply",
        "X-Auto-Response-Suppress: DR, OOF",
        "X-Auto-Response-Suppress: All",
    ],
)
def test_kind__auto_reply_headers(header: str) -> None:
    mail = parse(BASIC + header)

    assert mail.auto_submitted is True
    assert mail.kind == "auto_reply"


def test_kind__ooo_subject_alone() -> None:
    mail = parse(BASIC.replace("Question about my order", "Out of Office: Automatic reply") + "Auto-Submitted: no")

    assert mail.auto_submitted is False
    assert mail.kind == "customer"


def test_kind__suppress_without_oof() -> None:
    assert parse(BASIC + "X-Auto-Response-Suppress: DR, RN").auto_submitted is False


@pytest.mark.parametrize(
    "header",
    ["List-Id: Shop news <news.lists.example.com>", "List-Post: <mailto:news@lists.example.com>", "Precedence: List"],
)
def test_kind__list_headers(header: str) -> None:
    assert parse(BASIC + header).kind == "list"


def test_kind__list_id_without_brackets() -> None:
    assert parse(BASIC + "List-Id: news.lists.example.com").list_id == "news.lists.example.com"


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        ("List-Post: <mailto:News@lists.example.com>", "news@lists.example.com"),
        ("X-BeenThere: news@lists.example.com", "news@lists.example.com"),
        ("Delivered-To: mailing list news@lists.example.com", "news@lists.example.com"),
        ("Mailing-List: contact news-help@lists.example.com; run by ezmlm", "news@lists.example.com"),
        ("X-Mailing-List: <news@lists.example.com>", "news@lists.example.com"),
    ],
)
def test_kind__list_address_without_list_id(header: str, identity: str) -> None:
    mail = parse(BASIC + header)

    assert mail.list_id == identity
    assert mail.kind == "list"


def test_kind__personal_delivered_to_is_no_list() -> None:
    mail = parse(BASIC + "Delivered-To: support@example.com")

    assert mail.list_id is None
    assert mail.kind == "customer"


def test_kind__bulk_precedence_is_recorded() -> None:
    mail = parse(BASIC + "Precedence: bulk")

    assert mail.precedence == "bulk"
    assert mail.kind == "customer"


GMAIL_CONFIRMATION = """\
From: Gmail Team <forwarding-noreply@google.example.com>
To: support-fwd@inbound.example.com
Subject: (#123456789) Confirmación de reenvío de Gmail: recibir correo de ines@example.net
Message-ID: <fwd.1@google.example.com>
Content-Type: text/plain; charset=utf-8
"""


def test_kind__localised_forwarding_confirmation() -> None:
    body = "Para confirmar, haz clic en el enlace:\nhttps://mail-settings.google.example.com/mail/vf-TOKEN-123456789.\n"

    mail = parse(GMAIL_CONFIRMATION, body)

    assert mail.kind == "forwarding_confirmation"
    assert mail.forwarding_confirmation is not None
    assert mail.forwarding_confirmation.code == "123456789"
    assert mail.forwarding_confirmation.link == "https://mail-settings.google.example.com/mail/vf-TOKEN-123456789"


def test_kind__forwarding_code_needs_google_sender() -> None:
    mail = parse(GMAIL_CONFIRMATION.replace("google.example.com>", "phish.example.org>"))

    assert mail.forwarding_confirmation is None
    assert mail.kind == "customer"


def test_kind__forwarding_sender_needs_code() -> None:
    mail = parse(GMAIL_CONFIRMATION.replace("(#123456789) ", ""))

    assert mail.forwarding_confirmation is None


# ---------------------------------------------------------------------------
# Bounces
# ---------------------------------------------------------------------------

DSN_HEADERS = """\
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: support@example.com
Subject: Delayed Mail (still being retried)
Return-Path: <>
Content-Type: multipart/report; report-type=delivery-status; boundary="d1"
"""


def test_bounce__delay_notice_has_no_failed_recipient() -> None:
    body = (
        "--d1\nContent-Type: text/plain\n\nStill trying.\n"
        "--d1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: rfc822; tomas@example.net\nAction: delayed\nStatus: 4.4.1\n"
        "--d1--\n"
    )

    mail = parse(DSN_HEADERS, body)

    assert mail.kind == "bounce"
    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == []
    assert mail.bounce.status == "4.4.1"


def test_bounce__several_recipients_and_returned_message() -> None:
    body = (
        "--d1\nContent-Type: text/plain\n\nFailed.\n"
        "--d1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        "Original-Recipient: rfc822;Tomas@Example.NET\nFinal-Recipient: rfc822;<Tomas@Example.NET>\nAction: failed\n"
        "Status: 5.1.1\n\n"
        "Final-Recipient: rfc822; ines@example.net\nAction: failed\nStatus: 5.2.2\n"
        "--d1\nContent-Type: message/rfc822\n\n"
        "From: Support <support@example.com>\nSubject: Your order\nMessage-ID: <reply.9@example.com>\n"
        "References: <a.1@example.net> <a.2@example.net>\n\nBody.\n"
        "--d1--\n"
    )

    mail = parse(DSN_HEADERS, body)

    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["Tomas@example.net", "ines@example.net"]
    assert mail.bounce.status == "5.1.1"
    assert mail.bounce.original_message_id == "reply.9@example.com"
    assert mail.bounce.original_in_reply_to is None
    assert mail.bounce.original_references == ["a.1@example.net", "a.2@example.net"]
    assert [attachment.filename for attachment in mail.attachments] == ["Your order.eml"]


def test_bounce__plain_text_notice_with_pasted_headers() -> None:
    headers = """\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: support@example.com
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: tomas@example.net
Auto-Submitted: auto-replied
"""
    body = (
        "This message was created automatically by mail delivery software.\n\n"
        "  tomas@example.net\n    mailbox is full: retry timeout exceeded\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        "From: Support <support@example.com>\nMessage-ID: <reply.10@example.com>\n"
        "In-Reply-To: <tomas.1@mail.example.net>\n\nOld body.\n"
    )

    mail = parse(headers, body)

    assert mail.kind == "bounce"
    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["tomas@example.net"]
    assert mail.bounce.status is None
    assert mail.bounce.original_message_id == "reply.10@example.com"
    assert mail.bounce.original_in_reply_to == "tomas.1@mail.example.net"


def test_bounce__postfix_text_recipient_and_status() -> None:
    headers = "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\nTo: support@example.com\nSubject: Undelivered Mail"
    body = "<tomas@example.net>: host mx.example.net said: 550 5.1.1 User unknown\n"

    mail = parse(headers, body)

    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["tomas@example.net"]
    assert mail.bounce.status == "5.1.1"


def test_bounce__read_receipt() -> None:
    headers = """\
From: Tomas Berg <tomas@example.net>
To: support@example.com
Subject: Read: Your order
Return-Path: <>
Content-Type: multipart/report; report-type=disposition-notification; boundary="m1"
"""
    body = (
        "--m1\nContent-Type: text/plain\n\nYour message was read.\n"
        "--m1\nContent-Type: message/disposition-notification\n\n"
        "Final-Recipient: rfc822; tomas@example.net\nDisposition: manual-action/MDN-sent-manually; displayed\n"
        "--m1\nContent-Type: text/rfc822-headers\n\nMessage-ID: <reply.11@example.com>\n"
        "--m1--\n"
    )

    mail = parse(headers, body)

    assert mail.bounce is None
    assert mail.auto_submitted is True
    assert mail.kind == "auto_reply"
    assert mail.attachments == []


def test_bounce__null_sender_auto_reply() -> None:
    mail = parse(BASIC + "Return-Path: <>\nAuto-Submitted: auto-replied", "I am away until Monday.\n")

    assert mail.bounce is None
    assert mail.kind == "auto_reply"


# ---------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------


def test_parse_mail__empty_input() -> None:
    mail = parse_mail(b"")

    assert mail.message_id is None
    assert mail.text == ""
    assert mail.kind == "customer"


def test_parse_mail__headers_only() -> None:
    mail = parse_mail(b"Subject: no body at all")

    assert mail.subject == "no body at all"
    assert mail.text == ""


def test_parse_mail__nul_characters_removed() -> None:
    mail = parse(BASIC.replace("Question about", "Question\x00 about"), "Hello\x00 there.\n")

    assert mail.subject == "Question about my order"
    assert mail.text == "Hello there.\n"
    assert "Subject header: NUL characters removed" in mail.defects
    assert "text/plain body: NUL characters removed" in mail.defects


def test_parse_mail__lf_line_ends() -> None:
    mail = parse_mail(b"From: ines@example.net\nSubject: LF only\n\nLine one\nLine two\n")

    assert mail.subject == "LF only"
    assert mail.text == "Line one\nLine two\n"


def test_kind__list_identity_without_control_characters() -> None:
    mail = parse(BASIC + "Delivered-To: mailing list news\x00@lists.example.com")

    assert mail.list_id == "news@lists.example.com"
