"""Who may get an automatic answer."""

from __future__ import annotations

import pytest

from services.assign.policy import is_unattended_address, may_send_automatic_mail


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
