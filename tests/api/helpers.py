"""Helpers of the API tests: an HTTP caller that records every response, and waits.

:class:`Api` calls the running API of the test stack. It fails a test on
any 500, because the API answers every refused request with a 4xx, and it
keeps the text of every answer so that the password test can search them.
"""

from __future__ import annotations

import email.policy
import json
import smtplib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

from messagehub.localstack.smtp_sink import read_sink

T = TypeVar("T")
_NO_TOKEN = object()


class Api:
    """Calls the API at ``base_url`` with a default bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.answers: list[str] = []

    def call(self, method: str, path: str, body: Any = None, *, token: Any = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        """Return the status and decoded JSON response of one request."""
        chosen = self.token if token is None else token
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        if chosen is not _NO_TOKEN:
            request_headers["Authorization"] = f"Bearer {chosen}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers=request_headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, text = response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode("utf-8")
        self.answers.append(text)
        assert status != 500, f"{method} {path} answered 500: {text}"
        return status, json.loads(text) if text else None

    def ok(self, method: str, path: str, body: Any = None, *, expected: int = 200,
           **kwargs: Any) -> Any:
        """Return the response of a request that must succeed with ``expected``."""
        status, answer = self.call(method, path, body, **kwargs)
        assert status == expected, f"{method} {path}: {status} {answer}"
        return answer

    def anonymous(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send a request without an Authorization header."""
        return self.call(method, path, body, token=_NO_TOKEN)


def field_errors(answer: dict[str, Any]) -> dict[str, str]:
    """Return ``{field: message}`` of a 422 answer."""
    return {item["field"]: item["message"] for item in answer["error"].get("fields", [])}


def unique(prefix: str) -> str:
    """Return a name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_inbox(api: Api, **extra: Any) -> dict[str, Any]:
    """Create an inbox with a unique name through the API."""
    body = {"name": unique("api-inbox"), "email": "support@acme.example", **extra}
    answer: dict[str, Any] = api.ok("POST", "/v1/inboxes", body, expected=201)
    return answer


def create_agent(api: Api, inbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create an agent with a unique address, in ``inbox`` when given."""
    name = unique("agent")
    body: dict[str, Any] = {"name": name.title(), "email": f"{name}@agents.example.com"}
    if inbox is not None:
        body["inboxes"] = [inbox["name"]]
    answer: dict[str, Any] = api.ok("POST", "/v1/agents", body, expected=201)
    return answer


def forward_mail(stack: dict[str, Any], inbox: dict[str, Any], *, sender: str, subject: str,
                 body: str = "Hello, I need help.", message_id: str | None = None) -> str:
    """Send a customer mail to the inbox's forwarding address; return its Message-ID."""
    message_id = message_id or f"{uuid.uuid4().hex}@customer.example"
    raw = (f"From: Customer <{sender}>\r\nTo: support@acme.example\r\nSubject: {subject}\r\n"
           f"Message-ID: <{message_id}>\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n")
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        client.sendmail(sender, [inbox["forwarding_address"]], raw.encode())
    return message_id


def wait_for(condition: Callable[[], T | None], *, timeout: float = 90.0,
             what: str = "the condition") -> T:
    """Return the first true value of ``condition``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.3)


def wait_for_conversation(api: Api, inbox: dict[str, Any], subject: str) -> dict[str, Any]:
    """Return the inbox's conversation with ``subject`` once the router has made it."""
    def find() -> dict[str, Any] | None:
        answer = api.ok("GET", f"/v1/inboxes/{inbox['id']}/conversations")
        return next((c for c in answer["conversations"] if c["subject"] == subject), None)
    return wait_for(find, what=f"conversation {subject!r}")


def sink_texts_with(stack: dict[str, Any], text: str) -> list[str]:
    """Return the decoded plain-text bodies of the sink's mails that contain ``text``."""
    bodies = [plain_text(mail.raw) for mail in read_sink(Path(stack["sink_dir"]))]
    return [body for body in bodies if text in body]


def plain_text(raw: bytes) -> str:
    """Return the decoded text/plain parts of a mail."""
    message = email.message_from_bytes(raw, _class=EmailMessage,
                                       policy=email.policy.default)  # type: ignore[arg-type]
    assert isinstance(message, EmailMessage)
    return "\n".join(str(part.get_content()) for part in message.walk()
                     if isinstance(part, EmailMessage) and part.get_content_type() == "text/plain")
