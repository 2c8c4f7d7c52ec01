"""Exceptions raised by the local stack.

``LocalStack`` and ``ManagedProcess`` raise these so that ``messagehub up``
and the test fixtures can catch one root class and show its message, which
states what failed and what to do next.
"""

from __future__ import annotations


class LocalStackError(RuntimeError):
    """A local stack component could not be prepared, started or stopped."""


class ProcessStartError(LocalStackError):
    """A managed process exited during startup or did not become ready in time.

    ``log_tail`` contains the last lines of the process logs, which the
    message also includes.
    """

    def __init__(self, name: str, reason: str, log_tail: str) -> None:
        super().__init__(f"{name}: {reason}\n--- last log lines ---\n{log_tail}")
        self.name = name
        self.reason = reason
        self.log_tail = log_tail
