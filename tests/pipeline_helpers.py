"""Helpers of the end-to-end tests: inboxes, imports and waits on the real stack."""

from __future__ import annotations

import email
import email.policy
import json
import re
import uuid
from pathlib import Path
from typing import Any

from messagehub import db, inboxes
from messagehub.demo import wait_until_handled
from messagehub.importer import ForwardingClient, import_paths
from messagehub.localstack.smtp_sink import read_sink


def create_inbox(stack: dict[str, Any], *, email_address: str, agents: list[str],
                 greeting: bool = True, limit: int | None = None) -> dict[str, Any]:
    """Create an inbox with a unique name and the given agents."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    with db.connect(stack["database_url"], autocommit=True) as conn:
        inbox = inboxes.create_inbox(conn, name=name, email=email_address,
                                     inbound_domain=stack["inbound_domain"],
                                     greeting_enabled=greeting, auto_assign_limit=limit)
        for agent in agents:
            inboxes.add_agent(conn, inbox=name, name=agent,
                              email=f"{agent.lower()}.{name}@agents.example.com")
    return inbox


def import_and_wait(stack: dict[str, Any], inbox: dict[str, Any], paths: list[Path], *,
                    expected_total: int | None = None, concurrency: int = 4) -> dict[str, int]:
    """Import ``paths`` through the forwarding receiver and wait until handled.

    The wait ends when the inbox holds ``expected_total`` incoming messages
    and notices, by default as many as the import sent distinct mails.
    """
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    client = ForwardingClient(host, int(port), inbox["forwarding_address"])
    result = import_paths(paths, client, concurrency=concurrency)
    assert result.rejected == []
    if expected_total is None:
        expected_total = len(result.distinct_keys)
    return wait_until_handled(stack["database_url"], inbox["id"], expected_total,
                              timeout_seconds=120)


def conversations(stack: dict[str, Any], inbox: dict[str, Any]) -> list[dict[str, Any]]:
    with db.connect(stack["database_url"]) as conn:
        return inboxes.list_conversations(conn, inbox["id"])


def conversation_detail(stack: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    with db.connect(stack["database_url"]) as conn:
        return inboxes.show_conversation(conn, conversation_id)


def sink_mails_referencing(stack: dict[str, Any], message_id: str) -> list[Any]:
    """Return the mails the SMTP sink received whose References name ``message_id``."""
    found = []
    for mail in read_sink(Path(stack["sink_dir"])):
        references = str(mail.message.get("References", ""))
        if f"<{message_id}>" in references:
            found.append(mail)
    return found


def message_id_of(path: Path) -> str:
    """Return the Message-ID of a mail file, without angle brackets."""
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    match = re.search(r"<([^<>\s]+)>", str(parsed["Message-ID"]))
    assert match, f"{path.name} has no Message-ID"
    return match.group(1)


def load_threads(folder: Path) -> dict[str, str]:
    return json.loads((folder / "threads.json").read_text(encoding="utf-8"))
