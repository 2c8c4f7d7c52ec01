"""Attachments served by the API at the URLs of the message JSON and of the rewritten HTML.

A customer mail with an inline PNG, a PDF and an SVG goes through the
forwarding receiver and the router. Raster images come back inline under
their type, anything else as a download, each only to tokens that may read
the conversation.
"""

from __future__ import annotations

import base64
import hashlib
import smtplib
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.api.helpers import Api, create_agent, create_inbox, unique, wait_for_conversation
from tests.api.test_api_stack import new_token

pytestmark = pytest.mark.stack

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff"
       b"\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")
PDF = b"%PDF-1.4\n% a tiny invoice made for this test " + uuid.uuid4().hex.encode() + b"\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def mail_with_attachments(subject: str, png: bytes) -> bytes:
    def part(content_type: str, data: bytes, headers: str) -> str:
        encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
        return (f"--b1\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
                f"{headers}\r\n{encoded}")

    return (
        f"From: Customer <pic@customer.example>\r\nTo: support@acme.example\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@customer.example>\r\n"
        "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/related; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>The lamp arrived broken: <img src="cid:photo@customer.example"></p>\r\n'
        + part("image/png", png, "Content-ID: <photo@customer.example>\r\n"
               "Content-Disposition: inline; filename=photo.png\r\n")
        + part("application/pdf", PDF, "Content-Disposition: attachment; "
               "filename*=UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf\r\n")
        + part("image/svg+xml", SVG, "Content-Disposition: attachment; filename=logo.svg\r\n")
        + "--b1--\r\n").encode()


def download(api: Api, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(api.base_url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def received(stack: dict[str, Any], api: Api) -> dict[str, Any]:
    inbox = create_inbox(api)
    subject = unique("photo")
    png = PNG + uuid.uuid4().hex.encode()  # bytes after IEND keep the digest unique to this run
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.sendmail("pic@customer.example", [inbox["forwarding_address"]],
                        mail_with_attachments(subject, png))
    conversation = wait_for_conversation(api, inbox, subject)
    messages = api.ok("GET", f"/v1/conversations/{conversation['id']}")["messages"]
    message = next(m for m in messages if m["direction"] == "incoming")
    by_name = {attachment["name"]: attachment for attachment in message["attachments"]}
    return {"inbox": inbox, "message": message, "by_name": by_name, "png": png}


def test_attachments__listed_with_urls(received: dict[str, Any]) -> None:
    message, by_name = received["message"], received["by_name"]

    assert sorted(by_name) == ["logo.svg", "photo.png", "請求書.pdf"]
    photo = by_name["photo.png"]
    assert photo["sha256"] == hashlib.sha256(received["png"]).hexdigest()
    assert photo["inline"] is True
    assert photo["url"] == f"/v1/messages/{message['id']}/attachments/{photo['sha256']}"
    assert f'src="{photo["url"]}"' in message["html"]


def test_attachments__image_inline_with_its_type(api: Api, received: dict[str, Any]) -> None:
    status, headers, body = download(api, received["by_name"]["photo.png"]["url"], api.token)

    assert status == 200
    assert body == received["png"]
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == "inline; filename*=UTF-8''photo.png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


@pytest.mark.parametrize(("name", "data", "encoded_name"), [
    ("請求書.pdf", PDF, "%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf"),
    ("logo.svg", SVG, "logo.svg"),
])
def test_attachments__others_as_downloads(api: Api, received: dict[str, Any], name: str,
                                          data: bytes, encoded_name: str) -> None:
    status, headers, body = download(api, received["by_name"][name]["url"], api.token)

    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == f"attachment; filename*=UTF-8''{encoded_name}"


def test_attachments__out_of_reach_is_404(api: Api, received: dict[str, Any]) -> None:
    url = received["by_name"]["photo.png"]["url"]
    message_id = received["message"]["id"]
    outsider = new_token(api, "agent", create_agent(api, create_inbox(api))["email"])
    member = new_token(api, "agent", create_agent(api, received["inbox"])["email"])

    assert download(api, url, None)[0] == 401
    assert download(api, url, outsider)[0] == 404
    assert download(api, url, member)[0] == 200
    assert download(api, f"/v1/messages/{message_id}/attachments/{'0' * 64}", api.token)[0] == 404
    assert download(api, f"/v1/messages/{message_id}/attachments/not-a-digest", api.token)[0] == 404
    assert download(api, f"/v1/messages/{uuid.uuid4()}/attachments/{'0' * 64}",
                    api.token)[0] == 404
