"""The API's pure parts: body validation, the OpenAPI document, hints and error classes."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from openapi_spec_validator import validate as validate_openapi

from messagehub import imap_client, smtp_client
from services.api import connection_tests, openapi, routes, schemas
from services.api.auth import bearer_token, new_token, token_digest
from services.api.errors import ApiError
from services.api.validation import validate

REPO_ROOT = Path(__file__).resolve().parents[2]


def fields_of(schema: str, body: object) -> dict[str, str]:
    with pytest.raises(ApiError) as caught:
        validate(schema, body)
    return {error.field: error.message for error in caught.value.fields}


def test_validation__every_invalid_field_listed() -> None:
    errors = fields_of("SmtpSettings", {"host": "smtp example", "port": 0, "encryption": "ssl",
                                        "save_to_sent": "yes", "colour": 1})
    assert errors == {
        "host": "must be a host name such as imap.example.com, without spaces, scheme or port",
        "port": "must be at least 1",
        "encryption": "must be one of: auto, tls, starttls, none",
        "save_to_sent": "must be true or false",
        "colour": "is not a field of this request",
    }


def test_validation__nested_paths_and_required() -> None:
    errors = fields_of("BusinessHours", {"hours": {"mon": [["9am", "17:00"]]},
                                         "holidays": ["2026-02-30"]})
    assert errors == {"hours.mon.0.0": "must be a time HH:MM, e.g. 09:00 (24:00 closes a day)",
                      "holidays.0": "must be a date YYYY-MM-DD"}
    assert fields_of("Reply", {}) == {"text": "is required"}


def test_validation__never_repeats_a_password() -> None:
    password = "Hunter2-never-echo-" + "x" * 1000
    errors = fields_of("ImapSettings", {"password": password, "port": "993"})
    assert password[:20] not in str(errors)
    assert errors["password"] == "must be at most 1000 characters"


def test_validation__rejects_non_objects() -> None:
    with pytest.raises(ApiError) as caught:
        validate("InboxCreate", ["name"])
    assert caught.value.status == 400


def test_openapi__valid_and_checked_in() -> None:
    document = openapi.document()
    validate_openapi(document)
    checked_in = yaml.safe_load((REPO_ROOT / "docs" / "openapi.yaml").read_text("utf-8"))
    assert checked_in == document, "run: python -m services.api.openapi > docs/openapi.yaml"


def test_openapi__every_route_states_scopes() -> None:
    for route in routes.ROUTES:
        operation = openapi.document()["paths"][route.path][route.method.lower()]
        assert operation["x-scopes"] == list(route.scopes)
        assert route.scopes, f"{route.method} {route.path} admits no scope"
        if route.request:
            assert route.request in schemas.COMPONENTS


def test_tokens__random_and_stored_hashed() -> None:
    first, second = new_token(), new_token()
    assert first != second
    assert first.startswith("mh_")
    assert len(first) == 46
    assert token_digest(first) != first
    assert len(token_digest(first)) == 64
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None


@pytest.mark.parametrize(("reason", "security", "port", "expected"), [
    ("tls_mismatch", "tls", 143, "Port 143 expects STARTTLS"),
    ("tls_mismatch", "starttls", 993, "Port 993 expects SSL/TLS"),
    ("refused", "tls", 994, "Nothing answers on port 994"),
    ("app_password", "tls", 993, "app password"),
    ("mechanism", "none", 143, "only over an encrypted connection"),
    ("mechanism", "tls", 993, "does not allow password logins"),
    ("dns", "tls", 993, "imap.example.com"),
])
def test_imap_hint__names_the_fix(reason: str, security: str, port: int, expected: str) -> None:
    message = "accepts logins only after STARTTLS" if security == "none" else ""
    assert expected in connection_tests.imap_hint(reason, security, port, message)


@pytest.mark.parametrize(("reason", "encryption", "port", "message", "expected"), [
    ("tls_mismatch", "tls", 587, "", "Port 587 expects STARTTLS"),
    ("tls_mismatch", "auto", 465, "", "Port 465 expects STARTTLS"),
    ("tls_mismatch", "starttls", 2465, "no SMTP greeting", "expects SSL/TLS from the start"),
    ("tls_mismatch", "starttls", 25, "does not offer STARTTLS", "does not offer STARTTLS"),
    ("mechanism", "auto", 25, "offers no AUTH to this connection", "submission port"),
    ("authentication", "auto", 587, "", "login or the password is wrong"),
])
def test_smtp_hint__names_the_fix(reason: str, encryption: str, port: int, message: str,
                                  expected: str) -> None:
    assert expected in connection_tests.smtp_hint(reason, encryption, port, message)


def test_imap_classify__network_causes() -> None:
    login = imap_client.ImapLogin("imap.example.com", 993, "u", "secret-pw")
    classify = imap_client._classify
    assert classify(ConnectionRefusedError(), login, "connect").reason == "refused"
    assert classify(TimeoutError(), login, "connect").reason == "timeout"
    assert classify(OSError(113, "No route to host"), login, "connect").reason == "unreachable"
    verify_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify_error.verify_message = "self-signed certificate"
    assert classify(verify_error, login, "TLS handshake").reason == "certificate"
    leaked = classify(RuntimeError("echo: LOGIN u secret-pw"), login, "LOGIN")
    assert "secret-pw" not in str(leaked)


def test_imap_check__unresolvable_host_is_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    # No lookup leaves the machine: the resolver itself is replaced.
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(imap_client.ImapCheckError) as caught:
        imap_client.check_login(imap_client.ImapLogin("imap.exmaple.com", 993, "u", "p"))
    assert (caught.value.reason, caught.value.step) == ("dns", "resolve")


def test_smtp_classify__connect_causes() -> None:
    server = smtp_client.SmtpServer(host="smtp.example.com", port=587)
    for cause, reason in ((socket.gaierror(-2, "Name or service not known"), "dns"),
                          (ConnectionRefusedError(111, "refused"), "refused"),
                          (OSError(113, "No route to host"), "unreachable")):
        wrapper = OSError("connect failed")
        wrapper.__cause__ = cause
        error = smtp_client.classify(wrapper, server, "connect", greeting_timeout=1.0)
        assert (error.error_class, error.reason) == ("connect", reason)


def test_smtp_check_settings__reasons() -> None:
    with pytest.raises(smtp_client.SmtpError) as caught:
        smtp_client.check_settings(host="smtp.example.com", port=587, username="u",
                                   encryption="tls", auth_method="auto")
    assert (caught.value.error_class, caught.value.reason) == ("tls", "tls_mismatch")
    with pytest.raises(smtp_client.SmtpError) as caught:
        smtp_client.check_settings(host="smtp.example.com", port=2525, username="u",
                                   encryption="none", auth_method="auto")
    assert caught.value.reason == "config"
