"""The survey page that CSAT mails link to, through the stack's API, and in headless Chromium.

A conversation is resolved in an inbox with CSAT on; the survey mail's link
is read from the SMTP sink and opened as the customer would.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from messagehub import codec, db
from tests.outbound import stack_helpers as h
from tests.outbound.browser import Browser, find_chromium

pytestmark = pytest.mark.stack

LINK = re.compile(r"http://127\.0\.0\.1:\d+/csat/[A-Za-z0-9_-]+")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def survey_link(stack: dict[str, Any], tmp_path: Path, tag: str, locale: str = "en") -> tuple[str, str]:
    """Resolve a new conversation in a CSAT inbox; return its survey link and conversation id."""
    inbox = h.new_inbox(stack, greeting=False, csat_enabled=True, locale=locale)
    message_id = f"{tag}.{time.time_ns()}@mail.example.org"
    h.import_mails(stack, inbox, [h.write_mail(tmp_path, "m.eml", (
        f"From: Alice Example <alice@example.org>\nTo: support@example.com\nSubject: Help\n"
        f"Message-ID: <{message_id}>\nMIME-Version: 1.0\nContent-Type: text/plain\n\nHelp!\n"))])
    conversation_id = h.conversation_of(stack, inbox, message_id)
    h.set_status(stack, inbox, conversation_id, "resolved")

    ledger = h.wait_for_ledger(stack, h.survey_request_id(conversation_id))
    text = h.body(h.sink_mail(stack, ledger["rfc_message_id"]), "plain")
    found = LINK.search(text)
    assert found, text
    return found.group(), conversation_id


def fetch(url: str, form: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def survey_row(stack: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    with db.connect(stack["database_url"]) as conn:
        row = conn.execute("SELECT * FROM csat_surveys WHERE conversation_id = %s",
                           (conversation_id,)).fetchone()
    assert row is not None
    return dict(row)


def csat_answered_events(stack: dict[str, Any], conversation_id: str) -> list[dict[str, Any]]:
    """Read conversation.events until CSAT_ANSWERED of the conversation arrives (or 60 s pass)."""
    consumer = KafkaConsumer("conversation.events", bootstrap_servers=stack["kafka_bootstrap"],
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while not found and time.monotonic() < deadline:
            for message in consumer:
                _name, event = codec.decode(message.value)
                if event["conversation_id"] == conversation_id and event["type"] == "CSAT_ANSWERED":
                    found.append(event)
    finally:
        consumer.close()
    return found


def test_survey_page__get_never_votes(stack: dict[str, Any], tmp_path: Path) -> None:
    link, conversation_id = survey_link(stack, tmp_path, "p1")

    status, page, headers = fetch(link)
    fetch(link + "?rating=5")

    assert status == 200
    assert page.count('type="radio" name="rating"') == 5
    assert 'method="post"' in page
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "form-action 'self'" in headers["Content-Security-Policy"]
    assert survey_row(stack, conversation_id)["answered_at"] is None


def test_survey_page__post_stores_once(stack: dict[str, Any], tmp_path: Path) -> None:
    link, conversation_id = survey_link(stack, tmp_path, "p2")

    missing_status, missing_page, _ = fetch(link, {"comment": "no rating"})
    status, _, headers = fetch(link, {"rating": "2", "comment": "Slow answer."})
    again_status, _, _ = fetch(link, {"rating": "5", "comment": "Changed my mind."})
    thanks_status, thanks, _ = fetch(link)
    row = survey_row(stack, conversation_id)

    assert missing_status == 400
    assert "Please choose a rating" in missing_page
    assert status == 303
    assert headers["Location"] == urllib.parse.urlsplit(link).path
    assert again_status == 303
    assert thanks_status == 200
    assert "You rated 2 out of 5" in thanks
    assert row["rating"] == 2
    assert row["comment"] == "Slow answer."
    events = csat_answered_events(stack, conversation_id)
    assert [(event["csat_rating"], event["csat_comment"]) for event in events] == [
        (2, "Slow answer.")]


def test_survey_page__unknown_and_expired(stack: dict[str, Any], tmp_path: Path) -> None:
    link, conversation_id = survey_link(stack, tmp_path, "p3", locale="ja")
    base = link.rsplit("/", 1)[0]
    with db.connect(stack["database_url"], autocommit=True) as conn:
        conn.execute("UPDATE csat_surveys SET expires_at = now() - interval '1 minute' "
                     "WHERE conversation_id = %s", (conversation_id,))

    unknown_status, _, _ = fetch(base + "/" + "A" * 43)
    expired_status, expired_page, _ = fetch(link)
    post_status, _, _ = fetch(link, {"rating": "5"})

    assert unknown_status == 404
    assert expired_status == 410
    assert "回答期限は終了しました" in expired_page
    assert post_status == 303
    assert survey_row(stack, conversation_id)["answered_at"] is None


def test_survey_page__submitted_in_chromium(stack: dict[str, Any], tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found: install Debian's chromium-headless-shell "
                    "(deploy/local/install.sh does) to run the browser test")
    link, conversation_id = survey_link(stack, tmp_path, "p4")

    import asyncio

    async def answer() -> str:
        async with Browser(binary) as browser:
            await browser.open(link)
            assert await browser.evaluate("document.querySelectorAll('input[name=rating]').length") == 5
            await browser.evaluate(
                "document.querySelector('input[name=rating][value=\"4\"]').click();"
                "document.querySelector('#comment').value = 'Quick and friendly';"
                "document.querySelector('button[type=submit]').click();")
            await browser.wait_for_load()
            await browser.screenshot(tmp_path / "thanks.png")
            return str(await browser.evaluate("document.getElementById('message').textContent"))

    message = asyncio.run(answer())
    row = survey_row(stack, conversation_id)

    assert message == "Thank you! You rated 4 out of 5."
    assert row["rating"] == 4
    assert row["comment"] == "Quick and friendly"
