"""Connection tests through the API against servers on loopback that are set up wrongly on purpose.

The API service of the stack runs each test; the servers are the stack's
Dovecot (plaintext IMAP and IMAPS with a certificate the API trusts), a
second Dovecot of this module that offers only CRAM-MD5 and has a
certificate the API does not trust, and aiosmtpd servers set up like a
provider's port 587, 465 or 25 (tests/outbound/smtp_servers.py). Every
case checks the classified reason and that the hint names the fix.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from messagehub.localstack.dovecot import DovecotServer
from messagehub.localstack.tls import ensure_self_signed_cert
from tests.api.helpers import Api, create_inbox, wait_for
from tests.ingest.harness import new_imap_user
from tests.outbound.smtp_servers import SmtpTestServer

pytestmark = pytest.mark.stack

SMTP_USER = "agent@acme.example"
SMTP_PASSWORD = "smtp correct horse"
# Ports of this module's own Dovecot, above the stack's range of offsets.
OWN_DOVECOT_OFFSETS = (310, 311)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_of(stack: dict[str, Any], name: str) -> int:
    return int(stack[name].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def inbox(api: Api) -> dict[str, Any]:
    return create_inbox(api)


@pytest.fixture(scope="module")
def mailbox(stack: dict[str, Any]) -> tuple[str, str]:
    return new_imap_user("conntest")


@pytest.fixture(scope="module")
def trusted_cert(stack: dict[str, Any]) -> tuple[Path, Path]:
    """The stack's certificate and key, which the API trusts (MESSAGEHUB_TLS_CA_FILE)."""
    folder = Path(stack["tls_ca_file"]).parent
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def untrusted_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("untrusted")
    ensure_self_signed_cert(folder / "cert.pem", folder / "key.pem")
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def cram_only_dovecot(stack: dict[str, Any],
                      trusted_cert: tuple[Path, Path]) -> Iterator[DovecotServer]:
    """A Dovecot that offers only CRAM-MD5, with the certificate the API trusts."""
    base = int(stack["port_base"])
    server = DovecotServer(Path(stack["state_dir"]) / "api-dovecot",
                           base + OWN_DOVECOT_OFFSETS[0], base + OWN_DOVECOT_OFFSETS[1])
    (server.root / "tls").mkdir(parents=True, exist_ok=True)
    shutil.copy(trusted_cert[0], server.cert_path)
    shutil.copy(trusted_cert[1], server.key_path)
    server.prepare()
    config = server.config_path.read_text(encoding="utf-8")
    server.config_path.write_text(config.replace("auth_mechanisms = plain login",
                                                 "auth_mechanisms = cram-md5"), encoding="utf-8")
    server.process.start()
    yield server
    server.stop()


def imap_test(api: Api, inbox: dict[str, Any], **settings: Any) -> dict[str, Any]:
    answer: dict[str, Any] = api.ok("POST", f"/v1/inboxes/{inbox['id']}/imap/test", settings)
    assert answer["seconds"] < 25, "a test must end within the API's bound"
    return answer


def smtp_test(api: Api, inbox: dict[str, Any], **settings: Any) -> dict[str, Any]:
    body = {"host": "127.0.0.1", "username": SMTP_USER, "password": SMTP_PASSWORD, **settings}
    answer: dict[str, Any] = api.ok("POST", f"/v1/inboxes/{inbox['id']}/smtp/test", body)
    assert answer["seconds"] < 25, "a test must end within the API's bound"
    return answer


# --- IMAP ----------------------------------------------------------------------------


def test_imap_right_settings_pass(stack: dict[str, Any], api: Api, inbox: dict[str, Any],
                                  mailbox: tuple[str, str]) -> None:
    login, password = mailbox
    for security, port in (("tls", port_of(stack, "imaps")), ("starttls", port_of(stack, "imap"))):
        answer = imap_test(api, inbox, host="127.0.0.1", port=port, username=login,
                           password=password, security=security)
        assert answer["ok"] is True, answer
        assert answer["reason"] is None
        assert f"logged in as {login!r}" in answer["message"]


def test_imap_wrong_password(stack: dict[str, Any], api: Api, inbox: dict[str, Any],
                             mailbox: tuple[str, str]) -> None:
    answer = imap_test(api, inbox, host="127.0.0.1", port=port_of(stack, "imaps"),
                       username=mailbox[0], password="not the password", security="tls")
    assert (answer["ok"], answer["reason"], answer["step"]) == (False, "authentication", "LOGIN")
    assert "password is wrong" in answer["hint"]


def test_imap_wrong_port(api: Api, inbox: dict[str, Any], mailbox: tuple[str, str]) -> None:
    port = free_port()
    answer = imap_test(api, inbox, host="127.0.0.1", port=port, username=mailbox[0],
                       password=mailbox[1], security="tls")
    assert answer["reason"] == "refused"
    assert f"Nothing answers on port {port}" in answer["hint"]


def test_imap_tls_on_plaintext_port(stack: dict[str, Any], api: Api, inbox: dict[str, Any],
                                    mailbox: tuple[str, str]) -> None:
    port = port_of(stack, "imap")
    answer = imap_test(api, inbox, host="127.0.0.1", port=port, username=mailbox[0],
                       password=mailbox[1], security="tls")
    assert answer["reason"] == "tls_mismatch"
    assert f"Port {port} expects STARTTLS" in answer["hint"]


def test_imap_starttls_on_implicit_tls_port(stack: dict[str, Any], api: Api,
                                            inbox: dict[str, Any],
                                            mailbox: tuple[str, str]) -> None:
    port = port_of(stack, "imaps")
    answer = imap_test(api, inbox, host="127.0.0.1", port=port, username=mailbox[0],
                       password=mailbox[1], security="starttls")
    assert (answer["reason"], answer["step"]) == ("tls_mismatch", "greeting")
    assert f"Port {port} expects SSL/TLS" in answer["hint"]


def test_imap_app_password_demanded(stack: dict[str, Any], api: Api,
                                    inbox: dict[str, Any]) -> None:
    login, password = new_imap_user("apppw")
    users = DovecotServer(Path(stack["state_dir"]) / "dovecot", port_of(stack, "imap"),
                          port_of(stack, "imaps"))
    # Dovecot's nologin refuses the right password with this reason, as Gmail does.
    lines = [line if not line.startswith(f"{login}:") else
             line.rstrip(":") + "::::::nologin reason=Application-specific-password-required"
             for line in users._read_users()]
    # Dovecot notices a changed passwd-file by its modification time, in whole seconds.
    time.sleep(1.1)
    users._write_users(lines)

    def refused() -> dict[str, Any] | None:
        answer = imap_test(api, inbox, host="127.0.0.1", port=port_of(stack, "imaps"),
                           username=login, password=password, security="tls")
        return None if answer["ok"] else answer
    answer = wait_for(refused, timeout=30, what="Dovecot to reread its users")
    assert answer["reason"] == "app_password", answer
    assert "needs an app password" in answer["hint"]


def test_imap_mechanism_not_offered(api: Api, inbox: dict[str, Any],
                                    cram_only_dovecot: DovecotServer) -> None:
    for security, port in (("tls", cram_only_dovecot.imaps_port),
                           ("starttls", cram_only_dovecot.imap_port)):
        answer = imap_test(api, inbox, host="127.0.0.1", port=port, username="someone",
                           password="secret", security=security)
        assert (answer["reason"], answer["step"]) == ("mechanism", "LOGIN"), answer
        assert "AUTH=CRAM-MD5" in answer["message"]
        assert "does not allow password logins" in answer["hint"]

    # Before TLS a server hides what it offers after it, so the first advice is STARTTLS.
    answer = imap_test(api, inbox, host="127.0.0.1", port=cram_only_dovecot.imap_port,
                       username="someone", password="secret", security="none")
    assert answer["reason"] == "mechanism"
    assert "choose STARTTLS" in answer["hint"]


def test_imap_untrusted_certificate(api: Api, inbox: dict[str, Any], smtp_server: Any,
                                    untrusted_cert: tuple[Path, Path]) -> None:
    # The TLS handshake fails before any IMAP is spoken, so any TLS server will do.
    server = smtp_server("implicit_tls", cert=untrusted_cert)
    answer = imap_test(api, inbox, host="127.0.0.1", port=server.port, username="someone",
                       password="secret", security="tls")
    assert answer["reason"] == "certificate", answer
    assert "not trusted" in answer["hint"]


# --- SMTP ----------------------------------------------------------------------------


@pytest.fixture
def smtp_server(trusted_cert: tuple[Path, Path]) -> Iterator[Any]:
    started: list[SmtpTestServer] = []

    def start(mode: str, cert: tuple[Path, Path] | None = None, **kwargs: Any) -> SmtpTestServer:
        chosen = cert or trusted_cert
        server = SmtpTestServer(mode, cert_file=chosen[0], key_file=chosen[1],
                                username=SMTP_USER, password=SMTP_PASSWORD, **kwargs)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def test_smtp_right_settings_pass(api: Api, inbox: dict[str, Any], smtp_server: Any) -> None:
    submission, implicit = smtp_server("starttls"), smtp_server("implicit_tls")
    for port, encryption in ((submission.port, "starttls"), (implicit.port, "tls")):
        answer = smtp_test(api, inbox, port=port, encryption=encryption)
        assert answer["ok"] is True, answer
        assert f"authenticated as {SMTP_USER!r}" in answer["message"]


def test_smtp_wrong_password(api: Api, inbox: dict[str, Any], smtp_server: Any) -> None:
    server = smtp_server("starttls")
    answer = smtp_test(api, inbox, port=server.port, encryption="starttls",
                       password="wrong horse")
    assert (answer["ok"], answer["reason"]) == (False, "authentication")


def test_smtp_app_password_demanded(api: Api, inbox: dict[str, Any], smtp_server: Any) -> None:
    # Like Gmail: LOGIN and PLAIN only, and every login refused with 534 5.7.9.
    server = smtp_server("starttls", mechanisms=("LOGIN", "PLAIN"),
                         auth_reply="534 5.7.9 Application-specific password "
                                                "required. Learn more at https://support."
                                                "google.com/mail/?p=InvalidSecondFactor")
    answer = smtp_test(api, inbox, port=server.port, encryption="starttls")
    assert answer["reason"] == "app_password"
    assert "needs an app password" in answer["hint"]


def test_smtp_wrong_port(api: Api, inbox: dict[str, Any]) -> None:
    port = free_port()
    answer = smtp_test(api, inbox, port=port, encryption="starttls")
    assert answer["reason"] == "refused"
    assert f"Nothing answers on port {port}" in answer["hint"]


def test_smtp_implicit_tls_on_starttls_port(api: Api, inbox: dict[str, Any],
                                            smtp_server: Any) -> None:
    server = smtp_server("starttls")
    answer = smtp_test(api, inbox, port=server.port, encryption="tls")
    assert answer["reason"] == "tls_mismatch"
    assert f"Port {server.port} expects STARTTLS" in answer["hint"]


def test_smtp_starttls_on_implicit_tls_port(api: Api, inbox: dict[str, Any],
                                            smtp_server: Any) -> None:
    server = smtp_server("implicit_tls")
    answer = smtp_test(api, inbox, port=server.port, encryption="starttls")
    assert answer["reason"] == "tls_mismatch"
    assert f"Port {server.port} expects SSL/TLS" in answer["hint"]


def test_smtp_well_known_port_mismatch(api: Api, inbox: dict[str, Any]) -> None:
    answer = smtp_test(api, inbox, port=587, encryption="tls")
    assert answer["reason"] == "tls_mismatch"
    assert answer["hint"] == "Port 587 expects STARTTLS, not SSL/TLS: choose STARTTLS as " \
                             "encryption."


def test_smtp_mechanism_not_offered(api: Api, inbox: dict[str, Any], smtp_server: Any) -> None:
    cram_only = smtp_server("starttls", mechanisms=("CRAM-MD5",))
    answer = smtp_test(api, inbox, port=cram_only.port, encryption="starttls",
                       auth_method="plain")
    assert answer["reason"] == "mechanism"
    assert "authentication method" in answer["hint"]

    relay = smtp_server("relay")
    answer = smtp_test(api, inbox, port=relay.port, encryption="starttls")
    assert answer["reason"] == "mechanism"
    assert "submission port" in answer["hint"]


def test_smtp_untrusted_certificate(api: Api, inbox: dict[str, Any], smtp_server: Any,
                                    untrusted_cert: tuple[Path, Path]) -> None:
    server = smtp_server("implicit_tls", cert=untrusted_cert)
    answer = smtp_test(api, inbox, port=server.port, encryption="tls")
    assert answer["reason"] == "certificate"
    assert "not trusted" in answer["hint"]


def test_stored_settings_tested_without_body(stack: dict[str, Any], api: Api,
                                             mailbox: tuple[str, str]) -> None:
    target = create_inbox(api)
    login, password = mailbox
    api.ok("PATCH", f"/v1/inboxes/{target['id']}/imap", {
        "host": "127.0.0.1", "port": port_of(stack, "imaps"), "username": login,
        "password": password, "security": "tls", "enabled": False})
    assert api.ok("POST", f"/v1/inboxes/{target['id']}/imap/test")["ok"] is True
    status, answer = api.call("POST", f"/v1/inboxes/{create_inbox(api)['id']}/imap/test")
    assert status == 422
    assert {"host", "username", "password"} <= {f["field"] for f in answer["error"]["fields"]}
