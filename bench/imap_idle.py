"""IMAP latency: a mail appended to a synced mailbox, to its ``mail.received``.

:func:`measure_idle_latency` creates a Dovecot user on the stack, an inbox
whose IMAP sync points at that mailbox (set with ``messagehub inbox imap``,
over implicit TLS, from now on), waits until ingest's sync of INBOX is in
IDLE. Then it appends mails one at a time with a pause between them. Each
latency runs from just before the APPEND command to the moment the
benchmark's subscriber gets the mail's ``mail.received`` record, so it
covers Dovecot's IDLE notification, ingest's fetch, the raw store and
Kafka's acknowledgement. A second IDLE connection of the benchmark's own
measures Dovecot's notification alone, for comparison.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from bench.observer import EventObserver
from messagehub import db, inboxes, stackctl

log = logging.getLogger(__name__)

SYNC_READY_TIMEOUT_SECONDS = 90.0
RECEIVED_TIMEOUT_SECONDS = 30.0
NOTIFY_TIMEOUT_SECONDS = 5.0


class ImapBenchError(RuntimeError):
    """The IMAP sync of the benchmark's mailbox could not be set up."""


@dataclass(frozen=True)
class IdleResult:
    latencies_ms: list[float]
    missing: int  # appended mails whose mail.received never came
    # APPEND to Dovecot's EXISTS on a plain IDLE connection, the server's share
    server_notify_ms: list[float]


def measure_idle_latency(info: dict[str, Any], observer: EventObserver, *, mails: int = 40,
                         pause_seconds: float = 0.5) -> IdleResult:
    """Append ``mails`` mails to a synced mailbox; return each one's latency."""
    state_dir, port_base = Path(info["state_dir"]), int(info["port_base"])
    login, password = f"bench-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    stackctl.local_stack(state_dir, port_base).add_imap_user(login, password)

    inbox = _create_inbox(info, login)
    _imap_command(info, inbox["name"], "--host", "127.0.0.1", "--port",
                  info["imaps"].rsplit(":", 1)[1], "--login", login, "--security", "ssl",
                  "--password-stdin", password=password)
    try:
        _wait_until_idle(info["database_url"], inbox["id"])
        appended, notified_ms = _append_mails(info, login, password, mails, pause_seconds)
        received = _wait_received(observer, appended)
    finally:
        _imap_command(info, inbox["name"], "--disable")

    latencies = [1000 * (received[mid] - at) for mid, at in appended.items() if mid in received]
    return IdleResult(latencies_ms=latencies, missing=len(appended) - len(latencies),
                      server_notify_ms=notified_ms)


def _create_inbox(info: dict[str, Any], login: str) -> dict[str, Any]:
    with db.connect(info["database_url"], autocommit=True) as conn:
        return inboxes.create_inbox(conn, name=f"bench-imap-{login}",
                                    email=f"{login}@shop.example.com",
                                    inbound_domain=info["inbound_domain"],
                                    greeting_enabled=False)


def _imap_command(info: dict[str, Any], inbox_name: str, *options: str,
                  password: str = "") -> None:
    """Run ``messagehub inbox imap`` for the inbox, as an operator would."""
    env = {**os.environ, "MESSAGEHUB_STATE_DIR": info["state_dir"],
           "MESSAGEHUB_PORT_BASE": str(info["port_base"])}
    command = [sys.executable, "-c", "import sys; from messagehub.cli import main; "
               "main(sys.argv[1:])", "inbox", "imap", "--inbox", inbox_name, *options]
    result = subprocess.run(command, input=password + "\n", capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    if result.returncode != 0:
        raise ImapBenchError(f"`messagehub inbox imap` for inbox {inbox_name!r} failed with "
                             f"exit code {result.returncode}: {result.stderr.strip()}")


def _append_mails(info: dict[str, Any], login: str, password: str, mails: int,
                  pause_seconds: float) -> tuple[dict[str, float], list[float]]:
    """Append the mails one by one; return when each APPEND started, by Message-ID.

    A second connection waits in IDLE beside ingest's. The time until
    Dovecot notifies it of each new mail is returned too, because that part
    of the latency is the server's, whatever the client does.
    """
    appended: dict[str, float] = {}
    notified_ms: list[float] = []
    host, port = info["imap"].rsplit(":", 1)
    with IMAPClient(host, port=int(port), ssl=False, timeout=30) as client, \
            IMAPClient(host, port=int(port), ssl=False, timeout=30) as watcher:
        client.login(login, password)
        watcher.login(login, password)
        watcher.select_folder("INBOX", readonly=True)
        watcher.idle()
        for number in range(mails):
            message_id = f"{login}.{number}@bench.example.org"
            raw = _mail(message_id, number)
            appended[message_id] = time.time()
            client.append("INBOX", raw)
            if _wait_exists(watcher, NOTIFY_TIMEOUT_SECONDS):
                notified_ms.append(1000 * (time.time() - appended[message_id]))
            time.sleep(pause_seconds)
        watcher.idle_done()
    return appended, notified_ms


def _wait_exists(watcher: IMAPClient, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while (remaining := deadline - time.monotonic()) > 0:
        responses = watcher.idle_check(timeout=remaining)
        if any(len(response) > 1 and response[1] == b"EXISTS" for response in responses):
            return True
    return False


def _wait_received(observer: EventObserver, appended: dict[str, float]) -> dict[str, float]:
    deadline = time.monotonic() + RECEIVED_TIMEOUT_SECONDS
    received = observer.snapshot().received
    while any(mid not in received for mid in appended) and time.monotonic() < deadline:
        time.sleep(0.25)
        received = observer.snapshot().received
    return received


def _wait_until_idle(database_url: str, inbox_id: str) -> None:
    deadline = time.monotonic() + SYNC_READY_TIMEOUT_SECONDS
    state = None
    while time.monotonic() < deadline:
        with db.connect(database_url) as conn:
            row = conn.execute("SELECT state, last_error FROM imap_sync_health "
                               "WHERE inbox_id = %s AND folder = 'INBOX'", (inbox_id,)).fetchone()
        state = row["state"] if row else None
        if state == "idle":
            # The state is written just before the IDLE command goes out.
            time.sleep(1.0)
            return
        time.sleep(0.25)
    raise ImapBenchError(f"ingest's IMAP sync of inbox {inbox_id} did not reach IDLE within "
                         f"{SYNC_READY_TIMEOUT_SECONDS:.0f} s (last state {state!r}): see the "
                         "ingest service's log")


def _mail(message_id: str, number: int) -> bytes:
    return (f"From: IMAP Customer <imap.customer@example.org>\r\n"
            f"To: Support <support@shop.example.com>\r\n"
            f"Subject: Question number {number} by IMAP\r\n"
            f"Message-ID: <{message_id}>\r\n"
            f"Date: Mon, 11 Mar 2024 09:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hello, this is question {number}.\r\n").encode()
