"""Local infrastructure for ``messagehub up`` and the tests.

``LocalStack`` runs Kafka, PostgreSQL, Dovecot and an SMTP sink on
127.0.0.1 with all state in one directory. ``ManagedProcess`` is the
building block that starts and stops each server, and the service
launchers reuse it. ``read_sink`` returns the mail the SMTP sink received.
"""

from messagehub.localstack.errors import LocalStackError, ProcessStartError
from messagehub.localstack.processes import ManagedProcess, file_contains, port_is_open
from messagehub.localstack.smtp_sink import SinkMail, read_sink
from messagehub.localstack.stack import DEFAULT_STATE_ROOT, DEMO_PORT_BASE, TEST_PORT_BASE, LocalStack

__all__ = [
    "DEFAULT_STATE_ROOT",
    "DEMO_PORT_BASE",
    "TEST_PORT_BASE",
    "LocalStack",
    "LocalStackError",
    "ManagedProcess",
    "ProcessStartError",
    "SinkMail",
    "file_contains",
    "port_is_open",
    "read_sink",
]
