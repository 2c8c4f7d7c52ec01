"""The parsing ceiling: mails per second of the router's parser alone.

The router parses every mail with :func:`services.router.mime.parse_mail`
before it threads and stores it, so no pipeline on this machine can go
faster than the parser. :func:`measure_ceiling` runs it over the same mails
the benchmark sends, for ``rounds`` rounds, in one process on one core,
because one router process also handles its partitions one mail at a time.
It returns the best round's rate, because other work on a shared machine
only ever slows a round down, and the mean time per mail of each shape.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from bench.mailgen import GeneratedMail
from services.router.mime import parse_mail


@dataclass(frozen=True)
class Ceiling:
    mails_per_s: float  # the best round: other work on the machine only slows a round down
    rounds: list[float]
    mails: int
    mean_size_kb: float
    # shape -> mean milliseconds per mail of that shape
    ms_per_shape: dict[str, float]


def measure_ceiling(mails: Sequence[GeneratedMail], *, rounds: int = 3) -> Ceiling:
    """Parse ``mails`` ``rounds`` times; return the parser's rate on them."""
    if not mails:
        raise ValueError("measuring the parsing ceiling needs at least one mail")
    rates: list[float] = []
    per_shape: dict[str, list[float]] = defaultdict(list)

    for _ in range(max(1, rounds)):
        started = time.perf_counter()
        for mail in mails:
            mail_started = time.perf_counter()
            parse_mail(mail.raw)
            per_shape[mail.shape].append(time.perf_counter() - mail_started)
        rates.append(len(mails) / (time.perf_counter() - started))

    return Ceiling(
        mails_per_s=round(max(rates), 1),
        rounds=[round(rate, 1) for rate in rates],
        mails=len(mails),
        mean_size_kb=round(sum(len(m.raw) for m in mails) / len(mails) / 1024, 1),
        ms_per_shape={shape: round(1000 * statistics.mean(times), 2)
                      for shape, times in sorted(per_shape.items())})
