"""The chaos run's mail generator: counts, threading headers and arrival order."""

from __future__ import annotations

from collections import Counter

from messagehub.chaos.threads import arrival_order, generate
from services.router.mime import parse_mail

INBOXES = ["support@shop0.example", "support@shop1.example", "support@shop2.example"]


def test_generate__exact_mail_count() -> None:
    threads = generate(101, INBOXES, seed=5)

    assert sum(len(thread.mails) for thread in threads) == 101
    assert {thread.inbox for thread in threads} == {0, 1, 2}


def test_generate__same_seed_same_bytes() -> None:
    first = generate(50, INBOXES, seed=9)
    second = generate(50, INBOXES, seed=9)

    assert [m.raw for t in first for m in t.mails] == [m.raw for t in second for m in t.mails]


def test_generate__one_customer_per_thread() -> None:
    threads = generate(400, INBOXES, seed=2)

    customers = Counter(thread.customer for thread in threads)
    assert customers.most_common(1)[0][1] == 1


def test_generate__replies_parse_with_their_history() -> None:
    threads = generate(400, INBOXES, seed=3)

    for thread in threads:
        earlier: list[str] = []
        for mail in thread.mails:
            parsed = parse_mail(mail.raw)
            assert parsed.message_id == mail.message_id
            assert parsed.references == earlier
            assert parsed.in_reply_to == earlier[-1:]
            assert parsed.defects == []
            assert parsed.kind == "customer"
            earlier.append(mail.message_id)


def test_generate__subjects_decode() -> None:
    threads = generate(400, INBOXES, seed=4)

    for thread in threads:
        opening = parse_mail(thread.mails[0].raw)
        assert opening.subject == thread.subject


def test_arrival_order__every_mail_at_least_once() -> None:
    threads = generate(1000, INBOXES, seed=6)

    order = arrival_order(threads, seed=6)

    written = {mail.message_id for thread in threads for mail in thread.mails}
    assert {mail.message_id for mail in order} == written
    assert len(order) > len(written)


def test_arrival_order__some_replies_overtake() -> None:
    threads = generate(1000, INBOXES, seed=6)

    order = arrival_order(threads, seed=6)

    seen: set[tuple[int, int]] = set()
    overtaking = 0
    for mail in order:
        if mail.position > 0 and (mail.thread, mail.position - 1) not in seen:
            overtaking += 1
        seen.add((mail.thread, mail.position))
    assert overtaking > 0
