"""Threading decisions: which keys are looked up, in which order."""

from __future__ import annotations

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
