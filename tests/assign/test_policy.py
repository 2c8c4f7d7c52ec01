"""Who may get an automatic answer, and which one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.assign.policy import (GREETING, OUT_OF_HOURS, automatic_answer, is_assignable,
                                    is_unattended_address, may_send_automatic_mail)


@pytest.mark.parametrize("address", [
    "noreply@shop.example.com", "no-reply@shop.example.com", "do-not-reply@x.example",
    "MAILER-DAEMON@mx.example.net", "postmaster@example.org", "bounces+123@lists.example.org",
    "notifications@github.example.com", "", None, "not-an-address",
])
def test_is_unattended_address__true_for_machines(address: str | None) -> None:
    assert is_unattended_address(address)


@pytest.mark.parametrize("address", [
    "alice@example.org", "noreen@example.org", "replyguy@example.org", "post@example.org",
])
def test_is_unattended_address__false_for_people(address: str) -> None:
    assert not is_unattended_address(address)


@pytest.mark.parametrize("kind", ["auto_reply", "bounce", "list", "forwarding_confirmation"])
def test_may_send_automatic_mail__never_to_machine_mail(kind: str) -> None:
    assert not may_send_automatic_mail(kind, "alice@example.org")


def test_may_send_automatic_mail__customer_from_person() -> None:
    assert may_send_automatic_mail("customer", "alice@example.org")


# --- automatic_answer ------------------------------------------------------------------

ANSWER_DEFAULTS = {"message_kind": "customer", "contact_email": "alice@example.org",
                   "first_message": True, "hours_open": None, "greeting_enabled": True,
                   "out_of_hours_enabled": True, "agent_replied_recently": False}


def answer(**changes: object) -> str | None:
    return automatic_answer(**{**ANSWER_DEFAULTS, **changes})  # type: ignore[arg-type]


def test_automatic_answer__greeting_without_hours() -> None:
    assert answer() == GREETING


def test_automatic_answer__greeting_inside_hours() -> None:
    assert answer(hours_open=True) == GREETING


def test_automatic_answer__note_replaces_greeting_outside_hours() -> None:
    assert answer(hours_open=False) == OUT_OF_HOURS


def test_automatic_answer__greeting_when_note_off() -> None:
    assert answer(hours_open=False, out_of_hours_enabled=False) == GREETING


def test_automatic_answer__nothing_when_both_off() -> None:
    assert answer(hours_open=False, out_of_hours_enabled=False, greeting_enabled=False) is None


def test_automatic_answer__later_mail_no_greeting() -> None:
    assert answer(first_message=False, hours_open=True) is None


def test_automatic_answer__later_mail_note_outside_hours() -> None:
    assert answer(first_message=False, hours_open=False) == OUT_OF_HOURS


def test_automatic_answer__no_note_after_recent_agent_reply() -> None:
    assert answer(first_message=False, hours_open=False, agent_replied_recently=True) is None


@pytest.mark.parametrize("kind", ["auto_reply", "bounce", "list", "forwarding_confirmation"])
@pytest.mark.parametrize("hours_open", [None, True, False])
def test_automatic_answer__never_to_machine_mail(kind: str, hours_open: bool | None) -> None:
    assert answer(message_kind=kind, hours_open=hours_open) is None


@pytest.mark.parametrize("hours_open", [None, True, False])
def test_automatic_answer__never_to_noreply(hours_open: bool | None) -> None:
    assert answer(contact_email="no-reply@shop.example.com", hours_open=hours_open) is None


@given(st.sampled_from(["customer", "auto_reply", "bounce", "list", None]),
       st.sampled_from(["alice@example.org", "noreply@example.org", None]),
       st.booleans(), st.sampled_from([None, True, False]), st.booleans(), st.booleans(),
       st.booleans())
def test_automatic_answer__greeting_only_when_open(
        kind: str | None, address: str | None, first: bool, hours_open: bool | None,
        greeting: bool, note: bool, replied: bool) -> None:
    result = automatic_answer(message_kind=kind, contact_email=address, first_message=first,
                              hours_open=hours_open, greeting_enabled=greeting,
                              out_of_hours_enabled=note, agent_replied_recently=replied)

    if result is not None:
        assert may_send_automatic_mail(kind, address)
    if result == GREETING:
        assert first and greeting
        assert hours_open is not False or not note
    if result == OUT_OF_HOURS:
        assert hours_open is False and note and not replied


def test_is_assignable__customer_only() -> None:
    assert is_assignable("customer")
    assert not is_assignable("auto_reply")
    assert not is_assignable("list")
    assert not is_assignable("bounce")
