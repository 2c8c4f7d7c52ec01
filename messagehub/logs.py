"""Logging set-up shared by every messagehub process.

Services call :func:`setup` first thing in ``main()``. Lines go to standard
error, one per record, starting with time, level and logger name, so that
``kubectl logs`` and the local stack's log files read the same. Messages
themselves begin with the ids an operator searches for (inbox, Message-ID,
topic/partition/offset) and never carry a password or a mail body.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries that log every connection attempt at INFO drown the mail lines.
_QUIET_LOGGERS = ("kafka", "aiokafka", "faust", "mode", "aiosmtpd", "mail.log", "asyncio")


def setup(level: str = "INFO") -> None:
    """Send log records to standard error in the messagehub format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
