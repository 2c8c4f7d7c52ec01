"""Parse one monster mail in a process of its own and report its peak memory.

``test_parse_fuzz`` runs ``python -m tests.fuzz.measure BUILDER SIZE``. The
child builds the mail with the named builder of ``mutations``, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux 4.0 and later),
parses it, and prints one JSON object: input size, peak RSS above the
resident size before parsing (this counts the allocations of C and Rust
extensions too, which tracemalloc misses), seconds, and the checks the test
asserts on. A fresh process keeps the figure free of what earlier tests left
on the heap, and runs at full speed, unlike under tracemalloc.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None, f"{field} missing from /proc/self/status"
    return int(match.group(1))


def measure(builder: str, size: int) -> dict[str, Any]:
    """Build and parse one mail; return the figures the test checks."""
    from services.router.mime import parse_mail
    from tests.fuzz import mutations
    from tests.fuzz.test_parse_fuzz import storable_problems

    raw = getattr(mutations, builder)(size)
    Path("/proc/self/clear_refs").write_text("5")
    before_kib = _status_kib("VmRSS")

    started = time.perf_counter()
    mail = parse_mail(raw)
    seconds = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")

    return {
        "input_bytes": len(raw),
        "peak_rss_bytes": (peak_kib - before_kib) * 1024,
        "seconds": round(seconds, 2),
        "problems": list(storable_problems(mail)),
        "attachments": len(mail.attachments),
        "text_chars": len(mail.text),
        "text_start": mail.text[:40],
        "subject_start": mail.subject[:40],
        "defects": mail.defects[:5],
    }


if __name__ == "__main__":
    json.dump(measure(sys.argv[1], int(sys.argv[2])), sys.stdout)
