"""Damaged and hostile mail through the forwarding receiver and the router on the stack.

Each mail of a small fuzz set (two mutations of corpus mail per kind, random
bytes, and the monsters at the size the receiver accepts) is sent over SMTP
to one inbox; what SMTP refuses with a clear 5xx (lines over 1,000 bytes)
goes through the HTTP upload instead. Each gets a Message-ID of its own in front, so its fate can
be looked up: it must end as a message, as a notice, or on the router's
dead-letter topic with a reason. Afterwards an ordinary mail to the same
inbox must still get through (the partition is not stuck), the receiver and
the router must still be the same processes, and the router's peak memory
is recorded.
"""

from __future__ import annotations

import json
import random
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from messagehub import codec, db, stackctl, topics
from messagehub.chaos.verify import read_topic_records
from tests.fuzz import mutations
from tests.pipeline_helpers import create_inbox

pytestmark = pytest.mark.stack

MIB = 1024 * 1024
WAIT_SECONDS = 600.0
# Under the receiver's 50 MiB limit, so it is accepted and reaches the router.
BIG_BODY_BYTES = 45 * 1000 * 1000


def fuzz_set(corpus_dir: Path) -> list[tuple[str, bytes]]:
    """Return (label, raw) pairs: mutated corpus mail, random bytes and the monsters."""
    rng = random.Random(1)
    corpus = sorted(corpus_dir.rglob("*.eml"))
    mails: list[tuple[str, bytes]] = []
    for name, mutation in sorted(mutations.MUTATIONS.items()):
        for path in rng.sample(corpus, 2):
            mails.append((f"{name}:{path.name}", mutation(path.read_bytes(), rng)))
    for index in range(3):
        mails.append((f"random_bytes:{index}", rng.randbytes(rng.randint(1, 4096))))
    mails += [
        ("nested_multiparts:1000", mutations.nested_multiparts(1000)),
        ("many_attachments:10000", mutations.many_attachments(10_000)),
        ("endless_encoded_words:200000", mutations.endless_encoded_words(200_000)),
        ("huge_header_mail:1MiB", mutations.huge_header_mail(MIB)),
        ("huge_address:5000", mutations.huge_address(5000)),
        ("big_body:45MB", mutations.big_body(BIG_BODY_BYTES)),
    ]
    return [(label, b"Message-ID: <fuzz-%d@fuzz.example>\r\n" % index + raw)
            for index, (label, raw) in enumerate(mails)]


def send(stack: dict[str, Any], forwarding_address: str, raw: bytes) -> tuple[int, str]:
    """Send one mail; return the reply code and text to the end of DATA."""
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=120) as smtp:
        smtp.ehlo()
        smtp.mail("fuzzer@fuzz.example")
        smtp.rcpt(forwarding_address)
        code, reply = smtp.data(raw)
    return code, reply.decode("utf-8", "replace")


def upload(stack: dict[str, Any], inbox_id: str, raw: bytes) -> int:
    """Upload one mail over HTTP; return the status."""
    request = urllib.request.Request(
        f"{stack['ingest_http']}/v1/inboxes/{inbox_id}/mail", data=raw, method="POST",
        headers={"Authorization": f"Bearer {stack['ingest_token']}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def process_of(stack: dict[str, Any], service: str) -> int:
    pid = stackctl.status(Path(stack["state_dir"]), int(stack["port_base"]))[service]["pid"]
    assert pid is not None, f"{service} is not running"
    return int(pid)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def fates(stack: dict[str, Any], inbox_id: str, count: int) -> dict[int, str]:
    """Return ``{fuzz index: "message" | "notice" | "dead-letter: <reason>"}`` so far."""
    found: dict[int, str] = {}
    with db.connect(stack["database_url"], autocommit=True) as conn:
        for row in conn.execute("SELECT rfc_message_id FROM messages WHERE inbox_id = %s",
                                (inbox_id,)).fetchall():
            found.update(_indexed(row["rfc_message_id"], "message"))
        for row in conn.execute("SELECT dedup_key FROM notices WHERE inbox_id = %s",
                                (inbox_id,)).fetchall():
            found.update(_indexed(row["dedup_key"], "notice"))
    for record in read_topic_records(stack["kafka_bootstrap"], [topics.ROUTER_DEAD_LETTER]):
        if record["inbox_id"] != inbox_id or not record["original_value"]:
            continue
        _, received = codec.decode(record["original_value"])
        found.update(_indexed(received.get("message_id"),
                              f"dead-letter: {record['error_class']}: {record['reason']}"))
    return {index: fate for index, fate in found.items() if index < count}


def _indexed(message_id: str | None, fate: str) -> dict[int, str]:
    if message_id and message_id.startswith("fuzz-") and message_id.endswith("@fuzz.example"):
        return {int(message_id[len("fuzz-"):-len("@fuzz.example")]): fate}
    return {}


@pytest.fixture(scope="module")
def fuzz_run(stack: dict[str, Any], corpus_dir: Path) -> dict[str, Any]:
    inbox = create_inbox(stack, email_address="support@fuzz.example", agents=["Kim"],
                         greeting=False)
    pids = {service: process_of(stack, service) for service in ("ingest", "router")}
    mails = fuzz_set(corpus_dir)
    replies = [send(stack, inbox["forwarding_address"], raw) for _, raw in mails]
    # What SMTP refuses (lines over RFC 5321's 1,000 bytes) a provider's
    # webhook can still upload, so the router sees every mail.
    uploads = {index: upload(stack, inbox["id"], raw) for index, (_, raw) in enumerate(mails)
               if replies[index][0] != 250}

    accepted = {index for index, (code, _) in enumerate(replies) if code == 250}
    accepted |= {index for index, status in uploads.items() if status == 202}
    deadline = time.monotonic() + WAIT_SECONDS
    found = fates(stack, inbox["id"], len(mails))
    while set(found) < accepted and time.monotonic() < deadline:
        time.sleep(2)
        found = fates(stack, inbox["id"], len(mails))

    router_peak = peak_rss_bytes(process_of(stack, "router"))
    result = {"inbox": inbox, "pids": pids, "labels": [label for label, _ in mails],
              "replies": replies, "uploads": uploads, "fates": found,
              "router_peak_rss_bytes": router_peak}
    print(json.dumps({"mails": len(mails), "refused_by_smtp": len(uploads),
                      "accepted": len(accepted),
                      "router_peak_rss_mib": router_peak // MIB,
                      "fates": {mails[i][0]: fate for i, fate in sorted(found.items())}},
                     indent=1, ensure_ascii=False))
    return result


def test_fuzz_pipeline__receiver_answers_clearly(fuzz_run: dict[str, Any]) -> None:
    for label, (code, text) in zip(fuzz_run["labels"], fuzz_run["replies"]):
        assert code == 250 or (code >= 500 and len(text) > 10), label


def test_fuzz_pipeline__upload_takes_the_refused(fuzz_run: dict[str, Any]) -> None:
    assert set(fuzz_run["uploads"].values()) <= {202}


def test_fuzz_pipeline__every_mail_has_a_fate(fuzz_run: dict[str, Any]) -> None:
    missing = [label for index, label in enumerate(fuzz_run["labels"])
               if index not in fuzz_run["fates"]]
    assert missing == []


def test_fuzz_pipeline__dead_letters_name_a_reason(fuzz_run: dict[str, Any]) -> None:
    for fate in fuzz_run["fates"].values():
        if fate.startswith("dead-letter"):
            assert len(fate.split(": ", 2)[-1]) > 0


def test_fuzz_pipeline__nothing_dead_lettered(fuzz_run: dict[str, Any]) -> None:
    dead = {fuzz_run["labels"][index]: fate for index, fate in fuzz_run["fates"].items()
            if fate.startswith("dead-letter")}
    assert dead == {}


def test_fuzz_pipeline__services_survive(stack: dict[str, Any],
                                        fuzz_run: dict[str, Any]) -> None:
    for service, pid in fuzz_run["pids"].items():
        assert process_of(stack, service) == pid


def test_fuzz_pipeline__partition_not_stuck(stack: dict[str, Any],
                                           fuzz_run: dict[str, Any]) -> None:
    inbox = fuzz_run["inbox"]
    raw = (b"From: Ann <ann@customers.example>\r\nTo: <support@fuzz.example>\r\n"
           b"Subject: after the fuzz\r\nMessage-ID: <canary@customers.example>\r\n\r\nhello\r\n")

    code, _ = send(stack, inbox["forwarding_address"], raw)

    assert code == 250
    assert _wait_for_message(stack, inbox["id"], "canary@customers.example")


def test_fuzz_pipeline__router_memory_bounded(fuzz_run: dict[str, Any],
                                             record_property: Callable[[str, object], None]
                                             ) -> None:
    record_property("router_peak_rss_mib", fuzz_run["router_peak_rss_bytes"] // MIB)

    assert fuzz_run["router_peak_rss_bytes"] < 1536 * MIB


def _wait_for_message(stack: dict[str, Any], inbox_id: str, message_id: str) -> bool:
    deadline = time.monotonic() + 120
    with db.connect(stack["database_url"], autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT 1 FROM messages WHERE inbox_id = %s AND rfc_message_id = %s",
                               (inbox_id, message_id)).fetchone()
            if row is not None:
                return True
            time.sleep(1)
    return False
