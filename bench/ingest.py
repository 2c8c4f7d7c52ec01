"""Ingest benchmark: IDLE latency, forwarding latency, backfill rate, RSS at 500 IDLEs.

Run it against a running local stack (``messagehub up``; the state dir and
port base come from ``MESSAGEHUB_STATE_DIR`` and ``MESSAGEHUB_PORT_BASE``)::

    .venv/bin/python -m bench.ingest [--idle-mails 120] [--forward-mails 1000]
                                     [--backfill-mails 5000] [--idle-inboxes 500]

It prints, from one run:

- IDLE latency: from just before an APPEND to Dovecot to the moment a
  subscriber of ``mail.received`` receives the mail, through the ingest service's
  IMAP sync (over implicit TLS), p50 and p99. Dovecot alone adds about
  0.5 s (it delays IDLE notifications by 500 ms);
- forwarding latency: from the end of DATA (the final ``.``) to the 250
  reply, p50 and p99, with mails offered at 100 per second over four SMTP
  connections;
- backfill rate: mails per second of a first sync that imports a whole
  folder, from turning the sync on to the cursor reaching the last UID;
- RSS of the ingest process, before and while it holds IDLE on
  ``--idle-inboxes`` inboxes (one Dovecot user and TLS connection each).

Each part creates its own Dovecot users and inboxes, and the backfill adds
its mails to ``mail.received``, so run it on a stack kept for benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import smtplib
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from messagehub import codec, db, inboxes, secrets, stackctl, topics

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, TopicPartition


class Subscriber:
    """Reads mail.received from its current end and notes when each Message-ID arrives."""

    def __init__(self, bootstrap: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        partitions = [TopicPartition(topics.MAIL_RECEIVED, p)
                      for p in self._consumer.partitions_for_topic(topics.MAIL_RECEIVED) or ()]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            self._consumer.position(partition)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                for message in batch:
                    record = codec.decode(message.value)[1]
                    if record["message_id"]:
                        self.seen.setdefault(record["message_id"], now)

    def wait(self, message_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if message_id in self.seen:
                return self.seen[message_id]
            time.sleep(0.002)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _mail(message_id: str, number: int) -> bytes:
    return (f"From: Bench Customer <customer{number}@example.org>\r\n"
            f"To: Support <support@example.com>\r\nSubject: Benchmark mail {number}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: Mon, 11 Mar 2024 09:00:00 +0100\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + "Hello, this is a benchmark mail with a short body.\r\n" * 8).encode()


class Bench:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.local = stackctl.local_stack(Path(info["state_dir"]), int(info["port_base"]))
        secrets.configure(info["encryption_keys"])

    # --- set-up ------------------------------------------------------------

    def users(self, count: int) -> list[tuple[str, str]]:
        """Create ``count`` Dovecot users; return them once the last one can log in."""
        created = [(f"bench-{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}")
                   for _ in range(count)]
        for login, password in created:
            self.local.add_imap_user(login, password)
        login, password = created[-1]
        for _ in range(20):
            try:
                with self.client(login, password):
                    return created
            except Exception:  # noqa: BLE001 - Dovecot has not reread its users yet
                time.sleep(1.1)
                self.local.add_imap_user(login, password)
        raise RuntimeError("Dovecot did not accept the new benchmark users")

    def client(self, login: str, password: str) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.local.imap_port, ssl=False, timeout=60)
        client.login(login, password)
        return client

    def inbox(self, name: str) -> dict[str, Any]:
        with db.connect(self.info["database_url"], autocommit=True) as conn:
            return inboxes.create_inbox(conn, name=f"{name}-{uuid.uuid4().hex[:8]}",
                                        email="support@example.com",
                                        inbound_domain=self.info["inbound_domain"])

    def enable_sync(self, rows: list[tuple[str, str, str]], *, backfill: bool = False) -> None:
        """Turn the IMAP sync on for ``(inbox id, login, password)`` rows, over IMAPS."""
        start = None if backfill else datetime.now(timezone.utc)
        with db.connect(self.info["database_url"], autocommit=True) as conn:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, "
                    "security, sync_enabled, sync_start_at) "
                    "VALUES (%s, '127.0.0.1', %s, %s, %s, 'tls', true, %s)",
                    [(inbox_id, self.local.imaps_port, login, secrets.encrypt(password), start)
                     for inbox_id, login, password in rows])

    def states(self, inbox_ids: list[str]) -> dict[str, int]:
        with db.connect(self.info["database_url"], autocommit=True) as conn:
            rows = conn.execute("SELECT state, count(*) AS n FROM imap_sync_health "
                                "WHERE inbox_id = ANY(%s) GROUP BY state",
                                (inbox_ids,)).fetchall()
        return {row["state"]: row["n"] for row in rows}

    def wait_idle(self, inbox_ids: list[str], timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.states(inbox_ids).get("idle", 0) >= len(inbox_ids):
                return time.monotonic() - started
            time.sleep(1)
        raise RuntimeError(f"only {self.states(inbox_ids)} of {len(inbox_ids)} syncs "
                           f"reached IDLE within {timeout:.0f} s")

    # --- the four measurements ----------------------------------------------

    def idle_latency(self, mails: int, pause: float) -> dict[str, Any]:
        [(login, password)] = self.users(1)
        inbox = self.inbox("bench-idle")
        self.enable_sync([(inbox["id"], login, password)])
        self.wait_idle([inbox["id"]], 90)
        subscriber = Subscriber(self.info["kafka_bootstrap"])
        latencies, missing = [], 0
        try:
            with self.client(login, password) as client:
                for number in range(mails):
                    message_id = f"idle.{uuid.uuid4().hex}@bench.example.org"
                    started = time.monotonic()
                    client.append("INBOX", _mail(message_id, number))
                    seen = subscriber.wait(message_id, 30)
                    if seen is None:
                        missing += 1
                    else:
                        latencies.append(seen - started)
                    time.sleep(pause)
        finally:
            subscriber.close()
        return {"mails": mails, "missing": missing,
                "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
                "max_s": max(latencies)}

    def forwarding_latency(self, mails: int, rate: float, connections: int = 4) -> dict[str, Any]:
        inbox = self.inbox("bench-forward")
        host, port = self.info["ingest_smtp"].rsplit(":", 1)
        started = time.monotonic()

        def sender(worker: int) -> list[float]:
            timings = []
            with smtplib.SMTP(host, int(port), timeout=60) as smtp:
                smtp.ehlo()
                for number in range(worker, mails, connections):
                    due = started + number / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    smtp.mail("customer@example.org")
                    smtp.rcpt(inbox["forwarding_address"])
                    code, _ = smtp.docmd("DATA")
                    assert code == 354, code
                    smtp.send(_mail(f"fwd.{uuid.uuid4().hex}@bench.example.org", number)
                              + b".\r\n")
                    sent = time.monotonic()
                    code, _ = smtp.getreply()
                    timings.append(time.monotonic() - sent)
                    assert code == 250, code
            return timings

        with ThreadPoolExecutor(connections) as pool:
            latencies = [t for part in pool.map(sender, range(connections)) for t in part]
        seconds = time.monotonic() - started
        return {"mails": mails, "offered_per_s": rate, "achieved_per_s": mails / seconds,
                "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99)}

    def backfill_rate(self, mails: int) -> dict[str, Any]:
        [(login, password)] = self.users(1)
        with self.client(login, password) as client:
            for start in range(0, mails, 500):
                client.multiappend("INBOX", [_mail(f"backfill.{uuid.uuid4().hex}@bench", n)
                                             for n in range(start, min(start + 500, mails))])
        inbox = self.inbox("bench-backfill")
        started = time.monotonic()
        self.enable_sync([(inbox["id"], login, password)], backfill=True)
        with db.connect(self.info["database_url"], autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT last_uid FROM imap_cursors WHERE inbox_id = %s "
                                   "AND cursor_name = 'live'", (inbox["id"],)).fetchone()
                if row and row["last_uid"] >= mails:
                    break
                if time.monotonic() - started > 1800:
                    raise RuntimeError("the backfill did not finish within 30 minutes")
                time.sleep(0.2)
        seconds = time.monotonic() - started
        return {"mails": mails, "seconds": seconds, "mails_per_s": mails / seconds}

    def idle_rss(self, count: int) -> dict[str, Any]:
        pid = stackctl.status(Path(self.info["state_dir"]),
                              int(self.info["port_base"]))["ingest"]["pid"]
        before = _rss_mb(pid)
        users = self.users(count)
        rows = [(self.inbox("bench-rss")["id"], login, password) for login, password in users]
        self.enable_sync(rows)
        seconds = self.wait_idle([inbox_id for inbox_id, _, _ in rows], 600)
        time.sleep(5)
        return {"inboxes": count, "rss_before_mb": before, "rss_idle_mb": _rss_mb(pid),
                "threads": _threads(pid), "seconds_to_all_idle": seconds,
                "idle_on_metrics": _idle_gauge(self.info)}


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def _idle_gauge(info: dict[str, Any]) -> float | None:
    port = int(info["port_base"]) + 101
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    match = re.search(r'messagehub_ingest_imap_inboxes\{state="idle"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-mails", type=int, default=120)
    parser.add_argument("--idle-pause-seconds", type=float, default=0.3)
    parser.add_argument("--forward-mails", type=int, default=1000)
    parser.add_argument("--forward-rate", type=float, default=100.0)
    parser.add_argument("--backfill-mails", type=int, default=5000)
    parser.add_argument("--idle-inboxes", type=int, default=500)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    bench = Bench(stackctl.stack_info())
    figures: dict[str, Any] = {}
    figures["idle_latency"] = bench.idle_latency(args.idle_mails, args.idle_pause_seconds)
    _report("IDLE latency, APPEND to mail.received", figures["idle_latency"])
    figures["forwarding"] = bench.forwarding_latency(args.forward_mails, args.forward_rate)
    _report("forwarding latency, end of DATA to 250", figures["forwarding"])
    figures["backfill"] = bench.backfill_rate(args.backfill_mails)
    _report("backfill", figures["backfill"])
    figures["idle_rss"] = bench.idle_rss(args.idle_inboxes)
    _report("ingest RSS holding IDLE", figures["idle_rss"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


def _report(title: str, values: dict[str, Any]) -> None:
    parts = [f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
             for key, value in values.items()]
    sys.stdout.write(f"{title}: {', '.join(parts)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
