"""The ``messagehub`` commands that mirror the API, run as an operator runs them.

Each test runs the installed command in a subprocess against the stack's
API (MESSAGEHUB_API_URL and MESSAGEHUB_API_TOKEN), and checks its output
and exit code: 0 done, 1 a connection test failed, 2 the API refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import (
    Api,
    create_agent,
    create_inbox,
    forward_mail,
    unique,
    wait_for_conversation,
)

pytestmark = pytest.mark.stack


def messagehub(stack: dict[str, Any], *args: str, stdin: str = "",
               token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESSAGEHUB_STATE_DIR": stack["state_dir"],
           "MESSAGEHUB_PORT_BASE": str(stack["port_base"]), "MESSAGEHUB_API_URL": stack["api"],
           "MESSAGEHUB_API_TOKEN": token or stack["api_token"]}
    command = str(Path(sys.executable).parent / "messagehub")
    return subprocess.run([command, *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_inbox_tabs(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    agent = create_agent(api)

    done = messagehub(stack, "inbox", "settings", inbox["name"], "--greeting", "on",
                      "--greeting-text", "Hi {customer_name}", "--sender-name-style",
                      "professional", "--business-name", "Acme")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sender_name_style"] == "professional"

    done = messagehub(stack, "inbox", "collaborators", inbox["name"], "--add", agent["email"],
                      "--limit", "4")
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert [a["email"] for a in settings["agents"]] == [agent["email"]]
    assert settings["auto_assign_limit"] == 4

    shown = json.loads(messagehub(stack, "inbox", "show", inbox["id"]).stdout)
    assert shown["settings"]["greeting_text"] == "Hi {customer_name}"
    assert inbox["name"] in messagehub(stack, "inbox", "list").stdout


def test_cli_refusals_show_fields(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    done = messagehub(stack, "inbox", "smtp", inbox["name"], "--host", "smtp.example.com",
                      "--port", "587", "--login", "a@acme.example", "--password-stdin",
                      stdin="smtp-password\n")
    assert done.returncode == 2
    assert "set up IMAP first" in done.stderr
    assert "smtp-password" not in done.stderr + done.stdout

    done = messagehub(stack, "inbox", "settings", inbox["name"], "--help-center-url", "ftp://x")
    assert done.returncode == 2
    assert "help_center_url: must be an http:// or https:// URL" in done.stderr

    done = messagehub(stack, "inbox", "list", token="mh_not-a-token")
    assert done.returncode == 2
    assert "invalid API token" in done.stderr


def test_cli_imap_off_refused_while_smtp_on(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    base = f"/v1/inboxes/{inbox['id']}"
    api.ok("PATCH", f"{base}/imap", {"host": "127.0.0.1", "port": 2993, "username": "u",
                                     "password": "imap-pw"})
    api.ok("PATCH", f"{base}/smtp", {"host": "127.0.0.1", "port": 2587, "username": "u",
                                     "password": "smtp-pw", "encryption": "starttls"})

    done = messagehub(stack, "inbox", "imap", "--inbox", inbox["name"], "--disable")
    assert done.returncode == 2
    assert "cannot be turned off while the inbox sends through its own SMTP" in done.stderr
    assert api.ok("GET", f"{base}/imap")["enabled"] is True

    assert messagehub(stack, "inbox", "smtp", inbox["name"], "--enabled", "off").returncode == 0
    assert messagehub(stack, "inbox", "imap", "--inbox", inbox["name"],
                      "--disable").returncode == 0
    assert api.ok("GET", f"{base}/imap")["enabled"] is False


def test_cli_connection_tests(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    imap_port = stack["imap"].rsplit(":", 1)[1]
    done = messagehub(stack, "test-imap", inbox["name"], "--host", "127.0.0.1", "--port",
                      imap_port, "--login", "nobody", "--security", "tls", "--password-stdin",
                      stdin="whatever\n")
    assert done.returncode == 1
    assert done.stdout.startswith("failed: tls_mismatch")
    assert f"what to do: Port {imap_port} expects STARTTLS" in done.stdout

    done = messagehub(stack, "test-smtp", inbox["name"], "--host", "127.0.0.1", "--port",
                      "587", "--encryption", "tls")
    assert done.returncode == 1
    assert "Port 587 expects STARTTLS" in done.stdout


def test_cli_conversations_and_tokens(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    agent = create_agent(api, inbox)
    subject = unique("cli")
    forward_mail(stack, inbox, sender="erin@customer.example", subject=subject)
    conversation = wait_for_conversation(api, inbox, subject)

    listed = messagehub(stack, "conversation", "list", "--inbox", inbox["name"])
    assert listed.returncode == 0, listed.stderr
    assert conversation["id"] in listed.stdout
    assert subject in listed.stdout

    done = messagehub(stack, "conversation", "reply", conversation["id"], "--agent",
                      agent["email"], stdin="We are on it.\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "queued"

    created = messagehub(stack, "token", "create", "--name", "cli", "--scope", "agent",
                         "--agent", agent["email"])
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("mh_")
    assert messagehub(stack, "inbox", "list", token=token).returncode == 0
    assert messagehub(stack, "token", "create", "--name", "x", "--scope", "admin",
                      token=token).returncode == 2

    token_id = next(item["id"] for item in json.loads(
        messagehub(stack, "token", "list").stdout)["tokens"] if item["agent"] == agent["email"])
    assert messagehub(stack, "token", "revoke", token_id).returncode == 0
    assert messagehub(stack, "inbox", "list", token=token).returncode == 2


def test_cli_dead_letters_and_rotation(stack: dict[str, Any]) -> None:
    listed = messagehub(stack, "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "dead_letters" in json.loads(listed.stdout)
    assert messagehub(stack, "dead-letters", "retry", "no-such-id").returncode == 2

    rotated = messagehub(stack, "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["failed"] == []
