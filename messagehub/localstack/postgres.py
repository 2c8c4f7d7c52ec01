"""PostgreSQL 15 server of the local stack, from Debian's packages.

``LocalStack`` starts one ``PostgresServer`` per state dir. It runs
``initdb`` the first time, listens on 127.0.0.1 only, keeps its unix socket
in the state dir, and creates the ``messagehub`` role and database that the
services connect to.

PostgreSQL refuses to run as root, so when we are root the cluster belongs
to the ``postgres`` OS user: ``initdb`` runs through ``runuser``, and the
server is spawned with that uid directly (see ``_server_argv``).
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from messagehub.localstack._files import check_reachable_by, write_atomically
from messagehub.localstack.errors import LocalStackError
from messagehub.localstack.processes import ManagedProcess

logger = logging.getLogger(__name__)

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
APP_ROLE = "messagehub"
APP_DATABASE = "messagehub"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
INITDB_TIMEOUT_S = 120.0
# Linux limits a unix socket path (sun_path) to 107 bytes plus a NUL.
_MAX_SOCKET_PATH = 107

# Speed over durability: with these settings a crash of the OS (not of
# PostgreSQL) can corrupt the cluster. That is acceptable for a local or
# test stack whose data can be recreated, never for a real deployment.
# synchronous_commit stays on: turned off, a commit returns before its WAL
# leaves PostgreSQL's shared memory, so a crash of PostgreSQL alone loses
# transactions the services were told had committed, and with them the mail
# whose Kafka offsets were committed on that word.
_SPEED_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
}


class PostgresServer:
    """A PostgreSQL cluster under ``root`` serving ``127.0.0.1:port``."""

    name = "postgresql"

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self._os_user = OS_USER if os.geteuid() == 0 else None
        self.process = ManagedProcess(
            self.name,
            self._server_argv(),
            root,
            ready_check=self._accepts_connections,
            start_timeout_s=START_TIMEOUT_S,
            user=self._os_user,
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart")
            # would wait for every client to disconnect first.
            stop_signal=signal.SIGINT,
            listen_ports=(port,),
        )

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's unix socket, reachable only by its owner and root."""
        return self.root / "run"

    @property
    def address(self) -> str:
        """TCP address as ``host:port``."""
        return f"127.0.0.1:{self.port}"

    @property
    def password_path(self) -> Path:
        """File with the password of the application role, readable by root only."""
        return self.root / "app-password"

    def app_password(self) -> str:
        """Return the application role's password, creating it on first use."""
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        write_atomically(self.password_path, secrets.token_urlsafe(18).encode(), mode=0o600)
        return self.password_path.read_text().strip()

    def database_url(self) -> str:
        """Return the libpq URL of the application database, password included."""
        password = quote(self.app_password(), safe="")
        return f"postgresql://{APP_ROLE}:{password}@127.0.0.1:{self.port}/{APP_DATABASE}"

    def start(self) -> None:
        """Create the cluster if needed, start the server, then create the role and database."""
        self.prepare()
        self.process.start()
        self._ensure_role_and_database()

    def stop(self) -> None:
        """Stop the server with a fast shutdown."""
        self.process.stop(STOP_TIMEOUT_S)

    def prepare(self) -> None:
        """Check the installation and run ``initdb`` unless the cluster exists; idempotent."""
        if not (PG_BIN_DIR / "postgres").exists():
            raise LocalStackError(f"postgresql: {PG_BIN_DIR}/postgres not found: run deploy/local/install.sh")
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise LocalStackError(
                f"postgresql: unix socket path {socket_path} is longer than {_MAX_SOCKET_PATH} bytes: "
                "use a shorter state dir"
            )

        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if self._os_user is not None:
            check_reachable_by(self.root, self._os_user, self.name)

        self._make_private_dir(self.socket_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        # A data dir without PG_VERSION is left over from a failed initdb.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._make_private_dir(self.data_dir)

        argv = [
            str(PG_BIN_DIR / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            # Local socket connections need no password: the socket dir is
            # mode 0700, so only the postgres OS user and root can reach it.
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ]
        if self._os_user is not None:
            argv = ["runuser", "-u", self._os_user, "--", *argv]

        logger.info("postgresql: running initdb in %s", self.data_dir)
        log_path = self.root / "initdb.log"
        with log_path.open("wb") as log_file:
            result = subprocess.run(
                argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.root, timeout=INITDB_TIMEOUT_S, check=False
            )
        if result.returncode != 0:
            raise LocalStackError(
                f"postgresql: initdb failed with status {result.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-4000:]}"
            )

    def _server_argv(self) -> list[str]:
        # The server is not wrapped in runuser like initdb. runuser stays the
        # parent, ignores SIGINT, and on SIGTERM kills its child with SIGKILL
        # two seconds later (util-linux 2.38), which turns a stop into a
        # crash. ManagedProcess switches the uid itself, so the recorded pid
        # is the postmaster's.
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            **_SPEED_SETTINGS,
        }
        argv = [str(PG_BIN_DIR / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _make_private_dir(self, path: Path) -> None:
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o700)
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _superuser_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            connect_timeout=2,
            autocommit=True,
        )

    def _accepts_connections(self) -> bool:
        try:
            with self._superuser_connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def _ensure_role_and_database(self) -> None:
        # The password is set on every start so that it always matches the
        # one the stack keeps in its state dir.
        with self._superuser_connect() as conn:
            role_exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
            verb = sql.SQL("ALTER ROLE" if role_exists else "CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(APP_ROLE), sql.Literal(self.app_password())
                )
            )

            database_exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)
            ).fetchone()
            if not database_exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
                logger.info("postgresql: created database %r owned by role %r", APP_DATABASE, APP_ROLE)
