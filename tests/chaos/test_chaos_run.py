"""The chaos run at CI size: a few hundred mails while every kind of fault hits once.

It kills processes and restarts Kafka and PostgreSQL, so it runs on a stack
of its own (state dir ``MESSAGEHUB_CHAOS_STATE_DIR``, default
``/var/tmp/messagehub/test-chaos``, ports from ``MESSAGEHUB_CHAOS_PORT_BASE``,
default 29000), never on the session stack the other tests share. The full
run is ``messagehub chaos --mails 10000 --json``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from messagehub import stackctl
from messagehub.chaos import ChaosOptions, run

pytestmark = pytest.mark.stack

CHAOS_STATE_DIR = Path(os.environ.get("MESSAGEHUB_CHAOS_STATE_DIR",
                                      "/var/tmp/messagehub/test-chaos"))
CHAOS_PORT_BASE = int(os.environ.get("MESSAGEHUB_CHAOS_PORT_BASE", "29000"))
# One fault of each kind that can lose or double something; killing the
# stateless API is left to the full run.
CI_PLAN = ["kill:router", "restart:postgresql", "kill:outbound", "restart:kafka",
           "outage:smtp-sink", "kill:ingest", "kill:assign"]


@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[Path]:
    # Two test sessions on one machine would wipe each other's chaos stack:
    # the second waits for the first.
    CHAOS_STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(CHAOS_STATE_DIR.with_name(CHAOS_STATE_DIR.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stackctl.reset(CHAOS_STATE_DIR, CHAOS_PORT_BASE)
        stackctl.up(CHAOS_STATE_DIR, CHAOS_PORT_BASE)
        try:
            yield CHAOS_STATE_DIR
        finally:
            stackctl.down(CHAOS_STATE_DIR, CHAOS_PORT_BASE)


@pytest.fixture(scope="module")
def report(chaos_stack: Path) -> dict[str, Any]:
    options = ChaosOptions(mails=300, inboxes=3, seed=7, rate_per_second=2.0, plan=CI_PLAN,
                           gap_seconds=(4.0, 10.0), sink_outage_seconds=(10.0, 20.0),
                           recovery_limit_seconds=180.0, settle_limit_seconds=300.0)
    result = run(options, chaos_stack, CHAOS_PORT_BASE, manage_stack=False)
    print(json.dumps(result, indent=2, default=str))
    return result


@pytest.fixture(autouse=True)
def record_figures(request: pytest.FixtureRequest,
                   record_property: Callable[[str, object], None]) -> None:
    if "report" in request.fixturenames:
        figures = request.getfixturevalue("report")
        for key in ("injected", "lost", "doubled_messages", "doubled_conversations",
                    "doubled_sends", "recovery_s_max"):
            record_property(key, figures[key])


def test_chaos__every_fault_injected_and_recovered(report: dict[str, Any]) -> None:
    assert report["injected"] == len(CI_PLAN)
    assert report["unrecovered_faults"] == 0
    assert report["unplanned_restarts"] == []
    assert report.get("injector_error") is None


def test_chaos__no_mail_lost_or_doubled(report: dict[str, Any]) -> None:
    assert report["settled"] is True
    assert report["import"]["rejected"] == []
    assert report["lost_examples"] == []
    assert report["lost"] == 0
    assert report["unexpected_messages"] == 0
    assert report["doubled_messages"] == 0


def test_chaos__every_thread_in_one_conversation(report: dict[str, Any]) -> None:
    assert report["doubled_conversations"] == 0
    assert report["merged_conversations"] == 0
    assert report["conversations"] == report["threads"]


def test_chaos__every_send_delivered_once(report: dict[str, Any]) -> None:
    assert report["missing_send_examples"] == []
    # A kill between the SMTP server's 250 and the ledger write resends with
    # the same Message-ID, which the send ledger allows. Any other second
    # delivery is a doubled send.
    assert report["doubled_sends"] == report["resent_same_message_id"]
    assert report["resent_same_message_id"] <= CI_PLAN.count("kill:outbound")
    assert report["missing_sends"] == 0
    assert report["failed_sends"] == {}
    assert report["greetings_delivered"] == report["conversations"]
    assert report["sink_mails_not_ours"] == 0


def test_chaos__nothing_stuck(report: dict[str, Any]) -> None:
    stuck = report["stuck"]
    assert stuck["outbox"] == 0
    assert stuck["ledger_sending"] == 0
    assert stuck["consumer_lag"] == {"router": 0, "assign": 0, "outbound": 0}
    assert stuck["assignment_queue"] == 0
    assert stuck["unassigned_open"] == 0
    assert {topic: figures["records"] for topic, figures in report["dead_letters"].items()} == {
        "router.dead-letter": 0, "assign.dead-letter": 0, "outbound.dead-letter": 0}
