"""Benchmark of the outbound service: agent reply to SMTP acceptance, and sends per second.

Runs against a local stack started with ``messagehub up`` (state dir and
port base from MESSAGEHUB_STATE_DIR / MESSAGEHUB_PORT_BASE), or starts one
with ``--up`` and stops it at the end. It creates an inbox whose SMTP server
is the stack's sink (plaintext on loopback, no AUTH, no Sent copy, a rate
limit high enough not to interfere), imports one customer mail, then:

1. latency: publishes ``--requests`` agent replies to ``outbound.requests``
   at ``--rate`` per second and reports, per request, the time from the
   request's ``occurred_at`` (set just before it is produced) to the send
   ledger's ``finished_at`` (written right after the server's 250);
2. throughput: publishes ``--burst`` replies at once and reports sends per
   second of the stack's one outbound worker, from the first ledger row
   created to the last one finished.

Usage: .venv/bin/python bench/outbound.py [--up] [--requests 200] [--rate 20] [--burst 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from messagehub import codec, db, inboxes, stackctl, topics  # noqa: E402
from messagehub.demo import wait_until_handled  # noqa: E402
from messagehub.importer import ForwardingClient, import_paths  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer

CUSTOMER_MAIL = """\
From: Alice Example <alice@example.org>
To: support@bench.example
Subject: Benchmark order 5531
Message-ID: <{message_id}>
Date: Tue, 05 Mar 2024 10:12:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

My parcel arrived damaged.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--up", action="store_true", help="start the stack first, stop it after")
    parser.add_argument("--requests", type=int, default=200, help="paced requests (latency)")
    parser.add_argument("--rate", type=float, default=20.0, help="paced requests per second")
    parser.add_argument("--burst", type=int, default=1000, help="requests sent at once (throughput)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    if args.up:
        stackctl.up()
    try:
        results = run(stackctl.stack_info(), args)
    finally:
        if args.up:
            stackctl.down()

    print(f"agent reply -> SMTP accepted, {args.requests} requests at {args.rate:g}/s: "
          f"p50 {results['latency_p50_ms']:.0f} ms, p99 {results['latency_p99_ms']:.0f} ms, "
          f"max {results['latency_max_ms']:.0f} ms")
    print(f"throughput, burst of {args.burst}: {results['sends_per_second']:.1f} sends/s "
          f"per outbound worker ({results['burst_seconds']:.1f} s)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def run(info: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    inbox, conversation_id = prepare(info)
    producer = KafkaProducer(bootstrap_servers=info["kafka_bootstrap"], acks="all", linger_ms=0)
    try:
        paced = publish(producer, inbox, conversation_id, args.requests, rate=args.rate)
        latencies = [row["latency"] for row in wait_finished(info, paced)]
        burst = publish(producer, inbox, conversation_id, args.burst, rate=None)
        finished = wait_finished(info, burst)
    finally:
        producer.close()

    latencies.sort()
    started = min(row["created_at"] for row in finished)
    ended = max(row["finished_at"] for row in finished)
    seconds = (ended - started).total_seconds()
    return {
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "latency_max_ms": latencies[-1] * 1000,
        "sends_per_second": len(finished) / seconds,
        "burst_seconds": seconds,
    }


def prepare(info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create the bench inbox with the sink as its SMTP server; return it and a conversation."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    sink_port = int(info["port_base"]) + 25
    with db.connect(info["database_url"], autocommit=True) as conn:
        inbox = inboxes.create_inbox(conn, name=name, email="support@bench.example",
                                     inbound_domain=info["inbound_domain"])
        conn.execute("INSERT INTO inbox_smtp (inbox_id, host, port, encryption, "
                     "max_sends_per_minute, save_to_sent) VALUES (%s, '127.0.0.1', %s, 'none', "
                     "1000000, false)", (inbox["id"], sink_port))

    message_id = f"bench.{uuid.uuid4().hex}@mail.example.org"
    mail = Path(f"/tmp/{name}.eml")
    mail.write_text(CUSTOMER_MAIL.format(message_id=message_id), encoding="utf-8")
    host, port = info["ingest_smtp"].rsplit(":", 1)
    import_paths([mail], ForwardingClient(host, int(port), inbox["forwarding_address"]))
    wait_until_handled(info["database_url"], inbox["id"], 1, timeout_seconds=120)
    mail.unlink()

    with db.connect(info["database_url"]) as conn:
        row = conn.execute("SELECT conversation_id FROM messages WHERE inbox_id = %s",
                           (inbox["id"],)).fetchone()
    assert row is not None
    return inbox, str(row["conversation_id"])


def publish(producer: KafkaProducer, inbox: dict[str, Any], conversation_id: str, count: int, *,
            rate: float | None) -> dict[str, datetime]:
    """Produce ``count`` agent replies; return each request id with its occurred_at."""
    sent: dict[str, datetime] = {}
    started = time.monotonic()
    for index in range(count):
        if rate is not None:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        request_id = str(uuid.uuid4())
        occurred_at = datetime.now(timezone.utc)
        value = codec.encode("OutboundRequest", {
            "event_id": request_id, "occurred_at": occurred_at, "inbox_id": inbox["id"],
            "conversation_id": conversation_id, "request_id": request_id, "kind": "agent",
            "agent_id": None, "text": f"Benchmark reply {index}.", "html": None})
        producer.send(topics.OUTBOUND_REQUESTS, key=inbox["id"].encode(), value=value)
        sent[request_id] = occurred_at
    producer.flush()
    return sent


def wait_finished(info: dict[str, Any], requests: dict[str, datetime],
                  timeout_seconds: float = 600.0) -> list[dict[str, Any]]:
    """Wait until every request's ledger row is sent; return the rows with their latency."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        with db.connect(info["database_url"]) as conn:
            rows = conn.execute(
                "SELECT request_id, status, created_at, finished_at FROM send_ledger "
                "WHERE request_id = ANY(%s) AND status <> 'sending'", (list(requests),)).fetchall()
        if len(rows) == len(requests):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(rows)} of {len(requests)} requests finished in "
                             f"{timeout_seconds:.0f}s")
        time.sleep(0.5)

    failed = [row for row in rows if row["status"] != "sent"]
    if failed:
        raise SystemExit(f"{len(failed)} requests did not send, e.g. {failed[0]}")
    return [{**row, "latency": (row["finished_at"] - requests[row["request_id"]]).total_seconds()}
            for row in rows]


if __name__ == "__main__":
    raise SystemExit(main())
