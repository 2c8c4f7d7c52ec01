"""The Java subscriber example decodes every event the pipeline wrote.

The example in ``examples/java-subscriber`` knows messagehub only through
the ``.avsc`` files, so it is the proof that a team in another language can
consume ``conversation.events`` from the schemas alone. The test makes the
real pipeline emit events for a fresh inbox, reads the topic with Python's
codec, runs the Java example from the beginning of the topic and compares
the two readings event by event.

Maven resolves the example's jars from Maven Central into ``~/.m2`` once;
after that the build works offline, and it is skipped while the jar is
newer than the example's sources.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from messagehub import codec, topics
from tests.conftest import REPO_ROOT
from tests.pipeline_helpers import create_inbox, import_and_wait

pytestmark = pytest.mark.stack

EXAMPLE_DIR = REPO_ROOT / "examples" / "java-subscriber"
JAR = EXAMPLE_DIR / "target" / "java-subscriber.jar"
BUILD_TIMEOUT_SECONDS = 900
RUN_TIMEOUT_SECONDS = 180
PIPELINE_TIMEOUT_SECONDS = 120
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ALICE_FIRST = b"""\
From: Alice Moreau <alice.moreau@example.org>
To: contract@example.com
Subject: Invoice 2291 shows the wrong VAT number
Message-ID: <invoice-2291.alice@example.org>
Date: Thu, 05 Mar 2026 09:12:00 +0100

Hello, our VAT number on invoice 2291 is FR40303265045, not FR40303265054.
Could you send a corrected invoice?
"""

BOB_FIRST = b"""\
From: Bob Tanaka <bob.tanaka@example.net>
To: contract@example.com
Subject: =?UTF-8?B?6YWN6YCB5YWI44Gu5aSJ5pu0?=
Message-ID: <address-change.bob@example.net>
Date: Thu, 05 Mar 2026 09:20:00 +0900
Content-Type: text/plain; charset=UTF-8

Please ship order 7731 to our new office from next week.
"""

ALICE_REPLY = b"""\
From: Alice Moreau <alice.moreau@example.org>
To: contract@example.com
Subject: Re: Invoice 2291 shows the wrong VAT number
Message-ID: <invoice-2291-followup.alice@example.org>
In-Reply-To: <invoice-2291.alice@example.org>
References: <invoice-2291.alice@example.org>
Date: Thu, 05 Mar 2026 10:02:00 +0100

One more thing: please address it to our Lyon office.
"""


@pytest.fixture(scope="module")
def inbox(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An inbox whose mails made the pipeline emit events, all of them out by now."""
    return _inbox_with_events(stack, tmp_path_factory.mktemp("mails"))


@pytest.fixture(scope="module")
def jar() -> Path:
    return _build_subscriber()


def test_java_subscriber__decodes_every_event(stack: dict[str, Any], inbox: dict[str, Any],
                                              jar: Path) -> None:
    expected = _python_events(stack["kafka_bootstrap"])

    result = _run_subscriber(jar, stack["kafka_bootstrap"], "--until-end")

    assert result.returncode == 0, result.stderr
    decoded = _events_by_id(result.stdout)
    assert _printed_count(result.stderr) == (len(result.stdout.splitlines()), 0)
    missing = set(expected) - set(decoded)
    assert missing == set(), f"Java did not print {len(missing)} events: {sorted(missing)[:5]}"
    for event_id, event in expected.items():
        assert decoded[event_id] == _as_json(event), event_id

    ours = Counter(event["type"] for event in decoded.values() if event["inbox_id"] == inbox["id"])
    assert ours == {"CONVERSATION_CREATED": 2, "MESSAGE_ADDED": 5, "ASSIGNED": 1, "QUEUED": 1}


def test_java_subscriber__group_resumes_after_commit(stack: dict[str, Any],
                                                     inbox: dict[str, Any], jar: Path) -> None:
    expected = _python_events(stack["kafka_bootstrap"])
    group = f"contract-test-{uuid.uuid4().hex[:8]}"

    first = _run_subscriber(jar, stack["kafka_bootstrap"], "--group", group, "--until-end")
    second = _run_subscriber(jar, stack["kafka_bootstrap"], "--group", group, "--until-end")

    assert first.returncode == 0, first.stderr
    assert set(expected) <= set(_events_by_id(first.stdout))
    assert second.returncode == 0, second.stderr
    # Everything up to the end was committed, so only events written
    # between the two runs may show.
    assert set(_events_by_id(second.stdout)) & set(expected) == set()


# --- the pipeline's events ----------------------------------------------------


def _inbox_with_events(stack: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Create an inbox, import three mails and wait until all their events are out.

    One agent with a limit of one: the first conversation is assigned, the
    second waits in the queue, the reply joins the first, and each
    conversation gets a greeting.
    """
    inbox = create_inbox(stack, email_address="contract@example.com", agents=["Kim"],
                         greeting=True, limit=1)
    first, reply = tmp_path / "first", tmp_path / "reply"
    first.mkdir()
    reply.mkdir()
    (first / "alice.eml").write_bytes(ALICE_FIRST.replace(b"\n", b"\r\n"))
    (first / "bob.eml").write_bytes(BOB_FIRST.replace(b"\n", b"\r\n"))
    (reply / "alice-reply.eml").write_bytes(ALICE_REPLY.replace(b"\n", b"\r\n"))

    handled = import_and_wait(stack, inbox, [first], concurrency=1)
    import_and_wait(stack, inbox, [reply], expected_total=handled["incoming"] + 1)
    _wait_for_outgoing_messages(stack["kafka_bootstrap"], inbox["id"], count=2)
    return inbox


def _wait_for_outgoing_messages(bootstrap: str, inbox_id: str, *, count: int) -> None:
    # The greetings come back through outbound, mail.sent and the router.
    deadline = time.monotonic() + PIPELINE_TIMEOUT_SECONDS
    reader = _TopicReader(bootstrap)
    try:
        while True:
            outgoing = [event for event in reader.read_to_end().values()
                        if event["inbox_id"] == inbox_id and event["type"] == "MESSAGE_ADDED"
                        and event["direction"] == "outgoing"]
            if len(outgoing) >= count:
                return
            assert time.monotonic() < deadline, \
                f"inbox {inbox_id}: {len(outgoing)} of {count} outgoing messages after " \
                f"{PIPELINE_TIMEOUT_SECONDS} s"
            time.sleep(1)
    finally:
        reader.close()


def _python_events(bootstrap: str) -> dict[str, dict[str, Any]]:
    """Decode conversation.events from the beginning up to its current end."""
    reader = _TopicReader(bootstrap)
    try:
        return reader.read_to_end()
    finally:
        reader.close()


class _TopicReader:
    """Decodes conversation.events with the Python codec, from the beginning on."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._partitions = [
            TopicPartition(topics.CONVERSATION_EVENTS, partition) for partition
            in sorted(self._consumer.partitions_for_topic(topics.CONVERSATION_EVENTS))]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)
        self.events: dict[str, dict[str, Any]] = {}

    def read_to_end(self) -> dict[str, dict[str, Any]]:
        """Read on up to the topic's current end; return every event read so far by id."""
        ends = self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while any(self._consumer.position(p) < ends[p] for p in self._partitions):
            assert time.monotonic() < deadline, "reading conversation.events timed out"
            for partition, records in self._consumer.poll(timeout_ms=1000).items():
                for record in records:
                    _, event = codec.decode(record.value)
                    self.events[event["event_id"]] = event
        return self.events

    def close(self) -> None:
        self._consumer.close()


# --- the Java example ---------------------------------------------------------


def _build_subscriber() -> Path:
    """Build the example's jar with Maven unless it is newer than its sources."""
    sources = [EXAMPLE_DIR / "pom.xml", *(p for p in (EXAMPLE_DIR / "src").rglob("*")
                                          if p.is_file())]
    newest_source = max(path.stat().st_mtime for path in sources)
    if JAR.exists() and JAR.stat().st_mtime > newest_source:
        return JAR

    result = subprocess.run(["mvn", "-q", "-B", "package"], cwd=EXAMPLE_DIR, capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT_SECONDS, check=False)
    assert result.returncode == 0, f"mvn package failed:\n{result.stdout}\n{result.stderr}"
    return JAR


def _run_subscriber(jar: Path, bootstrap: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["java", "-jar", str(jar), "--bootstrap", bootstrap,
         "--schemas", str(REPO_ROOT / "schemas"), *options],
        cwd=EXAMPLE_DIR, capture_output=True, text=True, encoding="utf-8",
        timeout=RUN_TIMEOUT_SECONDS, check=False)


def _events_by_id(stdout: str) -> dict[str, dict[str, Any]]:
    events = {}
    for line in stdout.splitlines():
        event = json.loads(line)
        events[event["event_id"]] = event
    return events


def _printed_count(stderr: str) -> tuple[int, int]:
    match = re.search(r"(\d+) events printed, (\d+) undecodable", stderr)
    assert match, f"no closing count in the subscriber's output:\n{stderr}"
    return int(match[1]), int(match[2])


def _as_json(event: dict[str, Any]) -> dict[str, Any]:
    """Return ``event`` as the Java example prints it: timestamps in epoch milliseconds."""
    return {name: _epoch_millis(value) if isinstance(value, datetime) else value
            for name, value in event.items()}


def _epoch_millis(value: datetime) -> int:
    return (value - EPOCH) // timedelta(milliseconds=1)
