"""The forwarding receiver and the HTTP upload, on the stack and in-process.

The running ingest service of the stack handles the routing cases. The
failure replies (451 and 503 while Kafka or PostgreSQL is unavailable, 552
and 413 over a small size limit) come from a receiver started in the test
process on real components set up to fail: a topic that does not exist, a
database port where nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from services.ingest import http
from services.ingest.directory import PostgresInboxDirectory
from services.ingest.intake import MailIntake
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import MailPublisher
from services.ingest.receiver import ForwardingHandler
from services.ingest.smtp_data import ForwardingSMTP
from services.ingest.store import PostgresRawMailStore
from tests.ingest.harness import IngestRig, incoming_message_ids, mail, query, wait_for
from tests.pipeline_helpers import conversations, create_inbox

pytestmark = pytest.mark.stack

CASE_FORWARDING_ADDRESS = "support-fwd-7f3a@inbound.example.com"


def _smtp_address(stack: dict[str, Any]) -> tuple[str, int]:
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    return host, int(port)


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _wait_messages(stack: dict[str, Any], inbox: dict[str, Any], count: int) -> list[str]:
    def enough() -> list[str] | None:
        found = incoming_message_ids(stack, inbox["id"])
        return found if len(found) >= count else None

    ids: list[str] = wait_for(enough, timeout=120,
                              message=f"{count} incoming messages in {inbox['name']}")
    return ids


def test_two_inboxes__one_copy_each(stack: dict[str, Any],
                                                  cases_dir: Path) -> None:
    raw = _crlf((cases_dir / "09-same-mail-two-inboxes.eml").read_bytes())
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    sales = create_inbox(stack, email_address="sales@example.com", agents=["Lee"])

    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        refused = smtp.sendmail("alice@example.org", [support["forwarding_address"],
                                                      sales["forwarding_address"]], raw)
        # The same mail forwarded again to Support, as a provider's retry would.
        smtp.sendmail("alice@example.org", [support["forwarding_address"]], raw)
        smtp.sendmail("alice@example.org", [support["forwarding_address"]],
                      mail("c09.sentinel@example.org", sender="Bea <bea@example.org>"))

    assert refused == {}
    assert sorted(_wait_messages(stack, support, 2)) == ["c09.alice.twoinboxes@mail.example.org",
                                                         "c09.sentinel@example.org"]
    assert _wait_messages(stack, sales, 1) == ["c09.alice.twoinboxes@mail.example.org"]
    for inbox in (support, sales):
        def greeted(inbox: dict[str, Any] = inbox) -> bool:
            return any(c["greetings_sent"] for c in conversations(stack, inbox))

        wait_for(greeted, timeout=60, message="the greeting")
        [alice] = [c for c in conversations(stack, inbox) if c["contact"] == "alice@example.org"]
        assert alice["greetings_sent"] == 1


def _case_42(cases_dir: Path, forwarding_address: str) -> bytes:
    raw = _crlf((cases_dir / "42-gmail-x-forwarded-to.eml").read_bytes())
    return raw.replace(CASE_FORWARDING_ADDRESS.encode(), forwarding_address.encode())


def test_forwarded_mail__routed_by_envelope(stack: dict[str, Any], cases_dir: Path) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])

    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        smtp.sendmail("dana@example.org", [support["forwarding_address"].upper()],
                      _case_42(cases_dir, support["forwarding_address"]))

    assert _wait_messages(stack, support, 1) == ["c42.dana.locker@mail.example.org"]
    [conversation] = conversations(stack, support)
    assert conversation["contact"] == "dana@example.org"


def test_relayed_mail__header_routing(stack: dict[str, Any],
                                                    cases_dir: Path) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])

    # A relay keeps the customer's original recipient in the envelope.
    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        smtp.sendmail("dana@example.org", ["helpdesk.legacy@legacy.example.org"],
                      _case_42(cases_dir, support["forwarding_address"]))

    assert _wait_messages(stack, support, 1) == ["c42.dana.locker@mail.example.org"]


def test_unknown_address__550_at_rcpt(stack: dict[str, Any]) -> None:
    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("ann@example.org")
        code, text = smtp.rcpt(f"nobody-{uuid.uuid4().hex[:6]}@{stack['inbound_domain']}")

    assert code == 550
    assert b"no messagehub inbox" in text


def test_no_known_address__550_after_data(stack: dict[str, Any]) -> None:
    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as failure:
            smtp.sendmail("ann@example.org", ["someone@example.net"],
                          mail("lost@example.org"))

    assert failure.value.smtp_code == 550
    assert b"X-Forwarded-To" in failure.value.smtp_error


def test_size__advertised(stack: dict[str, Any]) -> None:
    with smtplib.SMTP(*_smtp_address(stack), timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("size")
        assert int(smtp.esmtp_features["size"]) == 50 * 1024 * 1024


# --- in-process receivers on components set up to fail ----------------------

class LocalIngest:
    """A forwarding receiver and HTTP upload on the rig's loop, with given parts."""

    def __init__(self, rig: IngestRig, *, intake: MailIntake, max_bytes: int) -> None:
        self.rig = rig
        directory = PostgresInboxDirectory(rig.pool)
        handler = ForwardingHandler(directory=directory, intake=intake, sensor=IngestMetrics(),
                                    inbound_domain=rig.stack["inbound_domain"])
        self.server = rig.run(self._start_smtp(handler, max_bytes))
        self.smtp_port = self.server.sockets[0].getsockname()[1]
        app = http.create_app(intake=intake, directory=directory, sensor=IngestMetrics(),
                              token="test-token", max_message_bytes=max_bytes)
        self.runner, self.http_port = rig.run(self._start_http(app))

    @staticmethod
    async def _start_smtp(handler: ForwardingHandler, max_bytes: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: ForwardingSMTP(handler, data_size_limit=max_bytes),
                                        "127.0.0.1", 0)

    @staticmethod
    async def _start_http(app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    def post(self, path: str, body: bytes, token: str | None = "test-token") -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body,
                                         method="POST",
                                         headers={"Content-Type": "message/rfc822"})
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.headers

    def close(self) -> None:
        self.server.close()
        self.rig.run(self.server.wait_closed())
        self.rig.run(self.runner.cleanup())


@pytest.fixture()
def working(rig: IngestRig) -> Iterator[LocalIngest]:
    local = LocalIngest(rig, intake=rig.intake, max_bytes=10_000)
    yield local
    local.close()


@pytest.fixture()
def kafka_down(rig: IngestRig) -> Iterator[LocalIngest]:
    # The producer cannot get metadata for a topic that does not exist.
    publisher = MailPublisher(rig.stack["kafka_bootstrap"], topic="tests.no-such-topic",
                              max_block_ms=2000)
    local = LocalIngest(rig, intake=MailIntake(store=PostgresRawMailStore(rig.pool),
                                               publisher=publisher), max_bytes=10_000)
    yield local
    local.close()
    publisher.close()


@pytest.fixture()
def storage_down(rig: IngestRig) -> Iterator[LocalIngest]:
    pool = AsyncConnectionPool("postgresql://messagehub@127.0.0.1:1/messagehub", open=False,
                               timeout=2.0)
    rig.run(pool.open(wait=False))
    local = LocalIngest(rig, intake=MailIntake(store=PostgresRawMailStore(pool),
                                               publisher=rig.publisher), max_bytes=10_000)
    yield local
    local.close()
    rig.run(pool.close())


def test_kafka_down__451_and_503(stack: dict[str, Any], kafka_down: LocalIngest) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    raw = mail("kafka.down@example.org")

    with smtplib.SMTP("127.0.0.1", kafka_down.smtp_port, timeout=60) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as failure:
            smtp.sendmail("ann@example.org", [support["forwarding_address"]], raw)
    status, headers = kafka_down.post(f"/v1/inboxes/{support['id']}/mail", raw)

    assert failure.value.smtp_code == 451
    assert status == 503
    assert headers["Retry-After"] == "30"


def test_storage_down__451_and_503(stack: dict[str, Any], storage_down: LocalIngest) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    raw = mail("storage.down@example.org")

    with smtplib.SMTP("127.0.0.1", storage_down.smtp_port, timeout=60) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as failure:
            smtp.sendmail("ann@example.org", [support["forwarding_address"]], raw)
    status, _headers = storage_down.post(f"/v1/inboxes/{support['id']}/mail", raw)

    assert failure.value.smtp_code == 451
    assert status == 503
    assert query(stack, "SELECT 1 FROM messages WHERE rfc_message_id = %s",
                 "storage.down@example.org") == []


def test_oversize__552_and_413(stack: dict[str, Any], working: LocalIngest) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    raw = mail("big@example.org", body=("x" * 70 + "\r\n") * 300)

    with smtplib.SMTP("127.0.0.1", working.smtp_port, timeout=30) as smtp:
        smtp.ehlo()
        advertised = int(smtp.esmtp_features["size"])
        # A client that declares the size is refused at MAIL FROM...
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            smtp.sendmail("ann@example.org", [support["forwarding_address"]], raw)
        # ...and one that does not, at the end of DATA.
        smtp.rset()
        smtp.mail("ann@example.org")
        smtp.rcpt(support["forwarding_address"])
        data_code, _text = smtp.data(raw)
    status, _headers = working.post(f"/v1/inboxes/{support['id']}/mail", raw)

    assert advertised == 10_000
    assert declared.value.smtp_code == 552
    assert data_code == 552
    assert status == 413


def test_http_upload__accepted(stack: dict[str, Any], working: LocalIngest,
                                          cases_dir: Path) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])

    status, body = working.post(f"/v1/inboxes/{support['id']}/mail",
                                mail("http.1@example.org"))
    by_header_status, by_header = working.post("/v1/mail",
                                               _case_42(cases_dir, support["forwarding_address"]))

    assert status == 202
    assert set(body["event_ids"]) == {support["id"]}
    assert len(body["sha256"]) == 64
    assert by_header_status == 202
    assert set(by_header["event_ids"]) == {support["id"]}
    assert sorted(_wait_messages(stack, support, 2)) == ["c42.dana.locker@mail.example.org",
                                                         "http.1@example.org"]


@pytest.mark.parametrize("path, token, expected", [
    ("/v1/inboxes/{inbox}/mail", None, 401),
    ("/v1/inboxes/{inbox}/mail", "wrong-token", 401),
    ("/v1/inboxes/00000000-0000-0000-0000-000000000000/mail", "test-token", 404),
    ("/v1/mail", "test-token", 404),
])
def test_http_upload__refused(stack: dict[str, Any], working: LocalIngest, path: str,
                              token: str | None, expected: int) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])

    status, _body = working.post(path.format(inbox=support["id"]),
                                 mail("refused@example.org"), token=token)

    assert status == expected


def test_http_upload__service_endpoint(stack: dict[str, Any]) -> None:
    support = create_inbox(stack, email_address="support@example.com", agents=["Kim"])
    request = urllib.request.Request(
        f"{stack['ingest_http']}/v1/inboxes/{support['id']}/mail",
        data=mail("http.service@example.org"), method="POST",
        headers={"Authorization": f"Bearer {stack['ingest_token']}"})

    with urllib.request.urlopen(request, timeout=60) as response:
        status = response.status

    assert status == 202
    assert _wait_messages(stack, support, 1) == ["http.service@example.org"]
