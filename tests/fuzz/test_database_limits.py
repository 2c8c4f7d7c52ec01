"""Hostile sizes against PostgreSQL's limits: what the pipeline stores stays indexable.

A mail with a Subject of a few kilobytes made the router write a subject key
that its btree index cannot hold (program limit exceeded), and the batch
loop treated that error like a database outage: it retried the batch
forever and the inbox's partition stood still.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest

from messagehub.worker import is_transient
from services.router import threader


def test_subject_key__long_subject_bounded() -> None:
    key = threader.subject_key("ann@example.org", "x" * 5000)

    assert key is not None
    assert len(key.encode()) <= threader.MAX_SUBJECT_KEY_BYTES


def test_subject_key__long_subjects_stay_distinct() -> None:
    first = threader.subject_key("ann@example.org", "a" * 5000)
    second = threader.subject_key("ann@example.org", "a" * 4999 + "b")

    assert first != second
    assert first == threader.subject_key("ann@example.org", "Re: " + "a" * 5000)


def test_subject_key__short_subject_readable() -> None:
    assert threader.subject_key("Ann@Example.org", "Re: Parcel") == "ann@example.org\nparcel"


@pytest.mark.parametrize("error", [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.CannotConnectNow("the database system is starting up"),
    psycopg.errors.TooManyConnections("too many clients already"),
])
def test_is_transient__outages_retried(error: psycopg.OperationalError) -> None:
    assert is_transient(error) is True


def test_is_transient__program_limit_not_retried() -> None:
    error = psycopg.errors.ProgramLimitExceeded(
        "index row size 5232 exceeds btree version 4 maximum 2704")

    assert is_transient(error) is False
