"""Malformed protocol input and oversize requests against the receiver, the upload and the API.

Every abuse must get a clear error (an SMTP 5xx or 4xx, an HTTP 4xx with a
JSON error), and afterwards the same process must still serve an ordinary
request: nothing crashed and nothing was restarted.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messagehub import db, stackctl
from tests.pipeline_helpers import create_inbox

pytestmark = pytest.mark.stack

MIB = 1024 * 1024
OVER_LIMIT_BYTES = 51 * MIB  # the receiver's and the upload's limit is 50 MiB


class SmtpConversation:
    """A raw SMTP client that sends exactly the bytes a test writes."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply()

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply; return its code and text."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"server closed the connection after {lines!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def inbox(stack: dict[str, Any]) -> dict[str, Any]:
    return create_inbox(stack, email_address="support@abuse.example", agents=["Kim"],
                        greeting=False)


@pytest.fixture(scope="module", autouse=True)
def pids_before(stack: dict[str, Any]) -> dict[str, int]:
    status = stackctl.status(Path(stack["state_dir"]), int(stack["port_base"]))
    return {name: status[name]["pid"] for name in ("ingest", "api")}


@pytest.fixture
def smtp(stack: dict[str, Any]) -> Iterator[SmtpConversation]:
    conversation = SmtpConversation(stack["ingest_smtp"])
    try:
        yield conversation
    finally:
        conversation.close()


# --- the forwarding receiver ---------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"HELLO there", b"\x00\x01\x02", b"MAIL FROM:<a@b.example> BODY=8BITMIME\x00",
    b"RCPT TO:<nobody@example.org>", b"DATA", b"AUTH PLAIN AAAA", b"EXPN staff",
    b"MAIL FROM:<" + b"a" * 400 + b"@b.example>",
])
def test_receiver__bad_command_answered(smtp: SmtpConversation, line: bytes) -> None:
    code, text = smtp.command(line)

    assert 500 <= code < 600, text


def test_receiver__starttls_unavailable_answered(smtp: SmtpConversation) -> None:
    smtp.command(b"EHLO abuse.example")

    code, text = smtp.command(b"STARTTLS")

    assert code == 454, text


def test_receiver__overlong_command_rejected(smtp: SmtpConversation) -> None:
    code, text = smtp.command(b"EHLO " + b"a" * 100_000)

    assert code == 500
    assert "too long" in text.lower()


def test_receiver__crlf_in_envelope_rejected(smtp: SmtpConversation,
                                             inbox: dict[str, Any]) -> None:
    smtp.command(b"EHLO abuse.example")

    code, _ = smtp.command(b"MAIL FROM:<a@b.example\rRCPT TO:<x@y.example>>")

    assert code >= 500


def test_receiver__declared_size_over_limit(smtp: SmtpConversation) -> None:
    smtp.command(b"EHLO abuse.example")

    code, text = smtp.command(b"MAIL FROM:<a@b.example> SIZE=%d" % OVER_LIMIT_BYTES)

    assert code == 552, text


def test_receiver__oversize_data_rejected(smtp: SmtpConversation, inbox: dict[str, Any]) -> None:
    smtp.command(b"EHLO abuse.example")
    smtp.command(b"MAIL FROM:<a@b.example>")
    smtp.command(b"RCPT TO:<" + inbox["forwarding_address"].encode() + b">")
    assert smtp.command(b"DATA")[0] == 354

    line = b"x" * 998 + b"\r\n"
    for _ in range(OVER_LIMIT_BYTES // len(line) + 1):
        smtp.send(line)
    code, text = smtp.command(b".")

    assert code == 552, text


def test_receiver__abandoned_data_stores_nothing(stack: dict[str, Any],
                                                 inbox: dict[str, Any]) -> None:
    conversation = SmtpConversation(stack["ingest_smtp"])
    conversation.command(b"EHLO abuse.example")
    conversation.command(b"MAIL FROM:<a@b.example>")
    conversation.command(b"RCPT TO:<" + inbox["forwarding_address"].encode() + b">")
    conversation.command(b"DATA")
    conversation.send(b"Subject: cut off\r\nMessage-ID: <abandoned@abuse.example>\r\n\r\nhal")
    conversation.close()
    time.sleep(2)

    with db.connect(stack["database_url"]) as conn:
        row = conn.execute("SELECT count(*) AS n FROM raw_mails "
                           "WHERE position(%s::bytea in content) > 0",
                           (b"abandoned@abuse.example",)).fetchone()
    assert row is not None
    assert row["n"] == 0


def test_receiver__dropped_connections(stack: dict[str, Any]) -> None:
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    for _ in range(200):
        with socket.create_connection((host, int(port)), timeout=10):
            pass

    with smtplib.SMTP(host, int(port), timeout=30) as client:
        assert client.noop()[0] == 250


def test_receiver__bare_lf_dot_smuggles_nothing(stack: dict[str, Any],
                                                inbox: dict[str, Any]) -> None:
    # SMTP smuggling: a receiver that ends DATA at <LF>.<LF> would take the
    # rest as a second, spoofed transaction.
    forwarding = inbox["forwarding_address"].encode()
    body = (b"From: <eve@abuse.example>\r\nSubject: outer\r\n"
            b"Message-ID: <outer@abuse.example>\r\n\r\nfirst\n.\n"
            b"MAIL FROM:<ceo@shop.example>\nRCPT TO:<" + forwarding + b">\nDATA\n"
            b"From: <ceo@shop.example>\nSubject: smuggled\n"
            b"Message-ID: <smuggled@abuse.example>\n\ninner\r\n.\r\n")
    conversation = SmtpConversation(stack["ingest_smtp"])
    conversation.command(b"EHLO abuse.example")
    conversation.command(b"MAIL FROM:<eve@abuse.example>")
    conversation.command(b"RCPT TO:<" + forwarding + b">")
    conversation.command(b"DATA")
    conversation.send(body)
    code, _ = conversation.reply()
    conversation.close()

    assert code == 250
    assert _wait_for_message(stack, inbox["id"], "outer@abuse.example")
    assert not _message_exists(stack, inbox["id"], "smuggled@abuse.example")


def test_receiver__long_lines_accepted(stack: dict[str, Any], inbox: dict[str, Any]) -> None:
    # RFC 5321 limits a line to 1,000 octets, but real senders exceed it;
    # refusing their mail would only bounce it back to the customer.
    long_line = b"word " * 4000
    body = (b"From: <sloppy@abuse.example>\r\nSubject: long lines\r\n"
            b"Message-ID: <long.lines@abuse.example>\r\n\r\n" + long_line + b"\r\n"
            b"..a dot-stuffed line\r\n.\r\n")
    conversation = SmtpConversation(stack["ingest_smtp"])
    conversation.command(b"EHLO abuse.example")
    conversation.command(b"MAIL FROM:<sloppy@abuse.example>")
    conversation.command(b"RCPT TO:<" + inbox["forwarding_address"].encode() + b">")
    conversation.command(b"DATA")
    conversation.send(body)
    code, text = conversation.reply()
    conversation.close()

    assert code == 250, text
    assert _wait_for_message(stack, inbox["id"], "long.lines@abuse.example")
    with db.connect(stack["database_url"]) as conn:
        row = conn.execute("SELECT text_body FROM messages WHERE inbox_id = %s "
                           "AND rfc_message_id = %s",
                           (inbox["id"], "long.lines@abuse.example")).fetchone()
    assert row is not None
    lines = row["text_body"].split("\n")
    assert lines[0].rstrip() == long_line.decode().rstrip()
    assert lines[1].rstrip() == ".a dot-stuffed line"


# --- HTTP: the upload and the API -----------------------------------------------------


def http(method: str, url: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def raw_http(url: str, request: bytes) -> bytes:
    """Send raw bytes to the HTTP server of ``url``; return what came back until it closed."""
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_upload__oversize_body_413(stack: dict[str, Any], inbox: dict[str, Any]) -> None:
    status, body = http("POST", f"{stack['ingest_http']}/v1/inboxes/{inbox['id']}/mail",
                        body=b"x" * OVER_LIMIT_BYTES,
                        headers={"Authorization": f"Bearer {stack['ingest_token']}"})

    assert status == 413, body[:200]


def test_upload__bad_token_401(stack: dict[str, Any], inbox: dict[str, Any]) -> None:
    status, body = http("POST", f"{stack['ingest_http']}/v1/inboxes/{inbox['id']}/mail",
                        body=b"Subject: x\r\n\r\nx", headers={"Authorization": "Bearer nope"})

    assert status == 401
    assert "error" in json.loads(body)


def test_upload__inbox_id_not_a_uuid_404(stack: dict[str, Any]) -> None:
    status, body = http("POST", f"{stack['ingest_http']}/v1/inboxes/not-a-uuid/mail",
                        body=b"Subject: x\r\n\r\nx",
                        headers={"Authorization": f"Bearer {stack['ingest_token']}"})

    assert status == 404, body[:200]
    assert "error" in json.loads(body)


def test_api__oversize_body_413(stack: dict[str, Any]) -> None:
    status, body = http("POST", f"{stack['api']}/v1/inboxes", body=b"{" + b" " * (2 * MIB),
                        headers={"Authorization": f"Bearer {stack['api_token']}",
                                 "Content-Type": "application/json"})

    assert status == 413, body[:200]
    assert "error" in json.loads(body)


def test_api__malformed_json_400(stack: dict[str, Any]) -> None:
    status, body = http("POST", f"{stack['api']}/v1/inboxes", body=b"{\"name\": ",
                        headers={"Authorization": f"Bearer {stack['api_token']}",
                                 "Content-Type": "application/json"})

    assert status == 400, body[:200]
    assert "error" in json.loads(body)


@pytest.mark.parametrize("path", ["/v1/conversations/not-a-uuid", "/v1/inboxes/%ff%fe",
                                  "/v1/agents/" + "a" * 5000, "/v1/inboxes/x%00y/settings"])
def test_api__bad_path_is_4xx(stack: dict[str, Any], path: str) -> None:
    status, body = http("GET", stack["api"] + path,
                        headers={"Authorization": f"Bearer {stack['api_token']}"})

    assert 400 <= status < 500, body[:200]


@pytest.mark.parametrize("service", ["api", "ingest_http"])
@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/mail HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_http__malformed_request_4xx(stack: dict[str, Any], service: str,
                                     request_bytes: bytes) -> None:
    answer = raw_http(stack[service], request_bytes)

    status_line = answer.split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), answer[:200]


def test_api__path_cannot_forge_log_lines(stack: dict[str, Any]) -> None:
    marker = "forged-line-" + str(time.time_ns())

    status, _ = http("GET", f"{stack['api']}/v1/inboxes/x%0D%0A{marker}%20INFO%20ok/settings",
                     headers={"Authorization": f"Bearer {stack['api_token']}"})

    assert 400 <= status < 500
    log_text = (Path(stack["state_dir"]) / "services" / "service-api.log").read_text(
        encoding="utf-8", errors="replace")
    assert not any(line.startswith(marker) for line in log_text.splitlines())


# --- afterwards --------------------------------------------------------------------------


def test_after_abuse__same_processes_serve(stack: dict[str, Any], inbox: dict[str, Any],
                                           pids_before: dict[str, int]) -> None:
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    raw = (b"From: Ann <ann@customers.example>\r\nTo: <support@abuse.example>\r\n"
           b"Subject: after the abuse\r\nMessage-ID: <after-abuse@customers.example>\r\n\r\nhi\r\n")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.sendmail("ann@customers.example", [inbox["forwarding_address"]], raw)

    assert _wait_for_message(stack, inbox["id"], "after-abuse@customers.example")
    assert http("GET", f"{stack['api']}/healthz")[0] == 200
    status = stackctl.status(Path(stack["state_dir"]), int(stack["port_base"]))
    assert {name: status[name]["pid"] for name in pids_before} == pids_before


def _message_exists(stack: dict[str, Any], inbox_id: str, message_id: str) -> bool:
    with db.connect(stack["database_url"], autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM messages WHERE inbox_id = %s AND rfc_message_id = %s",
                           (inbox_id, message_id)).fetchone()
    return row is not None


def _wait_for_message(stack: dict[str, Any], inbox_id: str, message_id: str) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _message_exists(stack, inbox_id, message_id):
            return True
        time.sleep(1)
    return False
