"""The pure decisions of the IMAP sync: batches, UID windows, waits.

:mod:`services.ingest.imap.folder_sync` calls these; they do no I/O, so the
unit tests check them without a server.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime

# Error classes after which retrying soon cannot help: the password or the
# TLS set-up has to change first.
SLOW_RETRY_CLASSES = frozenset({"auth", "tls"})
SLOW_RETRY_MAX_SECONDS = 3600.0


def plan_batches(sizes: Sequence[tuple[int, int]], *, max_count: int,
                 max_bytes: int) -> list[list[int]]:
    """Split ``(uid, size)`` pairs, in order, into FETCH batches.

    A batch has at most ``max_count`` mails and, unless one mail alone is
    larger, at most ``max_bytes``; so memory and the size of one FETCH
    response stay bounded however large the folder is.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for uid, size in sizes:
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(uid)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def uid_window(after_uid: int, uidnext: int, window: int) -> tuple[int, int] | None:
    """Return the next UID range ``(low, high)`` to search, or None when caught up.

    UIDs below UIDNEXT are never given out again under one UIDVALIDITY, so a
    range that ends below UIDNEXT is complete once searched.
    """
    low = after_uid + 1
    if low >= uidnext:
        return None
    return low, min(low + window - 1, uidnext - 1)


def first_at_or_after(count: int, key_at: Callable[[int], datetime | int | None],
                      target: datetime | int) -> int | None:
    """Return the smallest position 1..count whose key is >= ``target``, by bisection.

    ``key_at`` reads one message's key (INTERNALDATE or UID) by sequence
    number; None means the message vanished and counts as below the target.
    Keys are assumed to grow with the position, which holds for UIDs and
    nearly holds for INTERNALDATE (restored mail can be older), so at most
    log2(count) messages are read instead of the whole folder.
    """
    low, high = 1, count
    found: int | None = None
    while low <= high:
        middle = (low + high) // 2
        key = key_at(middle)
        if key is not None and key >= target:  # type: ignore[operator]
            found = middle
            high = middle - 1
        else:
            low = middle + 1
    return found


def reconnect_delay(error_class: str, failures: int, *, first_seconds: float,
                    max_seconds: float, slow_first_seconds: float) -> float:
    """Return the wait before reconnect number ``failures`` (1 for the first retry).

    The wait doubles per failure, with up to 10% jitter so that many inboxes
    of one provider do not retry in step. Authentication and TLS failures
    start at ``slow_first_seconds`` and grow up to an hour: the settings must
    change before a retry can succeed, and providers lock accounts that keep
    failing.
    """
    if error_class in SLOW_RETRY_CLASSES:
        base, ceiling = slow_first_seconds, max(SLOW_RETRY_MAX_SECONDS, slow_first_seconds)
    else:
        base, ceiling = first_seconds, max_seconds
    delay = min(ceiling, base * 2.0 ** max(0, failures - 1))
    return float(delay * (1 + random.uniform(0, 0.1)))  # noqa: S311 - jitter, not security


def retry_delay(attempts: int, base_seconds: float) -> float:
    """Return the wait before fetching a failed mail again after ``attempts`` attempts."""
    return float(base_seconds * 2.0 ** max(0, attempts - 1))


def is_new_mail(response: tuple[object, ...]) -> bool:
    """Tell whether an untagged IDLE response announces mail (``* n EXISTS``)."""
    return len(response) >= 2 and response[1] == b"EXISTS"


def is_bye(response: tuple[object, ...]) -> bool:
    """Tell whether an untagged response is ``* BYE``: the server is closing."""
    return len(response) >= 1 and response[0] == b"BYE"
