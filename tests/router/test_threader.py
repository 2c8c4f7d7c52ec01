"""Threading decisions: which keys are looked up, in which order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from services.router import threader


def test_lookup_ids__in_reply_to_then_references_newest_first() -> None:
    ids = threader.lookup_ids(["outlook-unknown@x"], ["root@a", "second@a", "outlook-unknown@x"])

    assert ids == ["outlook-unknown@x", "second@a", "root@a"]


def test_lookup_ids__no_headers_gives_nothing() -> None:
    assert threader.lookup_ids([], []) == []


def test_reply_tokens__only_our_domain_and_prefix() -> None:
    token = "abcdefghijklmnopqrstuvwx"
    addresses = [f"reply+{token}@inbound.example.com", f"reply+{token}@other.example.com",
                 "support@inbound.example.com", f"REPLY+{token.upper()}@Inbound.Example.com"]

    assert threader.reply_tokens(addresses, "inbound.example.com") == [token]


def test_reply_tokens__rejects_malformed_token() -> None:
    addresses = ["reply+short@inbound.example.com", "reply+has spaces@inbound.example.com",
                 "reply+0189abcdefghijklmnop@inbound.example.com"]

    assert threader.reply_tokens(addresses, "inbound.example.com") == []


def test_thread_keys_of__keeps_unknown_roots() -> None:
    keys = threader.thread_keys_of("m3@a", ["m2@a"], ["root@a", "m2@a"])

    assert keys == ["m3@a", "m2@a", "root@a"]


def test_reply_address__round_trips_through_reply_tokens() -> None:
    token = "k5d7q2xz3mnbv6ca4wre"
    address = threader.reply_address(token, "inbound.example.com")

    assert threader.reply_tokens([address], "inbound.example.com") == [token]


# ---------------------------------------------------------------------------
# Subject normalization
# ---------------------------------------------------------------------------


def test_normalize_subject__strips_prefixes_and_list_tags() -> None:
    normalized = threader.normalize_subject("RE: [p5ml] Re: karie kahimi binge...help needed")

    assert normalized.text == "karie kahimi binge...help needed"
    assert normalized.is_reply


def test_normalize_subject__localized_and_counted_prefixes() -> None:
    for subject in ("AW: Angebot", "SV: Angebot", "R: Angebot", "Re[2]: Angebot",
                    "Re(3): Angebot", "Fwd: RE: Angebot", "TR: Angebot", "Ｒｅ：Angebot",
                    "回复: Angebot", "RES: Angebot"):
        assert threader.normalize_subject(subject).text == "angebot", subject


def test_normalize_subject__first_mail_is_not_a_reply() -> None:
    normalized = threader.normalize_subject("[notmuch] [PATCH 1/2] Close message file")

    assert normalized.text == "close message file"
    assert not normalized.is_reply


def test_normalize_subject__tag_alone_is_kept() -> None:
    assert threader.normalize_subject("[URGENT]").text == "[urgent]"


def test_normalize_subject__prefix_inside_word_is_kept() -> None:
    assert threader.normalize_subject("Regarding the invoice").text == "regarding the invoice"
    assert not threader.normalize_subject("Regarding the invoice").is_reply


def test_subject_key__contact_and_subject() -> None:
    assert threader.subject_key("Alice@Example.org", "Re: Parcel 4471") == (
        "alice@example.org\nparcel 4471")


def test_subject_key__empty_subject_gives_none() -> None:
    assert threader.subject_key("alice@example.org", "Re: ") is None


def test_subject_window_start__zero_days_turns_it_off() -> None:
    arrived = datetime(2024, 3, 5, tzinfo=timezone.utc)

    assert threader.subject_window_start(arrived, 0) is None
    assert threader.subject_window_start(arrived, 14) == datetime(2024, 2, 20, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------
# Reopening
# ---------------------------------------------------------------------------


def test_starts_new_conversation__only_resolved_and_older_than_setting() -> None:
    last = datetime(2024, 3, 1, tzinfo=timezone.utc)
    later = last + timedelta(days=10)

    assert threader.starts_new_conversation("resolved", last, later, 7)
    assert not threader.starts_new_conversation("resolved", last, later, 30)
    assert not threader.starts_new_conversation("open", last, later, 7)
    assert not threader.starts_new_conversation("resolved", last, later, None)


# ---------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------


def parties(senders: set[str], recipients: set[str] | None = None, list_key: str | None = None,
            failed: set[str] | None = None) -> threader.Parties:
    return threader.Parties(senders=frozenset(senders), recipients=frozenset(recipients or ()),
                            list_key=list_key,
                            failed_recipients=frozenset(failed) if failed is not None else None)


CUSTOMER_ID = threader.Candidate("c1", "c01@mail.example.org", threader.RULE_IN_REPLY_TO,
                                 ours=False)
OUR_ID = threader.Candidate("c1", "x1@messagehub.example", threader.RULE_REFERENCES, ours=True)
TOKEN = threader.Candidate("c1", "abcdefghijklmnop", threader.RULE_REPLY_TOKEN, ours=True)


def test_is_trusted__participant_sender_takes_any_key() -> None:
    for candidate in (CUSTOMER_ID, OUR_ID, TOKEN):
        assert threader.is_trusted(candidate, parties({"alice@example.org"}),
                                   frozenset({"alice@example.org"}))


def test_is_trusted__stranger_copying_a_participant_only_for_customer_ids() -> None:
    mail = parties({"mallory@example.net"}, {"alice@example.org"})
    known = frozenset({"alice@example.org"})

    assert threader.is_trusted(CUSTOMER_ID, mail, known)
    assert not threader.is_trusted(OUR_ID, mail, known)
    assert not threader.is_trusted(TOKEN, mail, known)


def test_is_trusted__stranger_alone_is_rejected() -> None:
    assert not threader.is_trusted(CUSTOMER_ID, parties({"mallory@example.net"}), frozenset())


def test_is_trusted__same_list_joins_customer_ids() -> None:
    mail = parties({"paula@example.org"}, list_key="list:dev.lists.example.org")

    assert threader.is_trusted(CUSTOMER_ID, mail, frozenset({"list:dev.lists.example.org"}))


def test_is_trusted__bounce_needs_a_failed_participant() -> None:
    bounce = parties(set(), failed={"alice@example.org"})

    assert threader.is_trusted(OUR_ID, bounce, frozenset({"alice@example.org"}))
    assert not threader.is_trusted(OUR_ID, bounce, frozenset())


def test_choose__first_trusted_wins_and_rejected_are_listed() -> None:
    other = threader.Candidate("c2", "c02@mail.example.org", threader.RULE_REFERENCES,
                               ours=False)
    chosen, rejected = threader.choose(
        [OUR_ID, other], parties({"bob@example.org"}, {"carol@example.org"}),
        {"c1": frozenset({"carol@example.org"}), "c2": frozenset({"carol@example.org"})})

    assert chosen == other
    assert rejected == [OUR_ID]


def test_is_our_id__compares_the_domain() -> None:
    assert threader.is_our_id("a1b2@MessageHub.Example", "messagehub.example")
    assert not threader.is_our_id("a1b2@messagehub.example.org", "messagehub.example")
