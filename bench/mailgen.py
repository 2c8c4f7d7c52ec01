"""Benchmark mail: a deterministic stream with the mix a support inbox receives.

:class:`MailGenerator` yields :class:`GeneratedMail` objects in a fixed
order for a given seed. The mix, by share of mails:

- plain text in English, 1 to 6 KB;
- plain text in Japanese, half ISO-2022-JP and half UTF-8 in base64, with
  encoded-word subjects;
- HTML with a plain-text alternative, in English or Japanese;
- a PDF or PNG attachment of 20 to 400 KB, some PNGs inline in the HTML
  (``cid:``);
- one large attachment of 1 to ``large_attachment_max_mb`` MB.

A share of the mails are replies from the same customer to an earlier
thread, with ``Re:``, In-Reply-To, References and the quoted history. The
bodies are built once per template; each mail then only gets its own header
block, and each attachment a per-mail first line so that no two mails carry
the same attachment bytes (the router stores attachments by digest, so
shared bytes would hide that cost). Every mail is unique to its run through
``run_tag`` in its Message-ID.

``bench.pipeline`` sends the stream through the forwarding receiver, and
``bench.ceiling`` parses the same mails with the router's parser.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime

DEFAULT_SEED = 20240311
CONTACT_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.jp")
BASE64_LINE_BYTES = 57  # 57 bytes encode to one 76-character line

# Shares of each shape among new mails and replies; they add up to 1.
SHAPE_SHARES = (
    ("plain_en", 0.42),
    ("plain_ja", 0.15),
    ("html", 0.28),
    ("attachment", 0.13),
    ("large_attachment", 0.02),
)
REPLY_SHARE = 0.35
# Replies go to one of this many most recent threads.
OPEN_THREAD_WINDOW = 400

EN_SENTENCES = (
    "I ordered the standing lamp last week and it arrived with a cracked shade.",
    "Could you tell me when my order will be shipped?",
    "The tracking link in your confirmation mail does not open.",
    "I was charged twice for the same invoice, please refund one of the payments.",
    "We would like to buy forty units for our new office; is there a volume discount?",
    "The password reset mail never reaches my inbox, I checked the spam folder too.",
    "Please change the delivery address to the one in my signature below.",
    "The assembly instructions are missing two pages, steps seven and eight.",
    "Thank you for the quick answer yesterday, it solved half of the problem.",
    "My colleague in accounting needs a copy of the invoice with our VAT number.",
    "The replacement part fits, but the switch still flickers after ten minutes.",
    "Is the warranty still valid if the lamp was bought from a reseller?",
    "I attached a photo of the damage and the label on the box.",
    "We are still waiting for the credit note you promised on Monday.",
    "Can I return an item that I already unpacked if it is unused?",
    "The discount code from your newsletter is rejected at checkout.",
)
JA_SENTENCES = (
    "先週注文したスタンドライトのシェードが割れて届きました。",
    "注文した商品はいつ発送されますか。",
    "確認メールの追跡リンクが開きません。",
    "同じ請求書で二重に請求されていますので、返金をお願いします。",
    "新しい事務所用に四十台購入したいのですが、数量割引はありますか。",
    "パスワード再設定のメールが届きません。迷惑メールフォルダも確認しました。",
    "配送先を署名の住所に変更してください。",
    "組み立て説明書の七ページと八ページが抜けています。",
    "昨日は早速のご回答ありがとうございました。",
    "経理担当者が登録番号入りの請求書の写しを必要としています。",
    "交換部品は取り付けられましたが、十分後にまだ点滅します。",
    "販売店で購入した場合でも保証は有効でしょうか。",
    "破損箇所と箱のラベルの写真を添付しました。",
    "月曜日にお約束いただいた返金の連絡をまだお待ちしています。",
)
EN_SUBJECTS = ("Damaged lamp shade", "Where is my order", "Refund request", "Volume discount",
               "Password reset mail missing", "Change of delivery address", "Missing pages",
               "Invoice copy with VAT number", "Warranty question", "Discount code rejected",
               "Credit note still missing", "Return of an unused item")
JA_SUBJECTS = ("シェードの破損について", "注文の発送状況", "返金のお願い", "数量割引のご相談",
               "パスワード再設定メールが届かない", "配送先の変更", "説明書の欠落",
               "請求書の再発行", "保証についての質問")
FIRST_NAMES = ("Ann", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines",
               "Jonas", "Keiko", "Liam", "Mei", "Noah", "Olga", "Priya", "Quinn", "Rosa")
JA_NAMES = ("佐藤 花子", "鈴木 一郎", "高橋 美咲", "田中 健", "伊藤 さくら", "渡辺 翔")


@dataclass(frozen=True)
class GeneratedMail:
    """One mail of the stream, ready to send: CRLF line ends, no dot-stuffing."""

    index: int
    message_id: str  # without angle brackets
    sender: str  # the customer's address, also the envelope sender
    inbox: int  # which of the benchmark's inboxes it is for
    shape: str  # a SHAPE_SHARES name
    reply: bool
    raw: bytes


@dataclass
class _Template:
    """A body and its MIME headers, with attachment lines to make unique per mail."""

    shape: str
    japanese: bool
    content_headers: bytes  # MIME-Version, Content-Type and friends, CRLF-terminated
    body: bytes
    # Offsets of 76-character base64 lines in ``body`` that each mail overwrites.
    unique_lines: list[int] = field(default_factory=list)


@dataclass
class _Thread:
    inbox: int
    sender: str
    display_name: str
    subject_header: str  # encoded as it goes on the wire, without "Re: "
    japanese: bool
    message_ids: list[str]


class MailGenerator:
    """Deterministic stream of support mail for ``inboxes`` inboxes."""

    def __init__(self, *, run_tag: str, inboxes: int = 1, seed: int = DEFAULT_SEED,
                 contacts: int = 2000, templates_per_shape: int = 24,
                 large_attachment_max_mb: float = 3.0, business_address: str =
                 "support@shop.example.com") -> None:
        if inboxes < 1:
            raise ValueError(f"inboxes must be at least 1: {inboxes!r}")
        if large_attachment_max_mb < 1.0:
            raise ValueError(f"large_attachment_max_mb must be at least 1: "
                             f"{large_attachment_max_mb!r}")
        self._run_tag = run_tag
        self._inboxes = inboxes
        self._random = random.Random(seed)
        self._contacts = contacts
        self._large_max_bytes = int(large_attachment_max_mb * 1024 * 1024)
        self._business_address = business_address
        self._templates = self._build_templates(templates_per_shape)
        self._threads: list[_Thread] = []
        self._clock = datetime(2024, 3, 11, 9, 0, tzinfo=timezone.utc)
        self._next_index = 0

    def __iter__(self) -> Iterator[GeneratedMail]:
        while True:
            yield self.next_mail()

    def take(self, count: int) -> list[GeneratedMail]:
        """Return the next ``count`` mails of the stream."""
        return [self.next_mail() for _ in range(count)]

    def next_mail(self) -> GeneratedMail:
        """Return the next mail: a reply to an earlier thread or a new one."""
        index = self._next_index
        self._next_index += 1
        self._clock += timedelta(seconds=self._random.randint(1, 90))
        message_id = f"{self._run_tag}.{index}@bench.{self._domain_of(index)}"

        reply = bool(self._threads) and self._random.random() < REPLY_SHARE
        thread = self._pick_thread() if reply else self._new_thread(index)
        template = self._pick_template(thread.japanese)
        raw = self._assemble(template, thread, message_id, reply)
        thread.message_ids.append(message_id)
        return GeneratedMail(index=index, message_id=message_id, sender=thread.sender,
                             inbox=thread.inbox, shape=template.shape, reply=reply, raw=raw)

    # --- threads -----------------------------------------------------------

    def _domain_of(self, index: int) -> str:
        return CONTACT_DOMAINS[index % len(CONTACT_DOMAINS)]

    def _new_thread(self, index: int) -> _Thread:
        contact = self._random.randrange(self._contacts)
        japanese = self._random.random() < 0.25
        domain = CONTACT_DOMAINS[contact % len(CONTACT_DOMAINS)]
        if japanese:
            display = JA_NAMES[contact % len(JA_NAMES)]
            subject = f"{self._random.choice(JA_SUBJECTS)} (注文番号 {100000 + index})"
        else:
            display = f"{FIRST_NAMES[contact % len(FIRST_NAMES)]} Customer{contact}"
            subject = f"{self._random.choice(EN_SUBJECTS)} (order {100000 + index})"
        thread = _Thread(inbox=self._random.randrange(self._inboxes),
                         sender=f"customer{contact}@{domain}", display_name=display,
                         subject_header=_encode_header(subject), japanese=japanese,
                         message_ids=[])
        self._threads.append(thread)
        if len(self._threads) > OPEN_THREAD_WINDOW:
            self._threads.pop(0)
        return thread

    def _pick_thread(self) -> _Thread:
        return self._random.choice(self._threads)

    def _pick_template(self, japanese: bool) -> _Template:
        shape = self._random.choices([name for name, _ in SHAPE_SHARES],
                                     weights=[share for _, share in SHAPE_SHARES])[0]
        if shape == "plain_en" and japanese:
            shape = "plain_ja"
        elif shape == "plain_ja" and not japanese:
            shape = "plain_en"
        candidates = [t for t in self._templates[shape]
                      if t.japanese == japanese or shape in ("plain_en", "plain_ja")]
        return self._random.choice(candidates)

    # --- one mail ----------------------------------------------------------

    def _assemble(self, template: _Template, thread: _Thread, message_id: str,
                  reply: bool) -> bytes:
        lines = [
            f"Return-Path: <{thread.sender}>",
            f"From: {_encode_header(thread.display_name)} <{thread.sender}>",
            f"To: Support <{self._business_address}>",
            f"Subject: {'Re: ' if reply else ''}{thread.subject_header}",
            f"Date: {format_datetime(self._clock)}",
            f"Message-ID: <{message_id}>",
        ]
        if reply:
            references = thread.message_ids[-10:]
            lines.append(f"In-Reply-To: <{references[-1]}>")
            lines.append("References: " + "\r\n ".join(f"<{mid}>" for mid in references))
        header = ("\r\n".join(lines) + "\r\n").encode("ascii")
        return header + template.content_headers + b"\r\n" + _unique_body(template, message_id)

    # --- templates ---------------------------------------------------------

    def _build_templates(self, per_shape: int) -> dict[str, list[_Template]]:
        templates: dict[str, list[_Template]] = {name: [] for name, _ in SHAPE_SHARES}
        for number in range(per_shape):
            japanese = number % 4 == 0
            templates["plain_en"].append(self._plain(False, number))
            templates["plain_ja"].append(self._plain(True, number))
            templates["html"].append(self._html(japanese))
            templates["attachment"].append(self._with_attachment(
                japanese, self._random.randint(20_000, 400_000)))
            templates["large_attachment"].append(self._with_attachment(
                japanese, self._random.randint(1024 * 1024, self._large_max_bytes)))
        return templates

    def _text(self, japanese: bool, min_bytes: int, max_bytes: int) -> str:
        sentences = JA_SENTENCES if japanese else EN_SENTENCES
        target = self._random.randint(min_bytes, max_bytes)
        paragraphs: list[str] = []
        size = 0
        while size < target:
            paragraph = ("" if japanese else " ").join(
                self._random.choice(sentences) for _ in range(self._random.randint(2, 5)))
            paragraphs.append(paragraph)
            size += len(paragraph.encode("utf-8")) + 2
        greeting = "お世話になっております。" if japanese else "Hello,"
        closing = "よろしくお願いいたします。" if japanese else "Kind regards"
        return "\n\n".join([greeting, *paragraphs, closing]) + "\n"

    def _quoted(self, japanese: bool) -> str:
        """Return a reply's quoted history: an attribution line and '> ' lines."""
        history = self._text(japanese, 300, 1500).splitlines()
        attribution = ("2024年3月10日 10:02 Support <support@shop.example.com>:" if japanese
                       else "On Sun, 10 Mar 2024 at 10:02, Support <support@shop.example.com> "
                            "wrote:")
        return attribution + "\n" + "\n".join(f"> {line}".rstrip() for line in history) + "\n"

    def _plain(self, japanese: bool, number: int) -> _Template:
        text = self._text(japanese, 800, 6000)
        if number % 2:
            text += "\n" + self._quoted(japanese)
        if japanese and number % 4 < 2:
            body = _crlf(text).encode("iso-2022-jp")
            headers = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n"
                       b"Content-Transfer-Encoding: 7bit\r\n")
            return _Template("plain_ja", True, headers, body)
        if japanese:
            body = _base64_lines(_crlf(text).encode("utf-8"))
            headers = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                       b"Content-Transfer-Encoding: base64\r\n")
            return _Template("plain_ja", True, headers, body)
        headers = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n")
        return _Template("plain_en", False, headers, _crlf(text).encode("utf-8"))

    def _html(self, japanese: bool, inline_cid: str | None = None) -> _Template:
        text = self._text(japanese, 1500, 12000)
        boundary = f"alt-{self._random.getrandbits(64):016x}"
        body = _alternative_body(text, boundary, inline_cid)
        headers = (f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; "
                   f"boundary=\"{boundary}\"\r\n").encode("ascii")
        return _Template("html", japanese, headers, body)

    def _with_attachment(self, japanese: bool, size: int) -> _Template:
        """Return a mixed (or related, for an inline image) mail with one attachment."""
        image = self._random.random() < 0.5
        inline = image and self._random.random() < 0.4
        cid = f"img{self._random.getrandbits(32):08x}@bench" if inline else None
        shape = "large_attachment" if size >= 1024 * 1024 else "attachment"
        text_part = self._html(japanese, cid)
        outer = f"{'rel' if inline else 'mix'}-{self._random.getrandbits(64):016x}"
        payload = self._random.randbytes(size)
        encoded = _base64_lines(payload)
        content_type = "image/png" if image else "application/pdf"
        filename = f"photo-{size}.png" if image else f"invoice-{size}.pdf"
        disposition = "inline" if inline else "attachment"
        attachment_headers = (
            f"Content-Type: {content_type}; name=\"{filename}\"\r\n"
            f"Content-Disposition: {disposition}; filename=\"{filename}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n"
            + (f"Content-ID: <{cid}>\r\n" if cid else "")).encode("ascii")
        prefix = (f"--{outer}\r\n").encode("ascii") + text_part.content_headers + b"\r\n" + \
            text_part.body + (f"\r\n--{outer}\r\n").encode("ascii") + attachment_headers + b"\r\n"
        body = prefix + encoded + (f"\r\n--{outer}--\r\n").encode("ascii")
        subtype = "related" if inline else "mixed"
        headers = (f"MIME-Version: 1.0\r\nContent-Type: multipart/{subtype}; "
                   f"boundary=\"{outer}\"\r\n").encode("ascii")
        # The first base64 line of the attachment differs per mail.
        return _Template(shape, japanese, headers, body, unique_lines=[len(prefix)])


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _encode_header(value: str) -> str:
    """Return ``value`` as a header value: unchanged if ASCII, else a UTF-8 encoded word."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _alternative_body(text: str, boundary: str, inline_cid: str | None) -> bytes:
    """Return a multipart/alternative body: the text as quoted-printable and as HTML."""
    paragraphs = [p.replace("\n", "<br>") for p in text.split("\n\n")]
    image = f'<p><img src="cid:{inline_cid}" alt="photo"></p>' if inline_cid else ""
    html = ("<html><head><style>p{margin:0 0 1em}</style></head><body>"
            + "".join(f"<p>{p}</p>" for p in paragraphs) + image + "</body></html>")
    text_encoded = _base64_lines(_crlf(text).encode("utf-8"))
    html_encoded = _base64_lines(_crlf(html).encode("utf-8"))
    return (f"--{boundary}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + text_encoded + \
        (f"\r\n--{boundary}\r\nContent-Type: text/html; charset=UTF-8\r\n"
         f"Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + html_encoded + \
        (f"\r\n--{boundary}--\r\n").encode("ascii")


def _unique_body(template: _Template, message_id: str) -> bytes:
    if not template.unique_lines:
        return template.body
    body = bytearray(template.body)
    seed = hashlib.sha256(message_id.encode()).digest()
    line = base64.b64encode((seed * 2)[:BASE64_LINE_BYTES])
    for offset in template.unique_lines:
        body[offset:offset + len(line)] = line
    return bytes(body)
