"""IMAP and SMTP passwords stay out of metrics, every log and every encoding of them.

``tests/api/test_password_secrecy`` drives traffic with distinctive
passwords (IMAP sync, an agent reply over the inbox's own SMTP with AUTH,
connection tests, a wrong password, a key rotation) and searches the
services' logs, the topics, the database and the API's answers for the
plain text. This test runs the same traffic and then searches where that
one does not: the ``/metrics`` and probe output of all five services, every
log file of the stack (Kafka, PostgreSQL, Dovecot and the SMTP sink
included, rotated logs too) and the mail the sink received, for the
password in plain text and in the encodings it travels in: base64 (as in
SMTP AUTH PLAIN and LOGIN) and percent-encoding.
"""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from messagehub import stackctl
from tests.api.helpers import Api
from tests.api.test_password_secrecy import IMAP_PASSWORD, SMTP_PASSWORD, WRONG_PASSWORD, run_traffic

pytestmark = pytest.mark.stack

SECRETS = (IMAP_PASSWORD, SMTP_PASSWORD, WRONG_PASSWORD)


def needles(secret: str) -> dict[str, bytes]:
    """Return the byte strings that betray ``secret``, by the encoding they are in.

    Base64 of a secret inside a longer string (AUTH PLAIN encodes
    "\\0login\\0password") depends on the secret's offset modulo 3, so
    the stable middle of each of the three alignments is searched.
    """
    raw = secret.encode()
    found = {"plain": raw, "percent-encoded": urllib.parse.quote(secret).encode()}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        # Drop the characters that mix in the padding bytes and the trailing partial group.
        start = (offset * 4 + 2) // 3
        found[f"base64+{offset}"] = encoded[start + 1:len(encoded) - 4]
    return found


def leaks(data: bytes) -> list[str]:
    return [f"{secret[-4:]}:{kind}" for secret in SECRETS
            for kind, needle in needles(secret).items() if needle in data]


@pytest.fixture(scope="module")
def after_traffic(stack: dict[str, Any]) -> dict[str, Any]:
    run_traffic(stack, Api(stack["api"], stack["api_token"]))
    return stack


def test_needles__base64_found_inside_auth_plain() -> None:
    blob = base64.b64encode(b"\0secrecy-1234\0" + SMTP_PASSWORD.encode())

    assert any(kind.startswith("base64") for kind in
               [k for k, needle in needles(SMTP_PASSWORD).items() if needle in blob])


def test_secrets__not_in_metrics_or_probes(after_traffic: dict[str, Any]) -> None:
    base = int(after_traffic["port_base"])
    for spec in stackctl.SERVICES:
        for path in ("/metrics", "/healthz", "/readyz"):
            url = f"http://127.0.0.1:{base + spec.metrics_offset}{path}"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                body = error.read()
            assert leaks(body) == [], f"{spec.name} {path}"


def test_secrets__not_in_any_log(after_traffic: dict[str, Any]) -> None:
    state_dir = Path(after_traffic["state_dir"])
    logs = [path for path in state_dir.rglob("*") if path.is_file()
            and (path.suffix == ".log" or ".log." in path.name)]

    assert len(logs) >= 8
    for path in logs:
        assert leaks(path.read_bytes()) == [], str(path.relative_to(state_dir))


def test_secrets__not_in_sent_mail(after_traffic: dict[str, Any]) -> None:
    mails = sorted(Path(after_traffic["sink_dir"]).glob("*.eml"))

    for path in mails:
        assert leaks(path.read_bytes()) == [], path.name
