"""``messagehub thread-eval DIR``: how well the running pipeline threads a corpus.

The command sends every ``.eml`` file of DIR through the forwarding
receiver of the running stack, in Date order as the mail would have
arrived, into a scratch inbox of its own with no greeting and no agents.
Once the router has placed every mail, it scores the conversations against
``DIR/threads.json`` (file name to thread label) with
``evaluation.pairwise_scores``. It scores the References-only union-find
baseline on the same files too. The scratch inbox is kept, so its
conversations can be inspected afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from messagehub import db, inboxes
from messagehub.demo import wait_until_handled
from messagehub.importer import ForwardingClient, SourceMail
from services.router import evaluation
from services.router.mime import parse_mail
from services.router.stage import dedup_key_of

log = logging.getLogger(__name__)

WAIT_TIMEOUT_SECONDS = 300.0


class ThreadEvalError(RuntimeError):
    """The corpus folder cannot be evaluated; the message names what is missing."""


@dataclass(frozen=True)
class EvalReport:
    corpus: str
    inbox: str
    files: int
    distinct_mails: int
    pipeline: evaluation.Scores
    baseline: evaluation.Scores

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def load_corpus(folder: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """Return the ground truth and the raw bytes of every labelled file."""
    truth_path = folder / "threads.json"
    if not truth_path.is_file():
        raise ThreadEvalError(f"{truth_path} not found: the folder needs a threads.json that "
                              "maps each .eml file name to a thread label")
    truth: dict[str, str] = json.loads(truth_path.read_text(encoding="utf-8"))

    missing = [name for name in truth if not (folder / name).is_file()]
    if missing:
        raise ThreadEvalError(f"threads.json names files that are not in {folder}: {missing[:5]}")
    return truth, {name: (folder / name).read_bytes() for name in truth}


def arrival_order(raws: dict[str, bytes]) -> list[str]:
    """Return the file names sorted by their Date header; undated files come last."""
    latest = datetime.max.replace(tzinfo=timezone.utc)

    def sent_at(name: str) -> tuple[datetime, str]:
        match = re.search(rb"^Date:[ \t]*(.+)$", raws[name].split(b"\n\n", 1)[0], re.M | re.I)
        if match is None:
            return latest, name
        try:
            date = parsedate_to_datetime(match.group(1).decode("ascii", "replace").strip())
        except (TypeError, ValueError):
            return latest, name
        if date.tzinfo is None:
            date = date.replace(tzinfo=timezone.utc)
        return date, name

    return sorted(raws, key=sent_at)


def run(folder: Path, stack: dict[str, Any]) -> EvalReport:
    """Import the corpus into a scratch inbox of ``stack`` and score the result."""
    truth, raws = load_corpus(folder)
    inbox = _create_scratch_inbox(stack, folder.name)

    keys = {name: _dedup_keys(raw) for name, raw in raws.items()}
    distinct = len({candidates[0] for candidates in keys.values()})
    _import_in_order(stack, inbox, raws)
    wait_until_handled(stack["database_url"], inbox["id"], distinct,
                       timeout_seconds=WAIT_TIMEOUT_SECONDS)

    conversation_of = _conversations_by_key(stack["database_url"], inbox["id"])
    predicted = {name: conversation_of[key] for name, candidates in keys.items()
                 for key in candidates if key in conversation_of}
    baseline = evaluation.references_baseline(
        {name: evaluation.naive_header_ids(raw) for name, raw in raws.items()})

    return EvalReport(corpus=str(folder), inbox=inbox["name"], files=len(truth),
                      distinct_mails=distinct,
                      pipeline=evaluation.pairwise_scores(truth, predicted),
                      baseline=evaluation.pairwise_scores(truth, baseline))


def format_report(report: EvalReport) -> str:
    """Return the report as a small table for a terminal."""
    lines = [f"corpus {report.corpus}: {report.files} files, {report.distinct_mails} distinct "
             f"mails, scratch inbox {report.inbox!r}",
             f"{'threading':<22} {'threads':>7} {'clusters':>8} {'precision':>9} {'recall':>7} "
             f"{'F1':>6} {'exact':>6}"]
    for label, scores in (("messagehub router", report.pipeline),
                          ("References union-find", report.baseline)):
        lines.append(f"{label:<22} {scores.threads:>7} {scores.clusters:>8} "
                     f"{scores.precision:>9.3f} {scores.recall:>7.3f} {scores.f1:>6.3f} "
                     f"{scores.exact_threads:>6}")
    return "\n".join(lines) + "\n"


def _create_scratch_inbox(stack: dict[str, Any], corpus_name: str) -> dict[str, Any]:
    name = f"thread-eval {corpus_name} {uuid.uuid4().hex[:8]}"
    with db.connect(stack["database_url"], autocommit=True) as conn:
        inbox = inboxes.create_inbox(conn, name=name, email="thread-eval@messagehub.invalid",
                                     inbound_domain=stack["inbound_domain"])
    log.info("thread-eval: inbox %s: created for corpus %s", inbox["id"], corpus_name)
    return inbox


def _import_in_order(stack: dict[str, Any], inbox: dict[str, Any], raws: dict[str, bytes]) -> None:
    # One at a time, so the router receives the mails in the order they were sent.
    host, port = stack["ingest_smtp"].rsplit(":", 1)
    client = ForwardingClient(host, int(port), inbox["forwarding_address"])
    for name in arrival_order(raws):
        client.send(SourceMail(origin=name, raw=raws[name]))


def _conversations_by_key(database_url: str, inbox_id: str) -> dict[str, str]:
    with db.connect(database_url) as conn:
        cursor = conn.execute("SELECT dedup_key, conversation_id FROM messages "
                              "WHERE inbox_id = %s AND direction = 'incoming'", (inbox_id,))
        return {row["dedup_key"]: str(row["conversation_id"]) for row in cursor.fetchall()}


def _dedup_keys(raw: bytes) -> list[str]:
    """Return the keys the router may have stored this file under.

    The importer sends the file with CRLF line ends, and the SMTP client
    adds a final CRLF when the file lacks one, so a file without a
    Message-ID has two possible digests.
    """
    wire = re.sub(rb"\r?\n", b"\r\n", raw)
    mail = parse_mail(wire)
    if mail.message_id:
        return [dedup_key_of(mail, "")]
    return [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in (wire, wire + b"\r\n")]
