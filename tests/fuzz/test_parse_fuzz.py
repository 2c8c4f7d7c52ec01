"""Fuzzing ``parse_mail``: arbitrary bytes, mutated corpus mail and monsters.

``parse_mail`` promises a result for every input. The router then stores
that result in PostgreSQL, which rejects NUL characters and lone surrogates
in text and jsonb, so a result that cannot be stored would dead-letter a
mail that parsed "fine". Every test here therefore checks both: no
exception, and every string of the result storable.

The monsters (deep nesting, 10,000 attachments, 50 MB bodies, endless
encoded-words) are parsed in a process of their own (``measure``), whose
peak resident memory is checked against a ceiling; their time is recorded
as a test property, never asserted. The number of hypothesis examples comes
from ``MESSAGEHUB_FUZZ_EXAMPLES`` (default 150 per test), so a long run
is one variable away.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.router.mime import ParsedMail, parse_mail
from tests.fuzz import mutations

EXAMPLES = int(os.environ.get("MESSAGEHUB_FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def storable_problems(value: Any, path: str = "mail") -> Iterator[str]:
    """Yield every string in ``value`` that PostgreSQL text or jsonb would reject."""
    if isinstance(value, str):
        if "\x00" in value:
            yield f"{path}: contains NUL"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            yield f"{path}: not encodable as UTF-8: {exc.reason} at {exc.start}"
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from storable_problems(getattr(value, field.name), f"{path}.{field.name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from storable_problems(key, f"{path}[key]")
            yield from storable_problems(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield from storable_problems(item, f"{path}[{index}]")


def assert_storable(mail: ParsedMail) -> None:
    problems = list(storable_problems(mail))
    assert problems == []


@pytest.fixture(scope="module")
def corpus_mails(corpus_dir: Path) -> list[bytes]:
    mails = [path.read_bytes() for path in sorted(corpus_dir.rglob("*.eml"))]
    assert mails, f"no .eml files under {corpus_dir}"
    return mails


# --- hypothesis ---------------------------------------------------------------------


@FUZZ_SETTINGS
@given(raw=st.binary(max_size=8192))
def test_parse__arbitrary_bytes(raw: bytes) -> None:
    assert_storable(parse_mail(raw))


_HEADER_NAMES = st.sampled_from(["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To",
                                 "References", "Content-Type", "Content-Transfer-Encoding",
                                 "Content-Disposition", "Date", "Return-Path", "Sender",
                                 "Reply-To", "Auto-Submitted", "List-Id", "Delivered-To"])
_HEADER_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(lambda word, charset, encoding: f"=?{charset}?{encoding}?{word}?=",
              st.text(alphabet="abcXYZ=+/?_0129", max_size=40),
              st.sampled_from(["utf-8", "iso-2022-jp", "shift_jis", "bogus", ""]),
              st.sampled_from(["B", "Q", "b", "x"])),
    st.sampled_from(["multipart/mixed; boundary=b", "multipart/alternative; boundary=\"b\"",
                     "text/html; charset=utf-8", "message/rfc822", "text/plain; charset=\"",
                     "base64", "quoted-printable", "<a@b> <c@d>", "\"\\\" <@>", "<>"]),
)


@st.composite
def structured_mails(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Return a mail with random headers and, sometimes, random multipart children."""
    headers = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_TEXT), max_size=12))
    lines = [f"{name}: {value}".encode("utf-8", "surrogateescape") for name, value in headers]
    if depth < 3 and draw(st.booleans()):
        children = draw(st.lists(structured_mails(depth=depth + 1), max_size=3))
        lines.append(b"Content-Type: multipart/mixed; boundary=\"b%d\"" % depth)
        body = b"".join(b"--b%d\r\n" % depth + child + b"\r\n" for child in children)
        body += draw(st.sampled_from([b"--b%d--\r\n" % depth, b"", b"--b%d" % depth]))
    else:
        body = draw(st.binary(max_size=512))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@FUZZ_SETTINGS
@given(raw=structured_mails())
def test_parse__structured_mail(raw: bytes) -> None:
    assert_storable(parse_mail(raw))


@FUZZ_SETTINGS
@given(data=st.data())
def test_parse__mutated_corpus(corpus_mails: list[bytes], data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(corpus_mails))
    names = data.draw(st.lists(st.sampled_from(sorted(mutations.MUTATIONS)), min_size=1,
                               max_size=3))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for name in names:
        raw = mutations.MUTATIONS[name](raw, rng)
    assert_storable(parse_mail(raw))


# Mutations that make every mail a mebibyte or more run on a sample of the corpus.
_HEAVY_MUTATIONS = {"encoded_words", "huge_header"}


@pytest.mark.parametrize("name", sorted(mutations.MUTATIONS))
def test_parse__every_corpus_mail_mutated(corpus_mails: list[bytes], name: str) -> None:
    rng = random.Random(name)
    sample = corpus_mails[::25] if name in _HEAVY_MUTATIONS else corpus_mails
    for raw in sample:
        assert_storable(parse_mail(mutations.MUTATIONS[name](raw, rng)))


# --- monsters -----------------------------------------------------------------------


@pytest.fixture
def measured(record_property: Callable[[str, object], None]) -> Callable[..., dict[str, Any]]:
    """Return a function that parses a built monster in a fresh process and reports figures."""
    def run(builder: str, size: int) -> dict[str, Any]:
        output = subprocess.run([sys.executable, "-m", "tests.fuzz.measure", builder, str(size)],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                                check=True).stdout
        figures: dict[str, Any] = json.loads(output)
        for key in ("input_bytes", "peak_rss_bytes", "seconds"):
            record_property(key, figures[key])
        return figures
    return run


def test_parse__thousand_nested_multiparts(measured: Any) -> None:
    figures = measured("nested_multiparts", 1000)

    assert figures["problems"] == []
    assert any("nesting deeper" in defect for defect in figures["defects"])
    assert figures["peak_rss_bytes"] < 64 * MIB


def test_parse__ten_thousand_attachments(measured: Any) -> None:
    figures = measured("many_attachments", 10_000)

    assert figures["problems"] == []
    assert figures["attachments"] == 10_000
    assert figures["text_start"] == "see the files"
    assert figures["peak_rss_bytes"] < 20 * figures["input_bytes"]


@pytest.mark.parametrize("builder", ["big_body", "big_plain_body"])
def test_parse__fifty_megabyte_body(measured: Any, builder: str) -> None:
    figures = measured(builder, 50 * 1000 * 1000)

    assert figures["problems"] == []
    assert figures["text_start"].startswith("The quick brown fox")
    assert figures["text_chars"] > 30 * 1000 * 1000
    assert figures["peak_rss_bytes"] < 12 * figures["input_bytes"]


def test_parse__endless_encoded_words(measured: Any) -> None:
    figures = measured("endless_encoded_words", 200_000)

    assert figures["problems"] == []
    assert figures["subject_start"].startswith("件名")
    assert figures["peak_rss_bytes"] < 64 * MIB


def test_parse__mebibyte_header(measured: Any) -> None:
    figures = measured("huge_header_mail", MIB)

    assert figures["problems"] == []
    assert figures["subject_start"] == "huge header"
    assert figures["peak_rss_bytes"] < 64 * MIB


# --- faults the fuzzer found --------------------------------------------------------


def test_parse__nul_in_delivery_status() -> None:
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\n"
           b"To: <support@example.com>\r\nSubject: Undelivered Mail\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\r\n\r\n"
           b"--r\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
           b"--r\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example\r\n\r\n"
           b"Final-Recipient: rfc822; al\x00ice@example.org\r\nAction: failed\r\n"
           b"Status: 5.1.1\x00\r\n\r\n--r--\r\n")

    mail = parse_mail(raw)

    assert_storable(mail)
    assert mail.bounce is not None
    assert mail.bounce.failed_recipients == ["alice@example.org"]
    assert mail.bounce.status == "5.1.1"


def test_parse__nul_in_ezmlm_delivered_to() -> None:
    raw = (b"From: <ann@example.org>\r\nTo: <bootstrap@perl.org>\r\nSubject: hello\r\n"
           b"Delivered-To: mailing list b\x00ootstrap@perl.org\r\n\r\nhi\r\n")

    mail = parse_mail(raw)

    assert_storable(mail)
    assert mail.list_id == "bootstrap@perl.org"
