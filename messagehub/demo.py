"""The demo: messagehub's main job, end to end, on sample or the user's mail.

``messagehub demo`` starts the stack, creates an inbox with greetings on and
two agents, imports the shipped sample mail (or ``--mail PATH``) through the
forwarding receiver, waits until the pipeline has handled every mail, and
prints the conversations and where the metrics are.
"""

from __future__ import annotations

import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from messagehub import db, inboxes, stackctl
from messagehub.importer import ForwardingClient, import_paths

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "demo"
WAIT_TIMEOUT_SECONDS = 180.0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _fresh_inbox_name(conn: Any) -> str:
    cursor = conn.execute("SELECT count(*) AS n FROM inboxes WHERE name LIKE 'Demo Support%%'")
    existing = cursor.fetchone()["n"]
    return "Demo Support" if existing == 0 else f"Demo Support {existing + 1}"


def pipeline_progress(conn: Any, inbox_id: str) -> dict[str, int]:
    """Return how far the pipeline has come with an inbox's mail."""
    cursor = conn.execute(
        "SELECT (SELECT count(*) FROM messages WHERE inbox_id = %(inbox)s "
        "        AND direction = 'incoming') AS incoming, "
        "       (SELECT count(*) FROM notices WHERE inbox_id = %(inbox)s) AS notices, "
        "       (SELECT count(*) FROM outbox) AS outbox, "
        "       (SELECT count(*) FROM send_ledger WHERE inbox_id = %(inbox)s "
        "        AND status = 'sending') AS sending, "
        "       (SELECT count(*) FROM send_ledger WHERE inbox_id = %(inbox)s "
        "        AND status = 'sent') AS sent, "
        "       (SELECT count(*) FROM messages WHERE inbox_id = %(inbox)s "
        "        AND direction = 'outgoing') AS outgoing", {"inbox": inbox_id})
    return dict(cursor.fetchone())


def wait_until_handled(database_url: str, inbox_id: str, expected_mails: int,
                       timeout_seconds: float = WAIT_TIMEOUT_SECONDS) -> dict[str, int]:
    """Wait until every imported mail is a message or notice and every send is recorded.

    Settled means: all mails arrived, nothing waits in the outbox, no send
    is in flight, every sent mail came back as an outgoing message, and the
    figures held still for a second (assign may still be deciding).
    """
    deadline = time.monotonic() + timeout_seconds
    previous: dict[str, int] | None = None
    with db.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            progress = pipeline_progress(conn, inbox_id)
            settled = (progress["incoming"] + progress["notices"] >= expected_mails
                       and progress["outbox"] == 0 and progress["sending"] == 0
                       and progress["outgoing"] == progress["sent"])
            if settled and progress == previous:
                return progress
            previous = progress
            time.sleep(1.0)
    raise TimeoutError(f"the pipeline did not settle within {timeout_seconds:.0f}s: {previous}")


def run(mail_path: Path | None = None) -> int:
    """Run the demo; return the process exit code."""
    started = time.monotonic()
    _say("Starting messagehub (Kafka, PostgreSQL, Dovecot, SMTP sink, services)…")
    components = stackctl.up()
    _say(f"  up in {time.monotonic() - started:.1f}s")
    info = stackctl.stack_info()

    with db.connect(info["database_url"], autocommit=True) as conn:
        name = _fresh_inbox_name(conn)
        inbox = inboxes.create_inbox(
            conn, name=name, email="support@northwind.example",
            inbound_domain=info["inbound_domain"], greeting_enabled=True, auto_assign_limit=10)
        inboxes.add_agent(conn, inbox=name, name="Kim", email="kim@northwind.example")
        inboxes.add_agent(conn, inbox=name, name="Lee", email="lee@northwind.example")
    _say(f"Inbox {name!r}: forwarding address {inbox['forwarding_address']}, "
         "agents Kim and Lee, greetings on")

    source = mail_path or SAMPLES
    host, port = info["ingest_smtp"].rsplit(":", 1)
    import_started = time.monotonic()
    result = import_paths([source], ForwardingClient(host, int(port), inbox["forwarding_address"]))
    _say(f"Imported {result.accepted} mails from {source} ({len(result.rejected)} rejected)")

    progress = wait_until_handled(info["database_url"], inbox["id"], len(result.distinct_keys))
    elapsed = time.monotonic() - import_started
    _say(f"Pipeline handled them within {elapsed:.1f}s: "
         f"{progress['incoming']} messages, {_count(progress['notices'], 'notice')}, "
         f"{progress['sent']} mails sent to the SMTP sink\n")

    with db.connect(info["database_url"]) as conn:
        conversations = inboxes.list_conversations(conn, inbox["id"])
    _print_table(conversations)

    _say("\nMetrics:")
    for component, detail in components.items():
        if detail.get("metrics"):
            _say(f"  {component:<10} {detail['metrics']}")
    _say(f"Sent mail (greetings) is in {info['sink_dir']}")
    _say(f"Look closer: messagehub conversations --inbox {name!r} --json; "
         "stop with: messagehub down")
    return 0


def _display_width(text: str) -> int:
    # CJK characters take two columns in a terminal.
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _fit(text: str, width: int) -> str:
    """Return ``text`` cut and padded to exactly ``width`` terminal columns."""
    if _display_width(text) > width:
        while _display_width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _display_width(text))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _print_table(conversations: list[dict[str, Any]]) -> None:
    _say(f"{_fit('subject', 50)} {'msgs':>4}  {'assignee':<12} greeting")
    for conversation in conversations:
        subject = _fit(conversation["subject"] or "(no subject)", 50)
        greeting = "sent" if conversation["greetings_sent"] else "-"
        _say(f"{subject} {conversation['messages']:>4}  "
             f"{inboxes.assignee_label(conversation):<12} {greeting}")
