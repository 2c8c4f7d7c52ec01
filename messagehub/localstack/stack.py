"""The local stack: Kafka, PostgreSQL, Dovecot and an SMTP sink on loopback.

``messagehub up`` / ``messagehub down`` and the test fixtures use
``LocalStack`` to run the infrastructure the services need, with all state
in one directory. Ports are fixed offsets from a port base, so several
stacks (demo, tests) can run side by side:

=========================  ==============
Kafka bootstrap            port_base + 92
Kafka controller           port_base + 93
PostgreSQL                 port_base + 432
IMAP (plaintext)           port_base + 143
IMAPS (implicit TLS)       port_base + 993
SMTP sink                  port_base + 25
=========================  ==============

State dir layout: ``stack.json`` (the addresses, written at start) and one
subdirectory per component (``kafka``, ``postgresql``, ``dovecot``,
``smtp-sink``), each with that component's config, data, pid file and logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from messagehub.localstack._files import check_reachable_by, write_atomically
from messagehub.localstack.dovecot import MAIL_USER, DovecotServer
from messagehub.localstack.errors import LocalStackError
from messagehub.localstack.kafka import DEFAULT_LIBS_DIR, KafkaBroker
from messagehub.localstack.postgres import OS_USER as POSTGRES_OS_USER
from messagehub.localstack.postgres import PostgresServer
from messagehub.localstack.processes import ManagedProcess, port_is_open

logger = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/var/tmp/messagehub")
DEMO_PORT_BASE = 17000
TEST_PORT_BASE = 27000
HOST = "127.0.0.1"
STACK_FILE = "stack.json"
# The highest offset (IMAPS) must still be a valid port.
_MAX_PORT_OFFSET = 993
SINK_START_TIMEOUT_S = 30.0
SINK_STOP_TIMEOUT_S = 10.0


class Component(Protocol):
    """Interface of an infrastructure server, as the stack uses it."""

    name: str
    process: ManagedProcess

    @property
    def address(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SmtpSink:
    """The SMTP sink server (``messagehub.localstack.smtp_sink``) run as a process."""

    name = "smtp-sink"

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        argv = [
            sys.executable, "-m", "messagehub.localstack.smtp_sink",
            "--host", HOST, "--port", str(port), "--dir", str(self.mail_dir),
        ]
        self.process = ManagedProcess(
            self.name,
            argv,
            root,
            ready_check=lambda: port_is_open(port),
            start_timeout_s=SINK_START_TIMEOUT_S,
            listen_ports=(port,),
        )

    @property
    def mail_dir(self) -> Path:
        """Directory of the received ``<seq>.eml`` and ``<seq>.json`` files."""
        return self.root / "mail"

    @property
    def address(self) -> str:
        """SMTP address as ``host:port``."""
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        """Start the sink unless it is running."""
        self.process.start()

    def stop(self) -> None:
        """Stop the sink."""
        self.process.stop(SINK_STOP_TIMEOUT_S)


class LocalStack:
    """The four infrastructure servers of one local stack, with state in ``state_dir``.

    Every server listens on 127.0.0.1 only. ``start()`` and ``stop()`` are
    idempotent, and data (Kafka topics, the database, mailboxes, received
    mail) survives a stop and start of the same state dir.
    """

    def __init__(self, state_dir: Path, port_base: int, *, kafka_libs_dir: Path = DEFAULT_LIBS_DIR) -> None:
        if not 1024 <= port_base <= 65535 - _MAX_PORT_OFFSET:
            raise ValueError(f"invalid port_base {port_base!r}: it must be between 1024 and {65535 - _MAX_PORT_OFFSET}")
        self.state_dir = state_dir.absolute()
        self.port_base = port_base
        self._kafka = KafkaBroker(self.state_dir / "kafka", port_base + 92, port_base + 93, kafka_libs_dir)
        self._postgres = PostgresServer(self.state_dir / "postgresql", port_base + 432)
        self._dovecot = DovecotServer(self.state_dir / "dovecot", port_base + 143, port_base + 993)
        self._sink = SmtpSink(self.state_dir / "smtp-sink", port_base + 25)

    @classmethod
    def load(cls, state_dir: Path) -> LocalStack:
        """Return the stack whose ``stack.json`` is in ``state_dir``, with its port base."""
        settings = _read_stack_file(state_dir)
        if settings is None:
            raise LocalStackError(f"localstack: {state_dir / STACK_FILE} not found: start the stack first")
        return cls(state_dir, int(settings["port_base"]))

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka bootstrap servers, ``127.0.0.1:<port_base + 92>``."""
        return self._kafka.address

    @property
    def kafka_controller_port(self) -> int:
        """Port of the KRaft controller listener."""
        return self._kafka.controller_port

    @property
    def database_url(self) -> str:
        """URL of the ``messagehub`` database; the password is created on first use."""
        self._prepare_state_dir()
        return self._postgres.database_url()

    @property
    def imap_host(self) -> str:
        """Host of the IMAP server."""
        return HOST

    @property
    def imap_port(self) -> int:
        """Plaintext IMAP port."""
        return self._dovecot.imap_port

    @property
    def imaps_port(self) -> int:
        """Implicit-TLS IMAP port."""
        return self._dovecot.imaps_port

    @property
    def imap_ca_file(self) -> Path:
        """The self-signed certificate of the IMAPS port, to load as a CA file."""
        return self._dovecot.cert_path

    @property
    def smtp_sink_host(self) -> str:
        """Host of the SMTP sink."""
        return HOST

    @property
    def smtp_sink_port(self) -> int:
        """Port of the SMTP sink."""
        return self._sink.port

    @property
    def sink_dir(self) -> Path:
        """Directory where the SMTP sink stores mail; read it with ``read_sink``."""
        return self._sink.mail_dir

    def start(self) -> None:
        """Start every component that is not running, in parallel, and wait until all are ready.

        On failure the components that did start keep running; the error
        names each failed component with its log tail.
        """
        started_at = time.monotonic()
        self._prepare_state_dir()
        self._run_on_all("start", lambda component: component.start())
        logger.info("localstack: started in %.1f s, state in %s", time.monotonic() - started_at, self.state_dir)

    def stop(self) -> None:
        """Stop every running component, in parallel."""
        self._run_on_all("stop", lambda component: component.stop())

    def status(self) -> dict[str, dict[str, Any]]:
        """Return ``{name: {"running": bool, "address": "127.0.0.1:PORT", "pid": int | None}}``."""
        result = {}
        for component in self._components():
            pid = component.process.pid
            result[component.name] = {"running": pid is not None, "address": component.address, "pid": pid}
        return result

    def add_imap_user(self, login: str, password: str) -> None:
        """Create a mailbox user, or set a new password; no restart needed."""
        self._prepare_state_dir()
        self._dovecot.add_user(login, password)

    def wipe(self) -> None:
        """Stop the stack and delete its state dir with all data."""
        if not self.state_dir.exists():
            return
        if not (self.state_dir / STACK_FILE).exists() and any(self.state_dir.iterdir()):
            raise LocalStackError(
                f"localstack: {self.state_dir} has no {STACK_FILE} and is not empty, so it was not deleted: "
                "check the path and delete it by hand"
            )

        self.stop()
        shutil.rmtree(self.state_dir)
        logger.info("localstack: deleted %s", self.state_dir)

    def _components(self) -> list[Component]:
        # Kafka comes first because its JVM takes the longest to start.
        return [self._kafka, self._postgres, self._dovecot, self._sink]

    def _run_on_all(self, action: str, operation: Callable[[Component], None]) -> None:
        components = self._components()
        with ThreadPoolExecutor(max_workers=len(components), thread_name_prefix="localstack") as pool:
            futures = [(component, pool.submit(operation, component)) for component in components]
            failures = [(component, future.exception()) for component, future in futures if future.exception()]

        if failures:
            details = "\n\n".join(str(error) for _, error in failures)
            names = ", ".join(component.name for component, _ in failures)
            raise LocalStackError(
                f"localstack: {action} failed for {names}; the other components were left as they are:\n\n{details}"
            ) from failures[0][1]

    def _prepare_state_dir(self) -> None:
        settings = _read_stack_file(self.state_dir)
        if settings is not None and int(settings["port_base"]) != self.port_base:
            # Kafka's formatted data dir records its controller port.
            raise LocalStackError(
                f"localstack: {self.state_dir} belongs to a stack with port base {settings['port_base']}, "
                f"not {self.port_base}: use that port base, or wipe the state dir first"
            )

        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)

        # Fail before any server starts when a worker user cannot reach the files.
        if os.geteuid() == 0:
            check_reachable_by(self.state_dir, POSTGRES_OS_USER, "postgresql")
            check_reachable_by(self.state_dir, MAIL_USER, "dovecot")

        self._write_stack_file()

    def _write_stack_file(self) -> None:
        # The file contains the database password, so only its owner may read it.
        settings = {
            "state_dir": str(self.state_dir),
            "port_base": self.port_base,
            "kafka_bootstrap": self.kafka_bootstrap,
            "kafka_controller_port": self.kafka_controller_port,
            "database_url": self._postgres.database_url(),
            "imap_host": self.imap_host,
            "imap_port": self.imap_port,
            "imaps_port": self.imaps_port,
            "imap_ca_file": str(self.imap_ca_file),
            "smtp_sink_host": self.smtp_sink_host,
            "smtp_sink_port": self.smtp_sink_port,
            "sink_dir": str(self.sink_dir),
        }
        write_atomically(self.state_dir / STACK_FILE, (json.dumps(settings, indent=2) + "\n").encode(), mode=0o600)


def _read_stack_file(state_dir: Path) -> dict[str, Any] | None:
    try:
        settings: dict[str, Any] = json.loads((state_dir / STACK_FILE).read_text())
    except FileNotFoundError:
        return None
    return settings
