"""The chaos run: import mail while processes die, then check every guarantee.

``messagehub chaos`` and the chaos test call :func:`run`. It

1. starts a fresh local stack in its own state dir and ports (or uses the
   one the caller started), and creates inboxes with two agents each,
   greetings on and no limit on open conversations;
2. writes threads with :mod:`messagehub.chaos.threads` and sends them to the
   forwarding receiver at a steady rate, as a provider forwards mail: each
   mail is retried on a 4xx answer or a broken connection until it gets 250;
3. meanwhile asks for agent replies in a share of the conversations, the way
   the API does (an ``OutboundRequest`` through the outbox);
4. meanwhile injects the planned faults with
   :class:`messagehub.chaos.faults.FaultInjector`, which also restarts what
   was killed, as a process supervisor would;
5. waits until the pipeline has settled and returns the figures of
   :func:`messagehub.chaos.verify.verify` with those of the faults.
"""

from __future__ import annotations

import logging
import random
import smtplib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from messagehub import codec, db, ids, inboxes, stackctl, topics
from messagehub.chaos import faults, verify
from messagehub.chaos.threads import ChaosMail, arrival_order, generate
from messagehub.importer import ForwardingClient, SourceMail

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/tmp/messagehub/chaos")
# Below Linux's ephemeral range (32768-60999), where an outgoing connection
# could hold a port a server of the stack needs.
DEFAULT_PORT_BASE = 31000
# How long one mail is retried before the import gives up on it; a real
# MTA keeps trying for days, but a run must end.
MAIL_RETRY_LIMIT_SECONDS = 900.0
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
AGENT_REPLY_SHARE = 0.1
AGENT_REPLY_INTERVAL_SECONDS = 3.0


@dataclass
class ChaosOptions:
    """Options of one run; the defaults are the full run of ``messagehub chaos``."""

    mails: int = 10_000
    inboxes: int = 10
    seed: int = 1
    # Mails sent to the forwarding receiver per second.
    rate_per_second: float = 25.0
    concurrency: int = 4
    # The faults in the order they are injected; by default every kind,
    # in a shuffled order, repeated while the import lasts.
    plan: list[str] | None = None
    gap_seconds: tuple[float, float] = (15.0, 45.0)
    sink_outage_seconds: tuple[float, float] = (10.0, 30.0)
    recovery_limit_seconds: float = 300.0
    settle_limit_seconds: float = 1800.0


@dataclass
class ImportStats:
    """Counts of the forwarding side: accepted mails, retries and mails given up on."""

    sent: int = 0
    accepted: int = 0
    attempts: int = 0
    retried_mails: int = 0
    rejected: list[str] = field(default_factory=list)
    active: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self) -> tuple[int, bool]:
        """Return the accepted count and whether mail is still to be sent."""
        with self.lock:
            return self.accepted, self.active


def default_plan(options: ChaosOptions, rng: random.Random) -> list[str]:
    """Return every fault kind in a shuffled order, repeated to fill the import's duration."""
    import_seconds = options.mails / options.rate_per_second
    mean_gap = sum(options.gap_seconds) / 2
    rounds = max(1, round(import_seconds / mean_gap / len(faults.FAULT_KINDS)))
    plan: list[str] = []
    for _ in range(rounds):
        kinds = list(faults.FAULT_KINDS)
        rng.shuffle(kinds)
        plan += kinds
    return plan


def run(options: ChaosOptions, state_dir: Path = DEFAULT_STATE_DIR,
        port_base: int = DEFAULT_PORT_BASE, *, manage_stack: bool = True,
        keep_stack: bool = False) -> dict[str, Any]:
    """Run the chaos test; return its figures as one JSON-ready dict.

    With ``manage_stack`` the stack in ``state_dir`` is wiped and started,
    and it is stopped at the end unless ``keep_stack``. Without it, the
    caller starts and stops the stack.
    """
    if manage_stack:
        stackctl.down(state_dir, port_base)
        stackctl.local_stack(state_dir, port_base).wipe()
        stackctl.up(state_dir, port_base)
    try:
        return _run(options, state_dir, port_base)
    finally:
        if manage_stack and not keep_stack:
            stackctl.down(state_dir, port_base)


def _run(options: ChaosOptions, state_dir: Path, port_base: int) -> dict[str, Any]:
    info = stackctl.stack_info(state_dir)
    rng = random.Random(options.seed)
    inbox_rows = _create_inboxes(info, options.inboxes, options.seed)
    threads = generate(options.mails, [row["email"] for row in inbox_rows], seed=options.seed)
    order = arrival_order(threads, seed=options.seed)
    plan = options.plan if options.plan is not None else default_plan(options, rng)
    log.info("chaos: %d mails in %d threads over %d inboxes, %d faults planned",
             options.mails, len(threads), len(inbox_rows), len(plan))

    stats = ImportStats()
    control = faults.StackControl(state_dir, port_base)
    probe = faults.PipelineProbe(control, info["database_url"], info["kafka_bootstrap"],
                                 Path(info["sink_dir"]), stats.progress)
    started = time.monotonic()
    injector = faults.FaultInjector(
        control, probe, plan, rng=rng, gap_seconds=options.gap_seconds,
        sink_outage_seconds=options.sink_outage_seconds,
        recovery_limit_seconds=options.recovery_limit_seconds, started_at=started)
    replier = AgentReplier(info["database_url"], [row["id"] for row in inbox_rows])

    injector.start()
    replier.start()
    try:
        _import(info, inbox_rows, order, options, stats)
        import_seconds = time.monotonic() - started
        injector.plan_done.wait()
        replier.stop_and_finish()

        scope = verify.RunScope(
            database_url=info["database_url"], kafka_bootstrap=info["kafka_bootstrap"],
            sink_dir=Path(info["sink_dir"]), inbox_ids=[row["id"] for row in inbox_rows],
            threads=threads, agent_requests=dict(replier.requests))
        settled, settle_seconds = verify.wait_until_settled(
            scope, timeout_seconds=options.settle_limit_seconds)
    finally:
        injector.stop()
        replier.stop()
        injector.join(timeout=600)
        probe.close()

    figures = verify.verify(scope)
    return _report(options, plan, stats, injector, figures, settled=settled,
                   import_seconds=import_seconds, settle_seconds=settle_seconds,
                   elapsed_seconds=time.monotonic() - started, mails_sent=len(order))


def _report(options: ChaosOptions, plan: list[str], stats: ImportStats,
            injector: faults.FaultInjector, figures: dict[str, Any], *, settled: bool,
            import_seconds: float, settle_seconds: float, elapsed_seconds: float,
            mails_sent: int) -> dict[str, Any]:
    fault_report = injector.report()
    recoveries = [f["recovery_s"] for f in fault_report["faults"]]
    unrecovered = sum(1 for value in recoveries if value is None)
    report: dict[str, Any] = {
        "mails": options.mails,
        "mail_deliveries": mails_sent,
        "inboxes": options.inboxes,
        "seed": options.seed,
        "injected": len(fault_report["faults"]),
        "planned": len(plan),
        **{key: figures[key] for key in ("lost", "doubled_messages", "doubled_conversations",
                                         "doubled_sends")},
        "recovery_s_max": max((value for value in recoveries if value is not None), default=0.0),
        "unrecovered_faults": unrecovered,
        "restarted_by": "the chaos harness, as a process supervisor (stackctl.up) after each "
                        "fault; unplanned_restarts lists processes that died by themselves",
        "unplanned_restarts": fault_report["unplanned_restarts"],
        "faults": fault_report["faults"],
        "import": {"accepted": stats.accepted, "attempts": stats.attempts,
                   "retried_mails": stats.retried_mails, "rejected": stats.rejected[:10],
                   "seconds": round(import_seconds, 1)},
        "settled": settled,
        "settle_s": round(settle_seconds, 1),
        "elapsed_s": round(elapsed_seconds, 1),
        **{key: value for key, value in figures.items()
           if key not in ("lost", "doubled_messages", "doubled_conversations", "doubled_sends")},
    }
    if injector.error is not None:
        report["injector_error"] = repr(injector.error)
    report["ok"] = passed(report)
    return report


def passed(report: dict[str, Any]) -> bool:
    """Tell whether a run's figures show every guarantee kept."""
    stuck = report["stuck"]
    return (report["settled"] and report["lost"] == 0 and report["doubled_messages"] == 0
            and report["doubled_conversations"] == 0 and report["merged_conversations"] == 0
            and report["doubled_sends"] == report["resent_same_message_id"]
            and report["missing_sends"] == 0
            and report["unrecovered_faults"] == 0 and not report["unplanned_restarts"]
            and not report["import"]["rejected"] and report["injected"] == report["planned"]
            and stuck["outbox"] == 0 and stuck["ledger_sending"] == 0
            and not any(stuck["consumer_lag"].values()) and stuck["assignment_queue"] == 0
            and not any(topic["records"] for topic in report["dead_letters"].values())
            and "injector_error" not in report)


def _create_inboxes(info: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:6]
    created = []
    with db.connect(info["database_url"], autocommit=True) as conn:
        for index in range(count):
            name = f"chaos-{seed}-{run_id}-{index}"
            inbox = inboxes.create_inbox(conn, name=name, email=f"support@shop{index}.example",
                                         inbound_domain=info["inbound_domain"],
                                         greeting_enabled=True, auto_assign_limit=None)
            for agent in ("Kim", "Lee"):
                inboxes.add_agent(conn, inbox=name, name=agent,
                                  email=f"{agent.lower()}.{name}@agents.example")
            created.append(inbox)
    return created


def _import(info: dict[str, Any], inbox_rows: list[dict[str, Any]], order: list[ChaosMail],
            options: ChaosOptions, stats: ImportStats) -> None:
    """Send every mail in ``order`` at the configured rate, retrying until accepted."""
    host, port = info["ingest_smtp"].rsplit(":", 1)
    clients = [ForwardingClient(host, int(port), row["forwarding_address"], timeout_seconds=60)
               for row in inbox_rows]
    started = time.monotonic()

    def send(indexed: tuple[int, ChaosMail]) -> None:
        index, mail = indexed
        delay = started + index / options.rate_per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with stats.lock:
            stats.sent += 1
        _deliver(clients[mail.inbox], mail, stats)

    try:
        with ThreadPoolExecutor(max_workers=options.concurrency,
                                thread_name_prefix="chaos-import") as pool:
            list(pool.map(send, enumerate(order)))
    finally:
        with stats.lock:
            stats.active = False


def _deliver(client: ForwardingClient, mail: ChaosMail, stats: ImportStats) -> None:
    """Send one mail as an MTA would: retry temporary failures, give up on 5xx."""
    deadline = time.monotonic() + MAIL_RETRY_LIMIT_SECONDS
    wait = RETRY_FIRST_SECONDS
    retried = False
    while True:
        with stats.lock:
            stats.attempts += 1
        try:
            client.send(SourceMail(mail.message_id, mail.raw))
        except (smtplib.SMTPException, OSError) as exc:
            if _is_permanent(exc) or time.monotonic() > deadline:
                with stats.lock:
                    stats.rejected.append(f"{mail.message_id}: {type(exc).__name__}: {exc}")
                return
            log.debug("chaos: %s: retried in %.1fs after %r", mail.message_id, wait, exc)
            retried = True
            time.sleep(wait)
            wait = min(wait * 2, RETRY_MAX_SECONDS)
            continue
        with stats.lock:
            stats.accepted += 1
            stats.retried_mails += int(retried)
        return


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return False


class AgentReplier(threading.Thread):
    """Requests an agent reply in a share of the conversations, as the API would.

    The request goes into the outbox, and a stage's relay publishes it on
    ``outbound.requests``. Its request id is derived from the conversation,
    so a second request would still send once.
    """

    def __init__(self, database_url: str, inbox_ids: list[str]) -> None:
        super().__init__(name="chaos-agent-replies", daemon=True)
        self._database_url = database_url
        self._inbox_ids = inbox_ids
        self._stopping = threading.Event()
        self.requests: dict[str, str] = {}

    def run(self) -> None:
        while not self._stopping.wait(AGENT_REPLY_INTERVAL_SECONDS):
            self._request_replies()

    def stop(self) -> None:
        self._stopping.set()

    def stop_and_finish(self) -> None:
        """Stop the thread, then request the replies of conversations created since."""
        self.stop()
        self.join()
        deadline = time.monotonic() + 120
        while not self._request_replies() and time.monotonic() < deadline:
            time.sleep(AGENT_REPLY_INTERVAL_SECONDS)

    def _request_replies(self) -> bool:
        """Request the due replies; return False when the database was not reachable."""
        try:
            with db.connect(self._database_url) as conn, conn.transaction():
                rows = conn.execute(
                    "SELECT c.id::text AS conversation_id, c.inbox_id::text AS inbox_id, "
                    "       (SELECT agent_id::text FROM inbox_agents a "
                    "        WHERE a.inbox_id = c.inbox_id ORDER BY agent_id LIMIT 1) AS agent_id "
                    "FROM conversations c WHERE c.inbox_id = ANY(%s::uuid[])",
                    (self._inbox_ids,)).fetchall()
                requested = {}
                for row in rows:
                    request_id = ids.derive_id("chaos-agent-reply", row["conversation_id"])
                    if request_id not in self.requests and _chosen(request_id):
                        self._request_one(conn, request_id, row)
                        requested[request_id] = row["conversation_id"]
        except psycopg.Error as exc:
            log.info("chaos: agent replies not requested this time: %r", exc)
            return False
        self.requests.update(requested)
        return True

    def _request_one(self, conn: psycopg.Connection[Any], request_id: str,
                     row: dict[str, Any]) -> None:
        record = {
            "event_id": request_id, "occurred_at": datetime.now(timezone.utc),
            "inbox_id": row["inbox_id"], "conversation_id": row["conversation_id"],
            "schema_version": 1, "request_id": request_id, "kind": "agent",
            "agent_id": row["agent_id"],
            "text": "Thank you for your patience. We have sent a replacement today.",
            "html": None,
        }
        conn.execute("INSERT INTO outbox (topic, key, value, event_id) VALUES (%s, %s, %s, %s)",
                     (topics.OUTBOUND_REQUESTS, row["inbox_id"].encode(),
                      codec.encode("OutboundRequest", record), request_id))


def _chosen(request_id: str) -> bool:
    # The share is picked from the id, so a repeated run picks the same conversations.
    return int(request_id.replace("-", "")[:8], 16) / 0xFFFFFFFF < AGENT_REPLY_SHARE
