"""Tests of messagehub.localstack: ManagedProcess, the SMTP sink and the full stack.

The tests marked ``stack`` start a real LocalStack (Kafka, PostgreSQL,
Dovecot, SMTP sink) on port base 28000 (or MESSAGEHUB_LOCALSTACK_TEST_PORT_BASE,
so that two runs on one machine can use different ports) in a fresh state
dir under /var/tmp/messagehub, so they need root and deploy/local/install.sh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.exceptions import LoginError  # type: ignore[import-untyped]
from kafka import KafkaAdminClient  # type: ignore[import-untyped]

from messagehub.localstack import (
    DEFAULT_STATE_ROOT,
    LocalStack,
    LocalStackError,
    ManagedProcess,
    ProcessStartError,
    file_contains,
    port_is_open,
    read_sink,
)

logger = logging.getLogger(__name__)

PORT_BASE = int(os.environ.get("MESSAGEHUB_LOCALSTACK_TEST_PORT_BASE", "28000"))

MESSAGE = (
    b"From: Ada <ada@example.com>\r\n"
    b"To: support@example.org\r\n"
    b"Subject: Printer on fire\r\n"
    b"Message-ID: <fire-1@example.com>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line that starts with a dot\r\n"
    b"the printer is on fire.\r\n"
)


def python_argv(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# --- ManagedProcess -----------------------------------------------------------

# The ready marker is built at run time so that the argv echoed at the top
# of the log does not already contain it.
SLEEPER = "import time; print('sleeper' + ' up', flush=True); time.sleep(60)"


def make_sleeper(state_dir: Path, code: str = SLEEPER, timeout_s: float = 10.0) -> ManagedProcess:
    return ManagedProcess(
        "sleeper",
        python_argv(code),
        state_dir,
        ready_check=lambda: file_contains(state_dir / "sleeper.log", "sleeper up"),
        start_timeout_s=timeout_s,
    )


def test_managed_process__start_and_stop(tmp_path: Path) -> None:
    process = make_sleeper(tmp_path)

    process.start()
    pid = process.pid
    assert pid is not None
    assert process.is_running()
    assert process.pid_path.read_text().strip() == str(pid)
    assert file_contains(process.log_path, "sleeper up")

    process.stop(timeout_s=5)
    assert not process.is_running()
    assert process.pid is None
    assert not process.pid_path.exists()
    assert process_gone(pid)


def test_managed_process__start_twice_keeps_pid(tmp_path: Path) -> None:
    process = make_sleeper(tmp_path)
    process.start()
    try:
        first_pid = process.pid

        # A second object plays the part of a later command that reads the pid file.
        make_sleeper(tmp_path).start()

        assert process.pid == first_pid
        assert not (tmp_path / "sleeper.log.1").exists()
    finally:
        process.stop(timeout_s=5)


def test_managed_process__restart_rotates_log(tmp_path: Path) -> None:
    process = make_sleeper(tmp_path)
    process.start()
    process.stop(timeout_s=5)

    process.start()
    process.stop(timeout_s=5)

    assert file_contains(tmp_path / "sleeper.log.1", "sleeper up")
    assert file_contains(tmp_path / "sleeper.log", "sleeper up")


def test_managed_process__exit_during_startup(tmp_path: Path) -> None:
    process = ManagedProcess(
        "crasher",
        python_argv("import sys; print('config ' + 'invalid', flush=True); sys.exit(3)"),
        tmp_path,
        ready_check=lambda: False,
        start_timeout_s=10,
    )

    with pytest.raises(ProcessStartError) as caught:
        process.start()

    assert "status 3" in str(caught.value)
    assert "config invalid" in caught.value.log_tail
    assert not process.is_running()


def test_managed_process__ready_timeout_stops_it(tmp_path: Path) -> None:
    process = ManagedProcess("waiter", python_argv("import time; time.sleep(60)"), tmp_path,
                             ready_check=lambda: False, start_timeout_s=1)

    with pytest.raises(ProcessStartError) as caught:
        process.start()

    assert "not ready after 1 s" in str(caught.value)
    assert not process.is_running()
    assert not process.pid_path.exists()


def test_managed_process__sigkill_after_stop_timeout(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('sleeper' + ' up', flush=True); time.sleep(60)"
    )
    process = make_sleeper(tmp_path, code)
    process.start()
    pid = process.pid
    assert pid is not None

    started = time.monotonic()
    process.stop(timeout_s=0.5)

    assert time.monotonic() - started < 5
    assert process_gone(pid)
    assert not process.is_running()


def test_managed_process__reused_pid_ignored(tmp_path: Path) -> None:
    # The pid file names a live process (this one) whose start time differs
    # from the recorded one, as after the kernel reused the pid.
    process = make_sleeper(tmp_path)
    process.pid_path.write_text(f"{os.getpid()}\n")
    process.start_ticks_path.write_text("1\n")
    assert not process.is_running()
    process.start_ticks_path.unlink()
    assert not process.is_running()

    process.start()
    try:
        assert process.pid not in (None, os.getpid())
    finally:
        process.stop(timeout_s=5)


def test_managed_process__port_in_use(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process = ManagedProcess("server", python_argv("pass"), tmp_path, listen_ports=(port,))

        with pytest.raises(LocalStackError, match=f"port {port} on 127.0.0.1 is already in use"):
            process.start()


# --- SMTP sink ---------------------------------------------------------------


def test_smtp_sink__stores_raw_mail_in_order(tmp_path: Path) -> None:
    port = free_port()
    mail_dir = tmp_path / "mail"
    sink = ManagedProcess(
        "smtp-sink",
        [sys.executable, "-m", "messagehub.localstack.smtp_sink", "--port", str(port), "--dir", str(mail_dir)],
        tmp_path,
        ready_check=lambda: port_is_open(port),
        start_timeout_s=20,
    )
    sink.start()
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("ada@example.com", ["support@example.org", "ops@example.org"], MESSAGE)
            client.sendmail("bob@example.com", ["support@example.org"], b"Subject: second\r\n\r\nx\r\n")
    finally:
        sink.stop(timeout_s=5)

    mails = read_sink(mail_dir)
    assert [mail.mail_from for mail in mails] == ["ada@example.com", "bob@example.com"]
    assert mails[0].rcpt_tos == ["support@example.org", "ops@example.org"]
    assert mails[0].raw == MESSAGE
    assert mails[0].message["Subject"] == "Printer on fire"
    assert mails[1].message["Subject"] == "second"
    assert mails[0].received_at <= mails[1].received_at
    assert sorted(path.name for path in mail_dir.iterdir()) == ["1.eml", "1.json", "2.eml", "2.json"]


def test_smtp_sink__rejects_non_loopback_host(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "messagehub.localstack.smtp_sink", "--host", "0.0.0.0", "--port", "2525",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )

    assert result.returncode == 2
    assert "loopback addresses only" in result.stderr


def test_read_sink__missing_dir_is_empty(tmp_path: Path) -> None:
    assert read_sink(tmp_path / "absent") == []


# --- LocalStack ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    DEFAULT_STATE_ROOT.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="test-localstack-", dir=DEFAULT_STATE_ROOT))
    local_stack = LocalStack(state_dir, PORT_BASE)

    try:
        started = time.monotonic()
        local_stack.start()
        logger.info("localstack cold start took %.1f s", time.monotonic() - started)
        yield local_stack
    finally:
        local_stack.wipe()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def running_stack(stack: LocalStack) -> LocalStack:
    # Restarts the stack when an earlier test stopped it; a no-op otherwise.
    stack.start()
    return stack


def our_ports(stack: LocalStack) -> list[int]:
    return [
        PORT_BASE + 92, stack.kafka_controller_port, PORT_BASE + 432,
        stack.imap_port, stack.imaps_port, stack.smtp_sink_port,
    ]


def listeners() -> list[tuple[str, int, str]]:
    """Return (address, port, process info) for every listening TCP socket."""
    output = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    result = []
    for line in output.splitlines():
        fields = line.split()
        address, port = fields[3].rsplit(":", 1)
        result.append((address, int(port), " ".join(fields[5:])))
    return result


def process_group_members(leader_pids: set[int]) -> set[int]:
    members = set()
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) in leader_pids:
            members.add(int(stat_path.parent.name))
    return members


@pytest.mark.stack
def test_stack__addresses(running_stack: LocalStack) -> None:
    assert running_stack.kafka_bootstrap == f"127.0.0.1:{PORT_BASE + 92}"
    assert running_stack.kafka_controller_port == PORT_BASE + 93
    assert running_stack.database_url.startswith("postgresql://messagehub:")
    assert running_stack.database_url.endswith(f"@127.0.0.1:{PORT_BASE + 432}/messagehub")
    assert running_stack.imap_host == "127.0.0.1"
    assert running_stack.imap_port == PORT_BASE + 143
    assert running_stack.imaps_port == PORT_BASE + 993
    assert running_stack.smtp_sink_port == PORT_BASE + 25
    assert running_stack.imap_ca_file.is_file()


@pytest.mark.stack
def test_stack__stack_json(running_stack: LocalStack) -> None:
    settings = json.loads((running_stack.state_dir / "stack.json").read_text())

    assert settings["kafka_bootstrap"] == running_stack.kafka_bootstrap
    assert settings["database_url"] == running_stack.database_url
    assert settings["imaps_port"] == running_stack.imaps_port
    assert settings["sink_dir"] == str(running_stack.sink_dir)


@pytest.mark.stack
def test_stack__status_all_running(running_stack: LocalStack) -> None:
    status = running_stack.status()

    assert set(status) == {"kafka", "postgresql", "dovecot", "smtp-sink"}
    for name, entry in status.items():
        assert entry["running"], name
        assert isinstance(entry["pid"], int), name
    assert status["kafka"]["address"] == f"127.0.0.1:{PORT_BASE + 92}"
    assert status["postgresql"]["address"] == f"127.0.0.1:{PORT_BASE + 432}"
    assert status["dovecot"]["address"] == f"127.0.0.1:{PORT_BASE + 143}"
    assert status["smtp-sink"]["address"] == f"127.0.0.1:{PORT_BASE + 25}"


@pytest.mark.stack
def test_kafka__describe_and_create_topic(running_stack: LocalStack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=running_stack.kafka_bootstrap, request_timeout_ms=10000)
    try:
        cluster = admin.describe_cluster()
        result = admin.create_topics({"localstack.test": {"num_partitions": 2, "replication_factor": 1}})
        topics = admin.list_topics()
    finally:
        admin.close()

    assert [broker["port"] for broker in cluster["brokers"]] == [PORT_BASE + 92]
    assert result["topics"][0]["error_code"] == 0
    assert "localstack.test" in topics


@pytest.mark.stack
def test_postgresql__select_one(running_stack: LocalStack) -> None:
    with psycopg.connect(running_stack.database_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1, current_user, current_database()").fetchone()

    assert row == (1, "messagehub", "messagehub")


@pytest.mark.stack
def test_dovecot__login_append_fetch_both_ports(running_stack: LocalStack) -> None:
    running_stack.add_imap_user("ada", "correct horse battery staple")
    tls_context = ssl.create_default_context(cafile=str(running_stack.imap_ca_file))
    connections = [
        ("imap", running_stack.imap_port, False, None),
        ("imaps", running_stack.imaps_port, True, tls_context),
    ]

    for label, port, use_tls, context in connections:
        client = IMAPClient(running_stack.imap_host, port=port, ssl=use_tls, ssl_context=context, timeout=10)
        try:
            client.login("ada", "correct horse battery staple")
            client.append("INBOX", MESSAGE)
            client.select_folder("INBOX")
            uids = client.search(["HEADER", "Message-ID", "<fire-1@example.com>"])
            fetched = client.fetch(uids[-1:], [b"BODY.PEEK[]"])
        finally:
            client.logout()

        assert list(fetched.values())[0][b"BODY[]"] == MESSAGE, label


@pytest.mark.stack
def test_dovecot__imaps_rejects_unknown_ca(running_stack: LocalStack) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        IMAPClient(running_stack.imap_host, port=running_stack.imaps_port, ssl=True,
                   ssl_context=ssl.create_default_context(), timeout=10)


@pytest.mark.stack
def test_dovecot__wrong_password_rejected(running_stack: LocalStack) -> None:
    running_stack.add_imap_user("bob", "first password")
    running_stack.add_imap_user("bob", "second password")
    client = IMAPClient(running_stack.imap_host, port=running_stack.imap_port, ssl=False, timeout=10)
    try:
        with pytest.raises(LoginError):
            client.login("bob", "first password")
    finally:
        client.shutdown()

    client = IMAPClient(running_stack.imap_host, port=running_stack.imap_port, ssl=False, timeout=10)
    client.login("bob", "second password")
    client.logout()


@pytest.mark.stack
def test_smtp_sink__send_and_read(running_stack: LocalStack) -> None:
    before = len(read_sink(running_stack.sink_dir))

    with smtplib.SMTP(running_stack.smtp_sink_host, running_stack.smtp_sink_port, timeout=10) as client:
        client.sendmail("ada@example.com", ["support@example.org"], MESSAGE)

    mails = read_sink(running_stack.sink_dir)
    assert len(mails) == before + 1
    assert mails[-1].raw == MESSAGE
    assert mails[-1].rcpt_tos == ["support@example.org"]
    assert mails[-1].message["Message-ID"] == "<fire-1@example.com>"


@pytest.mark.stack
def test_stack__listens_on_loopback_only(running_stack: LocalStack) -> None:
    sockets = listeners()

    for port in our_ports(running_stack):
        addresses = [address for address, listen_port, _ in sockets if listen_port == port]
        assert addresses == ["127.0.0.1"], f"port {port}: {addresses}"

    # No other socket of our processes (or their children) listens anywhere else.
    leaders = {entry["pid"] for entry in running_stack.status().values()}
    members = process_group_members(leaders)
    for address, port, process in sockets:
        owners = {int(pid) for pid in _pids_in(process)}
        if owners & members:
            assert address == "127.0.0.1", f"{process} listens on {address}:{port}"


def _pids_in(process_info: str) -> list[str]:
    return [part.split("=", 1)[1] for part in process_info.replace(")", ",").split(",") if part.startswith("pid=")]


@pytest.mark.stack
def test_stack__stop_ends_processes_and_keeps_data(running_stack: LocalStack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=running_stack.kafka_bootstrap)
    try:
        admin.create_topics({"localstack.kept": {"num_partitions": 1, "replication_factor": 1}})
    finally:
        admin.close()
    with psycopg.connect(running_stack.database_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (id int)")
    pids = [entry["pid"] for entry in running_stack.status().values()]
    members = process_group_members(set(pids))

    running_stack.stop()

    for pid in members:
        assert process_gone(pid), pid
    assert not any(entry["running"] for entry in running_stack.status().values())
    assert not any(port_is_open(port) for port in our_ports(running_stack))

    started = time.monotonic()
    running_stack.start()
    logger.info("localstack warm restart took %.1f s", time.monotonic() - started)

    admin = KafkaAdminClient(bootstrap_servers=running_stack.kafka_bootstrap)
    try:
        assert "localstack.kept" in admin.list_topics()
    finally:
        admin.close()
    with psycopg.connect(running_stack.database_url) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)


@pytest.mark.stack
def test_stack__other_port_base_rejected(running_stack: LocalStack) -> None:
    other = LocalStack(running_stack.state_dir, PORT_BASE + 1000)

    with pytest.raises(LocalStackError, match=f"port base {PORT_BASE}"):
        other.start()


def test_stack__invalid_port_base() -> None:
    with pytest.raises(ValueError, match="invalid port_base"):
        LocalStack(Path("unused"), 80)

