"""Unit tests of the benchmark's pure parts: the mail stream, percentiles, step figures, reports."""

from __future__ import annotations

import collections
from typing import Any

from bench import profile, report
from bench.load import OfferResult, Sent
from bench.mailgen import MailGenerator
from bench.observer import Observations
from bench.stats import percentile, step_figures
from messagehub.cli import build_parser
from services.router.mime import parse_mail


def _mails(count: int, **options: Any) -> list[Any]:
    return MailGenerator(run_tag="unit", inboxes=2, large_attachment_max_mb=1.0,
                         templates_per_shape=3, **options).take(count)


def test_mailgen__same_seed_same_stream() -> None:
    first = [m.raw for m in _mails(40)]
    second = [m.raw for m in _mails(40)]
    assert first == second


def test_mailgen__mix_has_every_shape_and_replies() -> None:
    mails = _mails(400)
    shapes = collections.Counter(m.shape for m in mails)
    assert set(shapes) == {"plain_en", "plain_ja", "html", "attachment", "large_attachment"}
    assert 0.2 < sum(m.reply for m in mails) / len(mails) < 0.5
    assert len({m.message_id for m in mails}) == len(mails)
    assert max(len(m.raw) for m in mails) > 1024 * 1024


def test_mailgen__replies_thread_to_earlier_mails() -> None:
    mails = _mails(120)
    earlier: set[str] = set()
    for mail in mails:
        if mail.reply and mail.shape in ("plain_en", "plain_ja", "html"):
            parsed = parse_mail(mail.raw)
            assert parsed.in_reply_to[0] in earlier
            assert parsed.subject.startswith("Re: ")
        earlier.add(mail.message_id)


def test_mailgen__parser_reads_every_shape_cleanly() -> None:
    for mail in _mails(80):
        parsed = parse_mail(mail.raw)
        assert parsed.message_id == mail.message_id
        assert parsed.kind == "customer"
        assert parsed.defects == []
        assert parsed.text.strip()
        if mail.shape in ("attachment", "large_attachment"):
            assert len(parsed.attachments) == 1


def test_mailgen__attachments_differ_per_mail() -> None:
    digests = [a.sha256 for m in _mails(200) if m.shape in ("attachment", "large_attachment")
               for a in parse_mail(m.raw).attachments]
    assert len(digests) > 10
    assert len(digests) == len(set(digests))


def test_mailgen__japanese_text_decodes() -> None:
    japanese = [m for m in _mails(100) if m.shape == "plain_ja"]
    assert japanese
    for mail in japanese:
        parsed = parse_mail(mail.raw)
        assert "お世話になっております" in parsed.text


def test_percentile__interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([10.0], 0.99) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(range(101)), 0.99) == 99.0


def _sent(index: int, data_at: float, error: str | None = None) -> Sent:
    return Sent(index=index, message_id=f"m{index}", inbox=0, reply=False, size=100,
                due_at=data_at, data_at=data_at, answered_at=data_at + 0.01, error=error)


def test_step_figures__keeps_up_when_events_arrive_in_time() -> None:
    sent = [_sent(i, 100.0 + i / 10) for i in range(10)]
    result = OfferResult(rate=10.0, sent=sent, started_at=100.0, finished_at=101.0)
    seen = Observations(conversation={f"m{i}": (100.0 + i / 10 + 0.05, f"c{i}",
                                                "CONVERSATION_CREATED") for i in range(10)},
                        assigned={f"c{i}": 100.0 + i / 10 + 0.2 for i in range(10)})

    figures = step_figures(result, seen, grace_seconds=1.0, keep_up_ratio=0.95)

    assert figures.keeps_up
    assert figures.completed_in_time == 10
    assert figures.event_ms["p50"] == 50.0
    assert figures.event_ms_small["p50"] == 50.0
    assert figures.assigned_ms["p99"] == 200.0
    assert figures.missing_events == 0


def test_step_figures__late_events_do_not_keep_up() -> None:
    sent = [_sent(i, 100.0 + i / 10) for i in range(10)]
    result = OfferResult(rate=10.0, sent=sent, started_at=100.0, finished_at=101.0)
    seen = Observations(conversation={f"m{i}": (100.0 + i, f"c{i}", "MESSAGE_ADDED")
                                      for i in range(10)})

    figures = step_figures(result, seen, grace_seconds=1.0, keep_up_ratio=0.95)

    assert not figures.keeps_up
    assert figures.completed_in_time == 3  # seen at 100, 101 and 102, up to 101 + 1 s
    assert figures.assigned_ms["p50"] is None


def test_step_figures__rejected_mail_does_not_keep_up() -> None:
    sent = [_sent(0, 100.0), _sent(1, 100.1, error="SMTPDataError: 451")]
    result = OfferResult(rate=10.0, sent=sent, started_at=100.0, finished_at=100.2)
    seen = Observations(conversation={"m0": (100.05, "c0", "CONVERSATION_CREATED")})

    figures = step_figures(result, seen, grace_seconds=1.0, keep_up_ratio=0.5)

    assert figures.errors == 1
    assert not figures.keeps_up


def test_profile_summarize__shares_and_idle() -> None:
    collapsed = "\n".join([
        "main (app.py:1);run (loop.py:5);select (selectors.py:468) 60",
        "main (app.py:1);apply (stage.py:9);parse (mime.py:3) 30",
        "main (app.py:1);apply (stage.py:9) 10",
    ])

    summary = profile.summarize("router", collapsed)

    assert summary.samples == 100
    assert summary.idle_share == 0.6
    assert summary.top_self[0] == ("parse (mime.py:3)", 0.3)
    assert ("apply (stage.py:9)", 0.4) in summary.top_total


def test_report_targets_met__compares_each_target() -> None:
    met = report.targets_met({"sustained_mails_per_s": 600.0, "sustained_share_of_ceiling": 0.5,
                              "p99_event_ms": 120.0, "p99_assigned_ms": None})
    assert met == {"sustained_mails_per_s": True, "sustained_share_of_ceiling": False,
                   "p99_event_ms": True, "p99_assigned_ms": None}


def test_cli__bench_subcommand_parses() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--json", "--running"])
    assert args.quick
    assert args.json
    assert args.running
    assert args.func.__module__ == "bench.command"
