"""Background processes with a pid file, a log file and a readiness wait.

The local stack starts Kafka, PostgreSQL, Dovecot and the SMTP sink through
``ManagedProcess``, and the launchers of the messagehub services use it too.
All state is kept in files under a state dir, so one command can start a
process and a later command (``messagehub down``) can stop it.

Liveness is read from ``/proc``, so this module works on Linux only.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from messagehub.localstack._files import write_atomically
from messagehub.localstack.errors import LocalStackError, ProcessStartError

logger = logging.getLogger(__name__)

ReadyCheck = Callable[[], bool]

_POLL_INTERVAL_S = 0.2
_KILL_WAIT_S = 5.0
_TAIL_LINES = 40
_TAIL_BYTES = 64 * 1024


class ManagedProcess:
    """One long-running program started in its own session.

    ``start()`` spawns ``argv`` unless the pid file names a live process,
    then waits until ``ready_check`` returns true. Output goes to
    ``<state_dir>/<name>.log``, the pid to ``<state_dir>/<name>.pid`` and
    the process start time to ``<name>.pid.start``, which distinguishes the
    process from an unrelated one that got the same pid later.
    At each spawn the previous log (and each of ``extra_logs``) is renamed
    to ``*.1``, so checks that search a log only see the current run.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        state_dir: Path,
        *,
        ready_check: ReadyCheck | None = None,
        start_timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        listen_ports: Sequence[int] = (),
        extra_logs: Sequence[Path] = (),
    ) -> None:
        """Describe the process; nothing starts until ``start()``.

        ``user`` runs the program as that OS user when we are root (the
        uid, gid and supplementary groups are switched before exec).
        ``listen_ports`` are checked to be free on 127.0.0.1 before a spawn.
        ``extra_logs`` are log files the program writes itself; they are
        rotated with the main log and shown in startup errors.
        """
        if not argv:
            raise ValueError(f"{name}: argv must not be empty")
        if start_timeout_s <= 0:
            raise ValueError(f"{name}: start_timeout_s must be > 0, got {start_timeout_s!r}")
        self.name = name
        self.argv = list(argv)
        self.state_dir = state_dir
        self.ready_check = ready_check
        self.start_timeout_s = start_timeout_s
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.listen_ports = tuple(listen_ports)
        self.extra_logs = tuple(extra_logs)
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid_path(self) -> Path:
        """Pid file: one decimal pid, written after the spawn."""
        return self.state_dir / f"{self.name}.pid"

    @property
    def start_ticks_path(self) -> Path:
        """The process start time from /proc/<pid>/stat, in clock ticks since boot."""
        return self.state_dir / f"{self.name}.pid.start"

    @property
    def log_path(self) -> Path:
        """File that receives the program's stdout and stderr."""
        return self.state_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """Pid of the running process, or None when it is not running."""
        pid = self._read_pid_file()
        if pid is None or not self._is_alive(pid):
            return None
        return pid

    def is_running(self) -> bool:
        """Return whether the process named by the pid file is alive."""
        return self.pid is not None

    def start(self) -> None:
        """Spawn the program unless it is running, then wait until it is ready.

        Raises ``ProcessStartError`` when the program exits during startup
        or is not ready within ``start_timeout_s`` (it is stopped then).
        """
        running_pid = self.pid
        if running_pid is not None:
            logger.debug("%s: already running with pid %d", self.name, running_pid)
            self.wait_ready()
            return

        started_at = time.monotonic()
        self._spawn()
        self.wait_ready()
        logger.info("%s: ready after %.1f s", self.name, time.monotonic() - started_at)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll ``ready_check`` until it passes, the process exits or time runs out."""
        limit_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit_s
        while True:
            if not self.is_running():
                self._remove_pid_files()
                raise ProcessStartError(self.name, self._exit_reason(), self.log_tail())

            if self.ready_check is None or self.ready_check():
                return

            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                reason = f"not ready after {limit_s:.0f} s, so it was stopped"
                raise ProcessStartError(self.name, reason, tail)

            time.sleep(_POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Send ``stop_signal``, then SIGKILL to the process group after ``timeout_s``."""
        pid = self.pid
        if pid is None:
            self._remove_pid_files()
            return

        logger.info("%s: stopping pid %d with %s", self.name, pid, self.stop_signal.name)
        _send_signal(pid, self.stop_signal)
        if not self._wait_exit(pid, timeout_s):
            logger.warning("%s: pid %d still running after %.0f s, sending SIGKILL", self.name, pid, timeout_s)
            _send_signal_to_group(pid, signal.SIGKILL)
            if not self._wait_exit(pid, _KILL_WAIT_S):
                raise LocalStackError(f"{self.name}: pid {pid} survived SIGKILL: check it with `ps -o pid,stat,cmd -p {pid}`")

        self._remove_pid_files()
        logger.info("%s: stopped", self.name)

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the main log and of each extra log."""
        parts = []
        for path in (self.log_path, *self.extra_logs):
            parts.append(f"==> {path} <==\n{_read_tail(path, lines)}")
        return "\n".join(parts)

    def _spawn(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports_free()

        for path in (self.log_path, *self.extra_logs):
            _rotate(path)

        with self.log_path.open("ab") as log_file:
            started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            log_file.write(f"=== {self.name} starting at {started_at}: {self.argv!r}\n".encode())
            log_file.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                    **_user_switch_kwargs(self.user),
                )
            except OSError as error:
                raise LocalStackError(f"{self.name}: cannot run {self.argv[0]!r}: {error}") from error

        # The start time is written first, so a reader of the pid file can verify the pid.
        start_ticks = _start_ticks(self._popen.pid)
        write_atomically(self.start_ticks_path, f"{start_ticks}\n".encode())
        write_atomically(self.pid_path, f"{self._popen.pid}\n".encode())
        logger.info("%s: started pid %d, log %s", self.name, self._popen.pid, self.log_path)

    def _remove_pid_files(self) -> None:
        self.pid_path.unlink(missing_ok=True)
        self.start_ticks_path.unlink(missing_ok=True)

    def _check_ports_free(self) -> None:
        for port in self.listen_ports:
            if port_is_open(port):
                raise LocalStackError(
                    f"{self.name}: port {port} on 127.0.0.1 is already in use by another program: "
                    "stop that program or choose another port"
                )

    def _read_pid_file(self) -> int | None:
        try:
            text = self.pid_path.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            logger.warning("%s: ignoring invalid pid file %s: %r", self.name, self.pid_path, text)
            return None
        return int(text)

    def _is_alive(self, pid: int) -> bool:
        # Reap our own child first, or it would stay a zombie and look alive.
        if self._popen is not None and self._popen.pid == pid:
            self._popen.poll()

        # Comparing start times rejects a pid that the kernel reused for an
        # unrelated process after ours exited. Without a recorded start time
        # the pid cannot be trusted, so it does not count as ours.
        try:
            recorded = int(self.start_ticks_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return False
        return _start_ticks(pid) == recorded

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._is_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S / 2)
        return True

    def _exit_reason(self) -> str:
        if self._popen is not None and self._popen.returncode is not None:
            return f"exited during startup with status {self._popen.returncode}"
        return "exited during startup"


def port_is_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def file_contains(path: Path, text: str) -> bool:
    """Return whether the file exists and contains ``text``."""
    try:
        return text.encode() in path.read_bytes()
    except FileNotFoundError:
        return False


def _start_ticks(pid: int) -> int | None:
    """Return the start time of a live, non-zombie ``pid`` in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None

    # The command name in brackets may contain spaces, so split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X") and not _has_running_threads(pid):
        return None
    return start_ticks


def _has_running_threads(pid: int) -> bool:
    """Return whether any thread of ``pid`` has not exited yet.

    A killed multi-threaded program (a JVM) shows its main thread as a
    zombie while its other threads are still exiting, and its listening
    sockets stay open until the last one has: a restart then finds the port
    in use.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for thread in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X"):
            return True
    return False


def _user_switch_kwargs(user: str | None) -> dict[str, Any]:
    if user is None or os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(user, entry.pw_gid),
    }


def _send_signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _send_signal_to_group(pid: int, sig: signal.Signals) -> None:
    # Every managed process leads its own session, so its pid is its group id.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        _send_signal(pid, sig)


def _rotate(path: Path) -> None:
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))


def _read_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - _TAIL_BYTES))
            data = log_file.read()
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

