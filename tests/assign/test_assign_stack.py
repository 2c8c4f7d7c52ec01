"""Assignment and automatic answers end to end: mail in, Kafka, PostgreSQL, SMTP out.

The reported faults these tests reproduce: an agent ends up above the
per-agent limit when several workers assign at once, and business hours
are one hour off during daylight-saving time because they were judged with
the zone's standard offset.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from messagehub import business_hours, codec, ids, topics
from messagehub.localstack.smtp_sink import read_sink
from tests.assign.helpers import (AssignReplica, assignee_of, create_inbox, decision_log,
                                  open_counts, plain_mail, publish_imap_mail, query, queued,
                                  send_forwarded, wait_for, wait_for_events)
from tests.conftest import REPO_ROOT, TEST_PORT_BASE, TEST_STATE_DIR

pytestmark = pytest.mark.stack

# The second assign replica's metrics port, beside the services' ports of the test stack.
REPLICA_METRICS_OFFSET = 113


def messagehub_command(*args: str) -> str:
    """Run the ``messagehub`` command against the test stack; return its output."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "messagehub"), *args], cwd=REPO_ROOT,
        capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "MESSAGEHUB_STATE_DIR": str(TEST_STATE_DIR),
             "MESSAGEHUB_PORT_BASE": str(TEST_PORT_BASE)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def decided(stack: dict[str, Any], inbox: dict[str, Any]) -> int:
    """Return how many of the inbox's conversations are assigned or queued."""
    [row] = query(stack, "SELECT count(*) AS decided FROM conversations c WHERE c.inbox_id = %s "
                         "AND (c.assignee_id IS NOT NULL OR EXISTS (SELECT 1 FROM "
                         "assignment_queue q WHERE q.conversation_id = c.id))", (inbox["id"],))
    return int(row["decided"])


def conversation_of_sender(stack: dict[str, Any], inbox: dict[str, Any], sender: str) -> str:
    rows = query(stack, "SELECT c.id FROM conversations c JOIN contacts ct ON ct.id = c.contact_id "
                        "WHERE c.inbox_id = %s AND ct.email = %s", (inbox["id"], sender))
    assert len(rows) == 1, f"{sender}: {len(rows)} conversations"
    return str(rows[0]["id"])


def resolve_oldest_of(stack: dict[str, Any], inbox: dict[str, Any], agent: str) -> str:
    [row] = query(stack, "SELECT c.id FROM conversations c JOIN agents a ON a.id = c.assignee_id "
                         "WHERE c.inbox_id = %s AND a.name = %s AND c.status = 'open' "
                         "ORDER BY c.created_at LIMIT 1", (inbox["id"], agent))
    conversation_id = str(row["id"])
    messagehub_command("conversation", "resolve", conversation_id)
    return conversation_id


@pytest.fixture
def second_replica() -> Iterator[AssignReplica]:
    replica = AssignReplica(TEST_PORT_BASE + REPLICA_METRICS_OFFSET)
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def test_limit__holds_across_two_replicas(
        stack: dict[str, Any], second_replica: AssignReplica) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee", "Sato"], limit=4)
    senders = [f"customer{n:02d}@example.org" for n in range(13)]

    # 13 new conversations from 13 senders within the same second, while the
    # second replica joins the consumer group and partitions move.
    with ThreadPoolExecutor(max_workers=13) as pool:
        list(pool.map(lambda sender: send_forwarded(stack, inbox, plain_mail(
            sender, "support@example.com", f"Order question from {sender}")), senders))
    wait_for(lambda: decided(stack, inbox) == 13, what="13 conversations assigned or queued")

    assert open_counts(stack, inbox) == {"Kim": 4, "Lee": 4, "Sato": 4}
    [waiting] = queued(stack, inbox)
    log = decision_log(stack, inbox)
    assert max(row["open_count"] for row in log if row["decision"] == "assigned") == 4
    assert [row["reason"] for row in log if row["decision"] == "queued"] == [
        "all_agents_at_limit"]
    events = wait_for_events(stack, inbox["id"], {row["event_id"] for row in log})
    assert sorted(events[row["event_id"]]["type"] for row in log) == ["ASSIGNED"] * 12 + [
        "QUEUED"]

    # Kim resolves one: the waiting conversation goes to her in that same step.
    resolve_oldest_of(stack, inbox, "Kim")
    assert assignee_of(stack, waiting) == "Kim"
    assert open_counts(stack, inbox) == {"Kim": 4, "Lee": 4, "Sato": 4}
    [freed] = [row for row in decision_log(stack, inbox)
               if row["decision"] == "assigned" and str(row["conversation_id"]) == waiting]
    assert freed["agent"] == "Kim"
    assert wait_for_events(stack, inbox["id"], {freed["event_id"]})[freed["event_id"]][
        "reason"] == "round_robin"

    # Sato goes offline. A new conversation waits, because Kim and Lee are at
    # the limit and Sato is offline, until Lee frees capacity.
    messagehub_command("agent", "availability", "--email", inbox["agents"]["Sato"]["email"],
                       "offline")
    send_forwarded(stack, inbox, plain_mail("late@example.org", "support@example.com",
                                            "One more question"))
    wait_for(lambda: decided(stack, inbox) == 14, what="the 14th conversation queued")
    late = conversation_of_sender(stack, inbox, "late@example.org")
    assert queued(stack, inbox) == [late]
    assert assignee_of(stack, late) is None

    resolve_oldest_of(stack, inbox, "Lee")
    assert assignee_of(stack, late) == "Lee"
    assert queued(stack, inbox) == []

    log = decision_log(stack, inbox)
    assert all(row["open_count"] <= 4 for row in log if row["decision"] == "assigned")
    assert not any(row["over_limit"] for row in log)


# --- business hours and daylight-saving time ------------------------------------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")

# (sender, inbox, INTERNALDATE, Date header or None, expected automatic mail)
DST_ARRIVALS = [
    ("a", "ny", "2024-03-11T13:30:00Z", None, "greeting"),      # Mon 09:30 EDT
    ("b", "ny", "2024-03-11T12:30:00Z", None, "out_of_hours"),  # Mon 08:30 EDT
    ("c", "ny", "2024-03-08T13:30:00Z", None, "out_of_hours"),  # Fri 08:30 EST
    ("d", "ny", "2024-11-04T13:30:00Z", None, "out_of_hours"),  # Mon 08:30 EST
    ("e", "ny", "2024-11-04T14:30:00Z", None, "greeting"),      # Mon 09:30 EST
    ("f", "ny", "2024-03-10T14:30:00Z", None, "out_of_hours"),  # Sunday, switch day
    ("g", "jp", "2024-03-11T00:30:00Z", None, "greeting"),      # Mon 09:30 JST
    # The sender's clock is wrong; the INTERNALDATE decides.
    ("h", "ny", "2024-03-11T13:30:00Z", "Mon, 11 Mar 2024 08:30:00 -0500", "greeting"),
]


def set_hours(stack: dict[str, Any], inbox: dict[str, Any], zone: str, closes: str) -> None:
    messagehub_command("inbox", "hours", "--inbox", inbox["name"], "--business-hours", "on",
                       "--zone", zone, *[arg for day in WEEKDAYS
                                         for arg in ("--day", f"{day}=09:00-{closes}")])


def ledger(stack: dict[str, Any], inbox: dict[str, Any]) -> list[dict[str, Any]]:
    return query(stack, "SELECT conversation_id, kind, status, rfc_message_id FROM send_ledger "
                        "WHERE inbox_id = %s ORDER BY created_at", (inbox["id"],))


def finished_ledger(stack: dict[str, Any], inbox: dict[str, Any],
                    expected: int) -> list[dict[str, Any]] | None:
    rows = ledger(stack, inbox)
    if len(rows) >= expected and all(row["status"] != "sending" for row in rows):
        return rows
    return None


def test_business_hours__dst_arrivals(stack: dict[str, Any]) -> None:
    inboxes = {"ny": create_inbox(stack, agents=["Kim"], greeting=True,
                                  email_address="support@example.com"),
               "jp": create_inbox(stack, agents=["Sato"], greeting=True,
                                  email_address="support.jp@example.com")}
    set_hours(stack, inboxes["ny"], "America/New_York", "17:00")
    set_hours(stack, inboxes["jp"], "Asia/Tokyo", "18:00")

    for uid, (sender, key, arrival, date_header, _) in enumerate(DST_ARRIVALS, start=1):
        raw = plain_mail(f"{sender}.dst@example.org", inboxes[key]["email"],
                         f"Question {sender.upper()}", date=date_header)
        publish_imap_mail(stack, inboxes[key], raw,
                          datetime.fromisoformat(arrival.replace("Z", "+00:00")), uid)
    rows = []
    for key, inbox in inboxes.items():
        expected_sends = sum(1 for arrival in DST_ARRIVALS if arrival[1] == key)
        rows += wait_for(lambda: finished_ledger(stack, inbox, expected_sends),
                         what=f"{expected_sends} sends of {key}")

    for sender, key, _, _, expected in DST_ARRIVALS:
        conversation_id = conversation_of_sender(stack, inboxes[key], f"{sender}.dst@example.org")
        sends = [(row["kind"], row["status"]) for row in rows
                 if str(row["conversation_id"]) == conversation_id]
        assert sends == [(expected, "sent")], sender


def test_business_hours__note_text_names_next_opening(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], greeting=True, email_address="help@example.com")
    today = datetime.now(timezone.utc).date()
    open_day = business_hours.WEEKDAYS[(today + timedelta(days=3)).weekday()]
    messagehub_command("inbox", "hours", "--inbox", inbox["name"], "--business-hours", "on",
                       "--zone", "UTC", *[arg for day in business_hours.WEEKDAYS
                                          for arg in ("--day", f"{day}=closed")],
                       "--day", f"{open_day}=all-day")

    send_forwarded(stack, inbox, plain_mail("nadia@example.org", "help@example.com",
                                            "Where is my parcel"))
    [row] = wait_for(lambda: finished_ledger(stack, inbox, 1), what="the note")

    assert (row["kind"], row["status"]) == ("out_of_hours", "sent")
    [mail] = [m for m in read_sink(Path(stack["sink_dir"]))
              if m.message["Message-ID"] == f"<{row['rfc_message_id']}>"]
    assert mail.rcpt_tos == ["nadia@example.org"]
    body = mail.message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    opening = datetime.combine(today + timedelta(days=3), datetime.min.time(), timezone.utc)
    assert "outside our business hours" in text
    assert f"We will be back on {business_hours.format_opening(opening, ZoneInfo('UTC'), 'en')}" \
        in text


# --- automatic answers: never to machines, once per closed period --------------------


def closed_now(stack: dict[str, Any], inbox: dict[str, Any], *, opens_in_days: int) -> None:
    """Close the inbox except for the whole weekday ``opens_in_days`` from today (UTC)."""
    day = datetime.now(timezone.utc).date() + timedelta(days=opens_in_days)
    messagehub_command("inbox", "hours", "--inbox", inbox["name"], "--business-hours", "on",
                       "--zone", "UTC", *[arg for weekday in business_hours.WEEKDAYS
                                          for arg in ("--day", f"{weekday}=closed")],
                       "--day", f"{business_hours.WEEKDAYS[day.weekday()]}=all-day")


def sends_of(stack: dict[str, Any], inbox: dict[str, Any], conversation_id: str) -> list[str]:
    return [row["kind"] for row in ledger(stack, inbox)
            if str(row["conversation_id"]) == conversation_id]


def arrived(stack: dict[str, Any], inbox: dict[str, Any]) -> int:
    """Return the inbox's incoming messages and notices."""
    [row] = query(stack, "SELECT (SELECT count(*) FROM messages WHERE inbox_id = %s "
                         "AND direction = 'incoming') + (SELECT count(*) FROM notices "
                         "WHERE inbox_id = %s) AS arrived", (inbox["id"], inbox["id"]))
    return int(row["arrived"])


def unseen_by_assign(stack: dict[str, Any], inbox: dict[str, Any]) -> int:
    """Return how many incoming messages' MESSAGE_ADDED events assign has not applied yet."""
    messages = query(stack, "SELECT id, conversation_id FROM messages WHERE inbox_id = %s "
                            "AND direction = 'incoming'", (inbox["id"],))
    event_ids = [ids.derive_id("conversation-event", str(m["conversation_id"]), "MESSAGE_ADDED",
                               str(m["id"])) for m in messages]
    [row] = query(stack, "SELECT count(*) AS applied FROM processed_events "
                         "WHERE consumer = 'assign' AND event_id = ANY(%s)", (event_ids,))
    return len(event_ids) - int(row["applied"])


def sends_settled(stack: dict[str, Any], inbox: dict[str, Any]) -> tuple[Any, ...]:
    [row] = query(stack, "SELECT (SELECT count(*) FROM outbox) AS pending, "
                         "(SELECT count(*) FROM send_ledger WHERE inbox_id = %s "
                         " AND status = 'sending') AS sending", (inbox["id"],))
    return (row["pending"], row["sending"],
            tuple((str(r["conversation_id"]), r["kind"], r["status"]) for r in ledger(stack, inbox)))


def deliver(stack: dict[str, Any], inbox: dict[str, Any], raws: list[bytes],
            arrived_before: int) -> int:
    """Send ``raws`` and wait until assign decided on them and outbound sent what it requested.

    Sends are settled when nothing waits in the outbox, nothing is being
    sent and the ledger held still for three polls a second apart.
    """
    for raw in raws:
        send_forwarded(stack, inbox, raw)
    expected = arrived_before + len(raws)
    wait_for(lambda: arrived(stack, inbox) >= expected, what=f"{expected} mails")
    wait_for(lambda: unseen_by_assign(stack, inbox) == 0, what="assign to see every mail")

    history: list[tuple[Any, ...]] = []

    def still() -> bool:
        history.append(sends_settled(stack, inbox))
        time.sleep(1.0)
        recent = history[-3:]
        return len(recent) == 3 and len(set(recent)) == 1 and recent[0][:2] == (0, 0)
    wait_for(still, what="the sends to settle")
    return expected


def test_automatic_answers__never_to_machine_mail(stack: dict[str, Any],
                                                  cases_dir: Path) -> None:
    inbox = create_inbox(stack, agents=["Kim"], greeting=True, email_address="support@example.com")
    closed_now(stack, inbox, opens_in_days=3)

    seen = deliver(stack, inbox, [(cases_dir / "01-new-inquiry-with-cc.eml").read_bytes()], 0)
    c01 = conversation_of_sender(stack, inbox, "alice@example.org")
    wait_for(lambda: sends_of(stack, inbox, c01), what="C01's note")
    assert sends_of(stack, inbox, c01) == ["out_of_hours"]

    machine_mail = [
        (cases_dir / "02-cc-reply-all-before-agent.eml").read_bytes(),   # a person, same period
        (cases_dir / "36-ooo-auto-submitted.eml").read_bytes(),          # autoresponder
        (cases_dir / "35-precedence-list-mailman.eml").read_bytes(),     # list mail
        plain_mail("noreply@shop.example.com", "support@example.com", "Your receipt"),
        plain_mail("Mailer-Daemon@mx.example.net", "support@example.com", "Undeliverable",
                   headers={"Auto-Submitted": "auto-replied"}),
    ]
    deliver(stack, inbox, machine_mail, seen)

    assert [(str(row["conversation_id"]), row["kind"]) for row in ledger(stack, inbox)] == [
        (c01, "out_of_hours")]
    others = query(stack, "SELECT c.id, c.assignee_id FROM conversations c WHERE c.inbox_id = %s "
                          "AND c.id <> %s", (inbox["id"], c01))
    for row in others:
        contact = query(stack, "SELECT m.kind, m.from_email FROM messages m "
                               "WHERE m.conversation_id = %s ORDER BY m.received_at LIMIT 1",
                        (row["id"],))[0]
        if contact["kind"] != "customer":
            assert row["assignee_id"] is None, contact


def publish_agent_reply(stack: dict[str, Any], inbox: dict[str, Any], conversation_id: str,
                        agent_id: str) -> str:
    """Publish an agent's reply on outbound.requests, as the API does; return its request id."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaProducer

    request_id = ids.new_id()
    record = {"event_id": request_id, "occurred_at": datetime.now(timezone.utc),
              "inbox_id": inbox["id"], "conversation_id": conversation_id,
              "request_id": request_id, "kind": "agent", "agent_id": agent_id,
              "text": "We are looking into it right now.", "html": None}
    producer = KafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    try:
        producer.send(topics.OUTBOUND_REQUESTS, key=inbox["id"].encode(),
                      value=codec.encode("OutboundRequest", record)).get(timeout=30)
    finally:
        producer.close()
    return request_id


def test_out_of_hours__once_per_closed_period(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim"], greeting=True, email_address="desk@example.com")
    closed_now(stack, inbox, opens_in_days=3)
    firsts = {name: plain_mail(f"{name}@example.org", "desk@example.com", f"Help {name}",
                               message_id=f"first.{name}.{inbox['id']}@example.org")
              for name in ("xavier", "yuki")}
    seen = deliver(stack, inbox, list(firsts.values()), 0)
    xavier = conversation_of_sender(stack, inbox, "xavier@example.org")
    yuki = conversation_of_sender(stack, inbox, "yuki@example.org")
    wait_for(lambda: sends_of(stack, inbox, xavier) and sends_of(stack, inbox, yuki),
             what="the first notes")

    # A second mail in the same closed period gets no second note.
    replies = [plain_mail(f"{name}@example.org", "desk@example.com", f"Re: Help {name}",
                          in_reply_to=f"first.{name}.{inbox['id']}@example.org")
               for name in ("xavier", "yuki")]
    seen = deliver(stack, inbox, replies, seen)
    assert sends_of(stack, inbox, xavier) == ["out_of_hours"]
    assert sends_of(stack, inbox, yuki) == ["out_of_hours"]

    # The next closed period (the opening moved on), and Kim has just replied to Xavier,
    # so only Yuki gets a note.
    closed_now(stack, inbox, opens_in_days=4)
    publish_agent_reply(stack, inbox, xavier, inbox["agents"]["Kim"]["id"])
    wait_for(lambda: query(stack, "SELECT 1 FROM messages WHERE conversation_id = %s "
                                  "AND kind = 'agent'", (xavier,)), what="Kim's reply recorded")
    again = [plain_mail(f"{name}@example.org", "desk@example.com", f"Re: Help {name}",
                        in_reply_to=f"first.{name}.{inbox['id']}@example.org")
             for name in ("xavier", "yuki")]
    deliver(stack, inbox, again, seen)

    assert sends_of(stack, inbox, xavier) == ["out_of_hours", "agent"]
    assert sends_of(stack, inbox, yuki) == ["out_of_hours", "out_of_hours"]
    notes = query(stack, "SELECT count(*) AS notes FROM out_of_hours_notes n "
                         "JOIN conversations c ON c.id = n.conversation_id WHERE c.inbox_id = %s",
                  (inbox["id"],))
    assert notes[0]["notes"] == 3


def test_reopened_by_customer__keeps_assignee(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, agents=["Kim", "Lee"], limit=2, email_address="shop@example.com")
    first = plain_mail("olga@example.org", "shop@example.com", "Broken lamp",
                       message_id=f"lamp.{inbox['id']}@example.org")
    seen = deliver(stack, inbox, [first], 0)
    olga = conversation_of_sender(stack, inbox, "olga@example.org")
    wait_for(lambda: assignee_of(stack, olga), what="Olga's conversation assigned")
    holder = assignee_of(stack, olga)
    messagehub_command("conversation", "resolve", olga)

    deliver(stack, inbox, [plain_mail("olga@example.org", "shop@example.com", "Re: Broken lamp",
                                      in_reply_to=f"lamp.{inbox['id']}@example.org")], seen)

    wait_for(lambda: query(stack, "SELECT 1 FROM conversations WHERE id = %s "
                                  "AND status = 'open'", (olga,)), what="the reopening")
    assert assignee_of(stack, olga) == holder
    assert [row["decision"] for row in decision_log(stack, inbox)] == ["assigned"]
