"""SMTP sending against real TLS servers on loopback: modes, AUTH, errors, retries.

Each test starts an aiosmtpd server set up like a provider's port 465, 587
or 25 (see smtp_servers.py) with a self-signed certificate that the client
is told to trust, and sends through :class:`SmtpDelivery` as the outbound
stage does. The settings rules for well-known ports are checked without a
server.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from messagehub.localstack.tls import ensure_self_signed_cert
from messagehub.smtp_client import (
    SmtpDelivery,
    SmtpPermanentError,
    SmtpServer,
    check_settings,
    tls_context,
)
from tests.outbound.smtp_servers import SmtpTestServer

MAIL = (b"From: support@acme.example\r\nTo: alice@example.org\r\nSubject: Hi\r\n"
        b"Message-ID: <t1@messagehub.localhost>\r\n\r\nHello\r\n")
USER = "agent@acme.example"
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ensure_self_signed_cert(folder / "cert.pem", folder / "key.pem")
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def make_server(cert: tuple[Path, Path]) -> Iterator[object]:
    started: list[SmtpTestServer] = []

    def start(mode: str, **kwargs: object) -> SmtpTestServer:
        server = SmtpTestServer(mode, cert_file=cert[0], key_file=cert[1], **kwargs)  # type: ignore[arg-type]
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def delivery(cert: tuple[Path, Path], **kwargs: object) -> SmtpDelivery:
    options: dict[str, object] = {"tls_context": tls_context(str(cert[0])),
                                  "greeting_timeout_seconds": 1.0, "max_attempts": 3,
                                  "first_backoff_seconds": 0.05, "command_timeout_seconds": 5.0}
    options.update(kwargs)
    return SmtpDelivery(**options)  # type: ignore[arg-type]


async def send(client: SmtpDelivery, server: SmtpServer) -> str:
    try:
        return await client.send(server, MAIL, sender="support@acme.example",
                                  recipients=["alice@example.org"])
    finally:
        await client.close()


# --- settings that cannot work ------------------------------------------


@pytest.mark.parametrize(("port", "encryption", "expected"), [
    (587, "tls", "port 587 expects STARTTLS"),
    (25, "tls", "port 25 expects STARTTLS"),
    (465, "starttls", "port 465 expects implicit TLS"),
    (465, "none", "port 465 expects implicit TLS"),
])
def test_check_settings__port_mismatch(port: int, encryption: str, expected: str) -> None:
    with pytest.raises(SmtpPermanentError) as raised:
        check_settings(host="smtp.example.com", port=port, username="", encryption=encryption,
                       auth_method="auto")
    assert expected in str(raised.value)
    assert raised.value.error_class == "tls"


def test_check_settings__plaintext_auth_refused() -> None:
    with pytest.raises(SmtpPermanentError) as raised:
        SmtpServer("smtp.example.com", 2525, username=USER, password=PASSWORD, encryption="none")
    assert "never sent over plaintext" in str(raised.value)


def test_check_settings__loopback_plaintext_allowed() -> None:
    server = SmtpServer("127.0.0.1", 2525, username=USER, password=PASSWORD, encryption="none")
    assert server.tls_mode == "none"


@pytest.mark.parametrize(("port", "mode"), [(465, "tls"), (587, "starttls"), (25, "starttls")])
def test_auto_encryption__by_port(port: int, mode: str) -> None:
    assert SmtpServer("smtp.example.com", port).tls_mode == mode


def test_password__not_in_repr() -> None:
    assert PASSWORD not in repr(SmtpServer("smtp.example.com", 587, username=USER,
                                           password=PASSWORD))


# --- the port matrix ----------------------------------------------------


async def test_implicit_tls__sends_with_auth(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("implicit_tls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="tls")

    response = await send(delivery(cert), settings)

    assert response.startswith("250")
    assert len(server.mails) == 1
    assert server.mails[0].over_tls
    assert server.mails[0].login == USER
    assert server.sessions[0].starttls_count == 0


async def test_starttls__upgrades_once_then_auth(cert: tuple[Path, Path],
                                                 make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="starttls")

    await send(delivery(cert), settings)

    assert len(server.mails) == 1
    assert server.sessions[0].starttls_count == 1
    assert [a.over_tls for a in server.sessions[0].auth] == [True]
    assert server.sessions[0].auth[0].mechanism == "CRAM-MD5"
    assert server.mails[0].login == USER


@pytest.mark.parametrize("method", ["login", "plain", "cram-md5"])
async def test_starttls__pinned_mechanism(cert: tuple[Path, Path], make_server: object,
                                          method: str) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="starttls", auth_method=method)

    await send(delivery(cert), settings)

    assert [a.mechanism for a in server.sessions[0].auth] == [method.upper()]
    assert len(server.mails) == 1


async def test_pinned_mechanism__not_offered(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("starttls", mechanisms=("PLAIN",))  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="starttls", auth_method="cram-md5")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert raised.value.error_class == "auth"
    assert "does not offer AUTH CRAM-MD5; it offers PLAIN" in str(raised.value)
    assert server.sessions[0].auth == []


async def test_relay__empty_username_means_no_auth(cert: tuple[Path, Path],
                                                   make_server: object) -> None:
    server = make_server("relay")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username="", password="ignored")

    await send(delivery(cert), settings)

    assert len(server.mails) == 1
    assert server.sessions[0].auth == []
    assert server.sessions[0].starttls_count == 1
    assert server.mails[0].over_tls


async def test_plaintext_loopback__auth_only_after_starttls(cert: tuple[Path, Path],
                                                            make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="none")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert "only after STARTTLS" in str(raised.value)
    assert server.sessions[0].auth == []
    assert server.mails == []


async def test_implicit_tls_on_starttls_port__clear_error(cert: tuple[Path, Path],
                                                          make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="tls")

    started = time.monotonic()
    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert, greeting_timeout_seconds=5.0), settings)

    assert raised.value.error_class == "tls"
    assert "expects STARTTLS" in str(raised.value)
    # Not a wait for the timeout: the server's plaintext greeting breaks the handshake.
    assert time.monotonic() - started < 5.0


async def test_starttls_on_implicit_tls_port__clear_error(cert: tuple[Path, Path],
                                                          make_server: object) -> None:
    server = make_server("implicit_tls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="starttls")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert raised.value.error_class == "tls"
    assert "no SMTP greeting" in str(raised.value)
    assert "expects implicit TLS" in str(raised.value)
    assert server.mails == []


async def test_untrusted_certificate__tls_error(make_server: object) -> None:
    server = make_server("implicit_tls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, encryption="tls")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(SmtpDelivery(tls_context=ssl.create_default_context(), max_attempts=1), settings)

    assert raised.value.error_class == "tls"
    assert "failed verification" in str(raised.value)


# --- server replies -----------------------------------------------------


async def test_wrong_password__permanent_auth(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password="wrong",
                          encryption="starttls", auth_method="plain")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert raised.value.error_class == "auth"
    assert raised.value.code == 535
    assert "wrong" not in str(raised.value)
    assert len(server.sessions) == 1


async def test_app_password_required__hint(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server(  # type: ignore[operator]
        "starttls", auth_reply="534 5.7.9 Application-specific password required.")
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD,
                          encryption="starttls", auth_method="login")

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert raised.value.code == 534
    assert "needs an app password" in str(raised.value)


async def test_data_550__permanent_with_code(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("relay")  # type: ignore[operator]
    server.data_reply = "550 5.1.1 <alice@example.org>: Recipient address rejected"
    settings = SmtpServer("127.0.0.1", server.port)

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert), settings)

    assert raised.value.error_class == "rejected"
    assert raised.value.code == 550
    assert "Recipient address rejected" in str(raised.value)
    assert len(server.sessions) == 1


async def test_data_451__retried_then_given_up(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("relay")  # type: ignore[operator]
    server.data_reply = "451 4.3.0 Try again later"
    settings = SmtpServer("127.0.0.1", server.port)

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert, max_attempts=3), settings)

    assert raised.value.code == 451
    assert "gave up after 3 attempts" in str(raised.value)
    assert len(server.sessions) == 3


async def test_temporary_failure__then_success(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("relay")  # type: ignore[operator]
    server.data_reply = "451 4.3.0 Try again later"
    settings = SmtpServer("127.0.0.1", server.port)
    client = delivery(cert, max_attempts=5, first_backoff_seconds=0.3)

    async def heal() -> None:
        server.data_reply = None

    import asyncio
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, lambda: asyncio.ensure_future(heal()))
    response = await send(client, settings)

    assert response.startswith("250")
    assert len(server.mails) == 1


async def test_connection_refused__temporary_then_permanent(cert: tuple[Path, Path]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    settings = SmtpServer("127.0.0.1", free_port)

    with pytest.raises(SmtpPermanentError) as raised:
        await send(delivery(cert, max_attempts=2), settings)

    assert raised.value.error_class == "connect"
    assert "gave up after 2 attempts" in str(raised.value)


async def test_connection__reused_between_sends(cert: tuple[Path, Path],
                                                make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD)
    client = delivery(cert)

    for _ in range(3):
        await client.send(settings, MAIL, sender="support@acme.example",
                          recipients=["alice@example.org"])
    await client.close()

    assert len(server.mails) == 3
    assert len(server.sessions) == 1
    assert server.sessions[0].starttls_count == 1


async def test_verify__summary(cert: tuple[Path, Path], make_server: object) -> None:
    server = make_server("starttls")  # type: ignore[operator]
    settings = SmtpServer("127.0.0.1", server.port, username=USER, password=PASSWORD)

    summary = await delivery(cert).verify(settings)

    assert summary == f"127.0.0.1:{server.port}: connected with TLS, authenticated as {USER!r}"
    assert server.mails == []
