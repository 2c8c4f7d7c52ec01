"""Benchmark of the assign service: created-to-assigned latency, and the wait after capacity frees.

Runs against a local stack started with ``messagehub up`` (state dir and
port base from MESSAGEHUB_STATE_DIR / MESSAGEHUB_PORT_BASE), or starts one
with ``--up`` and stops it at the end. Conversation rows are inserted
directly, and their CONVERSATION_CREATED events are produced to
``conversation.events`` as the router would, so the figures are the assign
service's alone. Then:

1. latency: ``--conversations`` new conversations at ``--rate`` per second
   into one inbox with ``--agents`` online agents and no limit. For each,
   the time from CONVERSATION_CREATED (its ``occurred_at``, set just before
   it is produced) to the decision (ASSIGNED ``occurred_at``, inside the
   assign transaction) and to publication (the ASSIGNED record's Kafka
   timestamp, after commit and the outbox relay);
2. queue wait: one agent with a limit of 1 has one open conversation while
   ``--queued`` more wait. Capacity is freed ``--queued`` times and the
   wait of the conversation at the head of the queue is measured until its
   ASSIGNED event is on the topic. Freed two ways: by ``messagehub.actions``
   (``messagehub conversation resolve``), which serves the queue in its own
   transaction, and by a writer that only records the resolution and its
   STATUS_CHANGED event, which leaves the queue to the assign service.

One inbox's events share one partition, so one assign worker handles them
in order: the latency figures are one partition's.

Usage: .venv/bin/python bench/assign.py [--up] [--conversations 1000] [--rate 100]
       [--agents 20] [--queued 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from messagehub import actions, codec, db, ids, inboxes, outbox, stackctl, topics  # noqa: E402
from messagehub.events import conversation_event  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer

WAIT_SECONDS = 120.0


class EventWatch:
    """Collects ASSIGNED events of some inboxes from the topic, in a background thread."""

    def __init__(self, bootstrap: str, inbox_ids: set[str]) -> None:
        self._inbox_ids = inbox_ids
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                       group_id=None, auto_offset_reset="latest")
        self._consumer.subscribe([topics.CONVERSATION_EVENTS])
        self.assigned: dict[str, tuple[datetime, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        # Join the topic at its end before anything is produced.
        while not self._consumer.assignment():
            self._consumer.poll(timeout_ms=200)
        for partition in self._consumer.assignment():
            self._consumer.seek_to_end(partition)
            self._consumer.position(partition)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                for record in records:
                    _name, event = codec.decode(record.value)
                    if event["inbox_id"] in self._inbox_ids and event["type"] == "ASSIGNED":
                        with self._lock:
                            self.assigned[event["conversation_id"]] = (
                                event["occurred_at"], record.timestamp / 1000)

    def wait_for(self, conversation_ids: Iterable[str]) -> None:
        wanted = set(conversation_ids)
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if wanted <= set(self.assigned):
                    return
            time.sleep(0.005)
        raise TimeoutError(f"{len(wanted - set(self.assigned))} conversations were not "
                           f"assigned within {WAIT_SECONDS:.0f}s: is the assign service running?")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


def create_inbox(database_url: str, inbound_domain: str, *, agents: int,
                 limit: int | None) -> dict[str, Any]:
    name = f"bench-assign-{uuid.uuid4().hex[:8]}"
    with db.connect(database_url, autocommit=True) as conn:
        inbox = inboxes.create_inbox(conn, name=name, email="support@bench.example",
                                     inbound_domain=inbound_domain, auto_assign_limit=limit)
        for n in range(agents):
            inboxes.add_agent(conn, inbox=name, name=f"Agent {n}",
                              email=f"agent{n}.{name}@bench.example")
    return inbox


def insert_conversations(database_url: str, inbox: dict[str, Any], count: int) -> list[str]:
    conversation_ids = [ids.new_id() for _ in range(count)]
    now = datetime.now(timezone.utc)
    with db.connect(database_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO conversations (id, inbox_id, subject, status, reply_token, created_at, "
            "last_message_at) VALUES (%s, %s, 'benchmark', 'open', %s, %s, %s)",
            [(cid, inbox["id"], uuid.uuid4().hex, now, now) for cid in conversation_ids])
    return conversation_ids


def produce_created(producer: KafkaProducer, inbox: dict[str, Any], conversation_ids: list[str],
                    rate: float) -> dict[str, datetime]:
    """Produce CONVERSATION_CREATED events at ``rate`` per second; return when each was made."""
    created: dict[str, datetime] = {}
    started = time.monotonic()
    for n, conversation_id in enumerate(conversation_ids):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = datetime.now(timezone.utc)
        event = conversation_event(
            "CONVERSATION_CREATED", fact="created", inbox_id=inbox["id"],
            conversation_id=conversation_id, occurred_at=now, status="open",
            subject="benchmark", direction="incoming", message_kind="customer",
            contact_email=f"customer{n}@bench.example", mail_received_at=now)
        producer.send(topics.CONVERSATION_EVENTS, key=inbox["id"].encode(),
                      value=codec.encode("ConversationEvent", event))
        created[conversation_id] = now
    producer.flush()
    return created


def measure_latency(info: dict[str, Any], producer: KafkaProducer, args: argparse.Namespace,
                    ) -> dict[str, Any]:
    inbox = create_inbox(info["database_url"], info["inbound_domain"], agents=args.agents,
                         limit=None)
    conversation_ids = insert_conversations(info["database_url"], inbox, args.conversations)
    watch = EventWatch(info["kafka_bootstrap"], {inbox["id"]})
    watch.start()
    try:
        started = time.monotonic()
        created = produce_created(producer, inbox, conversation_ids, args.rate)
        produced_seconds = time.monotonic() - started
        watch.wait_for(conversation_ids)
        total_seconds = time.monotonic() - started
    finally:
        watch.stop()

    decided = [(watch.assigned[c][0] - created[c]).total_seconds() for c in conversation_ids]
    published = [watch.assigned[c][1] - created[c].timestamp() for c in conversation_ids]
    return {"conversations": args.conversations, "rate_requested": args.rate,
            "rate_produced": round(args.conversations / produced_seconds, 1),
            "all_assigned_seconds": round(total_seconds, 2),
            "created_to_decision": summary_ms(decided),
            "created_to_published": summary_ms(published)}


async def resolve_without_serving(conn: Any, conversation_id: str) -> None:
    """Record a resolution and its event the way a writer that does not serve the queue would."""
    await conn.execute("UPDATE conversations SET status = 'resolved' WHERE id = %s",
                       (conversation_id,))
    cursor = await conn.execute("SELECT inbox_id FROM conversations WHERE id = %s",
                                (conversation_id,))
    row = await cursor.fetchone()
    event = conversation_event(
        "STATUS_CHANGED", fact=f"resolved/{uuid.uuid4()}", inbox_id=str(row["inbox_id"]),
        conversation_id=conversation_id, status="resolved", previous_status="open",
        reason="manual")
    await outbox.add(conn, topics.CONVERSATION_EVENTS, event["inbox_id"], "ConversationEvent",
                     event)


def measure_queue_wait(info: dict[str, Any], producer: KafkaProducer, queued: int,
                       serve_in_action: bool) -> dict[str, Any]:
    database_url = info["database_url"]
    inbox = create_inbox(database_url, info["inbound_domain"], agents=1, limit=1)
    conversation_ids = insert_conversations(database_url, inbox, queued + 1)
    watch = EventWatch(info["kafka_bootstrap"], {inbox["id"]})
    watch.start()
    try:
        # The first is assigned, the others wait in arrival order.
        produce_created(producer, inbox, conversation_ids, rate=1000)
        watch.wait_for(conversation_ids[:1])
        waits = []
        for holder, waiting in zip(conversation_ids, conversation_ids[1:]):
            wait_until_queued(database_url, waiting)
            freed_at = time.time()
            if serve_in_action:
                asyncio.run(actions.run(database_url, actions.resolve, holder))
            else:
                asyncio.run(actions.run(database_url, resolve_without_serving, holder))
            watch.wait_for([waiting])
            waits.append(watch.assigned[waiting][1] - freed_at)
    finally:
        watch.stop()
    return summary_ms(waits)


def wait_until_queued(database_url: str, conversation_id: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    with db.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM assignment_queue WHERE conversation_id = %s",
                            (conversation_id,)).fetchone():
                return
            time.sleep(0.01)
    raise TimeoutError(f"conversation {conversation_id} was not queued within {WAIT_SECONDS}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--up", action="store_true", help="start the stack first, stop it after")
    parser.add_argument("--conversations", type=int, default=1000,
                        help="new conversations for the latency run")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="new conversations per second in the latency run")
    parser.add_argument("--agents", type=int, default=20, help="online agents of the inbox")
    parser.add_argument("--queued", type=int, default=20,
                        help="queued conversations served, per way of freeing capacity")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    if args.up:
        stackctl.up()
    try:
        info = stackctl.stack_info()
        producer = KafkaProducer(bootstrap_servers=info["kafka_bootstrap"], acks="all",
                                 linger_ms=0)
        try:
            results = {
                "latency": measure_latency(info, producer, args),
                "queue_wait_action_serves": measure_queue_wait(info, producer, args.queued, True),
                "queue_wait_assign_serves": measure_queue_wait(info, producer, args.queued,
                                                               False),
            }
        finally:
            producer.close()
    finally:
        if args.up:
            stackctl.down()

    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        print_results(results)
    return 0


def print_results(results: dict[str, Any]) -> None:
    latency = results["latency"]
    lines = [
        f"latency: {latency['conversations']} conversations at {latency['rate_produced']}/s "
        f"(requested {latency['rate_requested']}/s), all assigned after "
        f"{latency['all_assigned_seconds']} s",
    ]
    for label, key in (("  created -> decision", "created_to_decision"),
                       ("  created -> ASSIGNED on the topic", "created_to_published")):
        figures = latency[key]
        lines.append(f"{label}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                     f"max {figures['max_ms']} ms")
    for label, key in (("queue wait, freed by messagehub.actions", "queue_wait_action_serves"),
                       ("queue wait, freed by an event the assign service serves",
                        "queue_wait_assign_serves")):
        figures = results[key]
        lines.append(f"{label}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                     f"max {figures['max_ms']} ms ({figures['count']} waits)")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
