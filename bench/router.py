"""Benchmark of the router stage: mails per second, against the parse-only ceiling.

Runs against a local stack started with ``messagehub up``, found through
MESSAGEHUB_STATE_DIR and MESSAGEHUB_PORT_BASE. It uses only the stack's
PostgreSQL, in a scratch database of its own. It reads every ``.eml`` file
of the corpus folders (default: every corpus of the shared test material
beside the repository), then measures in the same run:

1. parse-only ceiling: ``parse_mail`` over every mail, in one process;
   the router can never be faster than this;
2. router: the production batch loop over MailReceived records for the
   same mails, each round into a fresh inbox so that every mail is new.
   That is ``BatchProcessor`` with Avro decoding, the idempotence check and
   ``RouterStage`` (threading, rows, attachments, outbox events), one
   transaction per batch of up to 200 records. The raw mails are stored
   before the clock starts, as ingest would have done. Publishing the
   outbox to Kafka is not part of the figure.

The two alternate, one pass over the corpus each per round, so both see
the same load on a shared machine. It prints both rates and the router's share of the ceiling. One router
process handles one partition at a time, so the router figure is also what
one very busy inbox can get.

Usage: .venv/bin/python bench/router.py [--rounds 3] [--json] [FOLDER ...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from messagehub import codec, db, inboxes, stackctl, topics  # noqa: E402
from messagehub.settings import Settings  # noqa: E402
from messagehub.worker import BATCH_MAX, BatchProcessor, Coordinates  # noqa: E402
from services.router import replay  # noqa: E402
from services.router.mime import parse_mail  # noqa: E402
from services.router.stage import RouterStage  # noqa: E402

DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpus"


class _CountingSensor:
    def __init__(self) -> None:
        self.results: dict[str, int] = {}
        self.dead_letters = 0

    def on_record(self, result: str, seconds: float) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    def on_dead_letter(self, error_class: str) -> None:
        self.dead_letters += 1


class _HeldRelay:
    async def publish_pending(self) -> int:
        return 0


def load_mails(folders: list[Path]) -> list[bytes]:
    """Return every .eml under the folders with CRLF line ends, as ingest stores them."""
    paths = sorted(p for folder in folders for p in folder.rglob("*.eml") if p.is_file())
    return [re.sub(rb"\r?\n", b"\r\n", path.read_bytes()) for path in paths]


def parse_seconds(mails: list[bytes]) -> float:
    """Return the seconds parse_mail takes for one pass over the mails."""
    started = time.perf_counter()
    for raw in mails:
        parse_mail(raw)
    return time.perf_counter() - started


def prepare(database_url: str, mails: list[bytes], rounds: int) -> list[list[list[Coordinates]]]:
    """Store the raw mails and one inbox per round; return each round's record batches."""
    with db.connect(database_url, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO raw_mails (sha256, size, content) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(hashlib.sha256(raw).hexdigest(), len(raw), raw) for raw in mails])
        inbox_ids = [inboxes.create_inbox(conn, name=f"bench-{uuid.uuid4().hex[:8]}",
                                          email="support@bench.example",
                                          inbound_domain="inbound.bench.example")["id"]
                     for _ in range(rounds)]

    rounds_of_batches = []
    for inbox_id in inbox_ids:
        records = [_record(inbox_id, raw) for raw in mails]
        rounds_of_batches.append([records[start:start + BATCH_MAX]
                                  for start in range(0, len(records), BATCH_MAX)])
    return rounds_of_batches


def _record(inbox_id: str, raw: bytes) -> Coordinates:
    sha256 = hashlib.sha256(raw).hexdigest()
    value = codec.encode("MailReceived", {
        "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(timezone.utc),
        "inbox_id": inbox_id, "schema_version": 1, "raw_sha256": sha256, "raw_size": len(raw),
        "source": "smtp", "envelope_sender": None, "envelope_recipients": [],
        "message_id": None, "subject": None, "from_address": None, "imap_folder": None,
        "imap_uidvalidity": None, "imap_uid": None, "imap_internal_date": None})
    return Coordinates(topic=topics.MAIL_RECEIVED, partition=0, offset=0,
                       key=inbox_id.encode(), value=value)


async def run_rounds(database_url: str, mails: list[bytes],
                     rounds: list[list[list[Coordinates]]]) -> tuple[float, float, dict[str, Any]]:
    """Alternate a parse pass and a router pass per round; return both totals in seconds."""
    stage = RouterStage(secret_key="b" * 40, inbound_domain="inbound.bench.example",
                        message_id_domain=Settings().message_id_domain)
    sensor = _CountingSensor()
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": False})
    await pool.open(wait=True, timeout=30)
    parsing = routing = 0.0
    try:
        processor = BatchProcessor(stage=stage, pool=pool, relay=_HeldRelay(),  # type: ignore[arg-type]
                                   dead_letter_topic=topics.ROUTER_DEAD_LETTER, sensor=sensor)
        for batches in rounds:
            parsing += parse_seconds(mails)
            started = time.perf_counter()
            for batch in batches:
                await processor.process(batch)
            routing += time.perf_counter() - started
    finally:
        await pool.close()
    return parsing, routing, {**sensor.results, "dead_letters": sensor.dead_letters}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="corpus folders (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the corpus")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    mails = load_mails(args.folders or [DEFAULT_CORPUS])
    if not mails:
        parser.error("no .eml files found in the given folders")
    stack = stackctl.stack_info()
    database_url = replay.create_local_database(stack, f"bench_router_{uuid.uuid4().hex[:8]}")
    db.apply_schema(database_url)

    rounds = prepare(database_url, mails, args.rounds)
    parsing, routing, counts = asyncio.run(run_rounds(database_url, mails, rounds))
    ceiling = len(mails) * args.rounds / parsing
    rate = len(mails) * args.rounds / routing

    figures = {
        "mails": len(mails), "rounds": args.rounds,
        "parse_only_mails_per_second": round(ceiling, 1),
        "router_mails_per_second": round(rate, 1),
        "router_share_of_ceiling": round(rate / ceiling, 3),
        "router_counts": counts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        # Other work on the machine slows both figures; the share is the steadier one.
        "load_average_1min": round(os.getloadavg()[0], 1),
        "database": database_url.rsplit("/", 1)[1],
    }
    if args.json:
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"corpus: {len(mails)} mails x {args.rounds} rounds ({figures['machine']}, "
            f"load average {figures['load_average_1min']})\n"
            f"parse-only ceiling: {ceiling:8.1f} mails/s\n"
            f"router stage:       {rate:8.1f} mails/s  ({rate / ceiling:.0%} of the ceiling)\n"
            f"router results: {counts}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
