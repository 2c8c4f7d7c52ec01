"""The ingest test harness: real Dovecot, PostgreSQL and Kafka, driven in-process.

Stack tests of the IMAP sync run :class:`FolderSync` threads in the test
process against the session stack, so they can shorten intervals, wrap the
backend to simulate a crash, and read what was published. :class:`IngestRig`
is the event loop with the pool, producer and intake that the ingest service
would have; :class:`TcpProxy` sits between a client and Dovecot and can
freeze its connections, drop them, rewrite the server's bytes and record
what the client sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import select
import socket
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient import exceptions as imap_errors

from messagehub import codec, db, stackctl, topics
from services.ingest.imap.backend import LoopBackend
from services.ingest.imap.connection import ConnectOptions, ImapAccount
from services.ingest.imap.folder_sync import FolderSync, SyncOptions
from services.ingest.imap.state import SyncState
from services.ingest.intake import MailIntake
from services.ingest.publisher import MailPublisher
from services.ingest.store import PostgresRawMailStore
from tests.conftest import TEST_PORT_BASE, TEST_STATE_DIR

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

T = TypeVar("T")

# Bulk tests publish here, not on mail.received, so that thousands of test
# mails do not queue in front of the router for the tests that follow.
BULK_TOPIC = "tests.ingest.bulk"


class IngestRig:
    """An event loop in a thread with the ingest service's pool, producer and intake."""

    def __init__(self, stack: dict[str, Any]) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.pool = self.run(db.open_pool(stack["database_url"], max_size=6))
        self.publisher = MailPublisher(stack["kafka_bootstrap"])
        self.intake = MailIntake(store=PostgresRawMailStore(self.pool), publisher=self.publisher)
        stackctl_create_topic(stack["kafka_bootstrap"], BULK_TOPIC)
        self.bulk_publisher = MailPublisher(stack["kafka_bootstrap"], topic=BULK_TOPIC)
        self.bulk_intake = MailIntake(store=PostgresRawMailStore(self.pool),
                                      publisher=self.bulk_publisher)
        self.state = SyncState(self.pool, replica="tests")

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def backend(self, inbox_id: str, *, max_attempts: int = 3, retry_base_seconds: float = 60.0,
                cursor_name: str = "live", bulk: bool = False) -> LoopBackend:
        """Return a sync backend; ``bulk`` publishes on :data:`BULK_TOPIC` instead."""
        return LoopBackend(loop=self.loop, state=self.state,
                           intake=self.bulk_intake if bulk else self.intake,
                           inbox_id=inbox_id, cursor_name=cursor_name,
                           source="imap" if cursor_name == "live" else "import",
                           max_attempts=max_attempts, retry_base_seconds=retry_base_seconds)

    def close(self) -> None:
        self.publisher.close()
        self.bulk_publisher.close()
        self.run(self.pool.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class SyncThread:
    """A :class:`FolderSync` running in a thread, stopped and joined by :meth:`stop`."""

    def __init__(self, sync: FolderSync) -> None:
        self.sync = sync
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sync.run()
        except BaseException as exc:  # noqa: BLE001 - kept for the test to inspect
            self.error = exc

    def stop(self, timeout: float = 20.0) -> None:
        self.sync.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sync thread did not stop"


# --- Dovecot ---------------------------------------------------------------

def new_imap_user(prefix: str = "user") -> tuple[str, str]:
    """Create a Dovecot user with a random password; return (login, password) once it works."""
    login = f"{prefix}-{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    local = stackctl.local_stack(TEST_STATE_DIR, TEST_PORT_BASE)
    local.add_imap_user(login, password)

    # Dovecot rereads its passwd-file when it sees it changed, which two
    # writes within one second can hide; writing again makes it notice.
    deadline = time.monotonic() + 10
    while True:
        try:
            with IMAPClient("127.0.0.1", port=local.imap_port, ssl=False, timeout=10) as client:
                client.login(login, password)
            return login, password
        except imap_errors.LoginError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.1)
            local.add_imap_user(login, password)


def imap_port(stack: dict[str, Any], name: str = "imap") -> int:
    return int(stack[name].rsplit(":", 1)[1])


def mailbox_client(stack: dict[str, Any], login: str, password: str) -> IMAPClient:
    """Return a plaintext client logged in to Dovecot, to prepare and change mailboxes."""
    client = IMAPClient("127.0.0.1", port=imap_port(stack), ssl=False, timeout=30)
    client.login(login, password)
    return client


def doveadm(stack: dict[str, Any], *args: str) -> str:
    """Run doveadm against the stack's Dovecot; return its output."""
    result = subprocess.run(["doveadm", "-c", stack["dovecot_config"], *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def account(stack: dict[str, Any], inbox_id: str, login: str, password: str, *,
            port: int | None = None, security: str = "tls", **changes: Any) -> ImapAccount:
    """Return an account on the stack's Dovecot: IMAPS unless told otherwise."""
    default_port = imap_port(stack, "imaps") if security == "tls" else imap_port(stack)
    base = ImapAccount(inbox_id=inbox_id, host="127.0.0.1", port=port or default_port,
                       username=login, password=password, security=security, start_at=None)
    return dataclasses.replace(base, **changes)


def fast_options(stack: dict[str, Any], **changes: Any) -> SyncOptions:
    """Return sync options with short intervals, for tests that wait on the sync."""
    options = SyncOptions(connect=ConnectOptions(connect_timeout_seconds=5,
                                                 read_timeout_seconds=10,
                                                 ca_file=stack["tls_ca_file"]),
                          idle_reissue_seconds=30, poll_interval_seconds=1,
                          reconnect_first_seconds=0.2, reconnect_max_seconds=2,
                          auth_retry_seconds=2, retry_base_seconds=1)
    return dataclasses.replace(options, **changes)


def mail(message_id: str, subject: str = "Test mail", body: str = "Hello.",
         sender: str = "Ann Example <ann@example.org>") -> bytes:
    return (f"From: {sender}\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: Mon, 11 Mar 2024 09:00:00 +0100\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
            ).encode()


def scenario_messages(path: Path) -> dict[str, bytes]:
    """Return the messages of a case scenario file by name (M1, M2...), with CRLF line ends."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"----- BEGIN MESSAGE (\w+) -----\n(.*?)----- END MESSAGE \1 -----",
                       text, flags=re.DOTALL)
    return {name: body.replace("\n", "\r\n").encode() for name, body in found}


# --- what was published and stored ----------------------------------------

def stackctl_create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests")
    try:
        if topic not in admin.list_topics():
            admin.create_topics({topic: {"num_partitions": 4, "replication_factor": 1}},
                                wait_for_metadata=True)
    finally:
        admin.close()


def published(stack: dict[str, Any], inbox_id: str,
              topic: str = topics.MAIL_RECEIVED) -> list[dict[str, Any]]:
    """Return every record of ``inbox_id`` on ``topic``, partition by partition."""
    consumer = KafkaConsumer(bootstrap_servers=stack["kafka_bootstrap"], enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p)
                      for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000).values():
                for message in batch:
                    if message.key == inbox_id.encode():
                        records.append(codec.decode(message.value)[1])
        return records
    finally:
        consumer.close()


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2,
             message: str = "condition") -> Any:
    """Return the first truthy value of ``condition()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")
        time.sleep(interval)


def wait_published(stack: dict[str, Any], inbox_id: str, count: int, *, timeout: float = 60.0,
                   topic: str = topics.MAIL_RECEIVED) -> list[dict[str, Any]]:
    """Wait until ``count`` distinct mails of the inbox are on ``topic``; return the records."""
    def enough() -> list[dict[str, Any]] | None:
        records = published(stack, inbox_id, topic)
        return records if len({r["event_id"] for r in records}) >= count else None
    records: list[dict[str, Any]] = wait_for(
        enough, timeout=timeout, interval=0.5,
        message=f"{count} mails of inbox {inbox_id} on mail.received")
    return records


def query(stack: dict[str, Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    """Run one statement; return its rows, or [] when it returns none."""
    with db.connect(stack["database_url"], autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def incoming_message_ids(stack: dict[str, Any], inbox_id: str) -> list[str]:
    rows = query(stack, "SELECT rfc_message_id FROM messages WHERE inbox_id = %s "
                        "AND direction = 'incoming' ORDER BY received_at", inbox_id)
    return [row["rfc_message_id"] for row in rows]


# --- a TCP proxy on loopback -----------------------------------------------

class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a target port, one thread pair per connection.

    ``freeze()`` makes every open connection go silent in both directions
    while its sockets stay open, as a server that hangs or a network that
    drops packets without a FIN or RST; new connections are forwarded as
    usual. ``rewrite`` is applied to the server's bytes line by line.
    ``client_bytes`` records everything clients sent.
    """

    def __init__(self, target_port: int, *,
                 rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self._target_port = target_port
        self._rewrite = rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._frozen: set[int] = set()
        self._connections: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.client_bytes = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        with self._lock:
            self._frozen.update(id(pair) for pair in self._connections)

    def drop_all(self) -> None:
        with self._lock:
            for client, server in self._connections:
                for sock in (client, server):
                    _close(sock)
            self._connections.clear()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.drop_all()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target_port))
            pair = (client, server)
            with self._lock:
                self._connections.append(pair)
            threading.Thread(target=self._pump, args=(pair, client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, server, client, True),
                             daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket], source: socket.socket,
              target: socket.socket, from_server: bool) -> None:
        pending = b""
        while not self._closed.is_set():
            if id(pair) in self._frozen:
                time.sleep(0.05)
                continue
            try:
                readable, _, _ = select.select([source], [], [], 0.05)
                if not readable:
                    continue
                chunk = source.recv(65536)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            if id(pair) in self._frozen:
                continue
            if not from_server:
                self.client_bytes.extend(chunk)
            elif self._rewrite is not None:
                pending += chunk
                end = pending.rfind(b"\r\n")
                if end < 0:
                    continue
                chunk, pending = self._rewrite(pending[:end + 2]), pending[end + 2:]
            try:
                target.sendall(chunk)
            except OSError:
                break
        for sock in (source, target):
            if id(pair) not in self._frozen:
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def iter_commands(client_bytes: bytes) -> Iterator[bytes]:
    """Yield each command line a client sent, without literal contents."""
    for line in bytes(client_bytes).split(b"\r\n"):
        if line:
            yield line
