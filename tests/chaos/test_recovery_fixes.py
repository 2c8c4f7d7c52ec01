"""Faults the chaos run found, pinned as fast tests.

- The outbox sweep ran in a faust timer; an exception escaping it (the
  database restarting) crashed the whole stage process.
- The local stack ran PostgreSQL with synchronous_commit off, so a crash of
  PostgreSQL lost transactions the router had seen commit. Their Kafka
  offsets were committed too, so the mail was gone.
- Faust's default session timeout of 60 s left a crashed stage's
  partitions idle for a minute before its restarted process got them back.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from messagehub import worker
from messagehub.localstack.postgres import PostgresServer
from messagehub.service import run_outbox_sweep
from messagehub.settings import Settings


class _FailingRelay:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def publish_pending(self) -> int:
        self.calls += 1
        raise self.error


async def test_outbox_sweep__database_gone_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    relay = _FailingRelay(psycopg.OperationalError("server closed the connection unexpectedly"))

    await run_outbox_sweep(relay, "router")  # type: ignore[arg-type]

    assert relay.calls == 1
    assert "router: outbox sweep failed" in caplog.text


async def test_outbox_sweep__cancellation_propagates() -> None:
    import asyncio

    relay = _FailingRelay(asyncio.CancelledError())

    with pytest.raises(asyncio.CancelledError):
        await run_outbox_sweep(relay, "router")  # type: ignore[arg-type]


def test_local_postgres__commits_survive_a_server_crash(tmp_path: Path) -> None:
    argv = PostgresServer(tmp_path, 5432)._server_argv()

    settings = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    assert settings.get("synchronous_commit", "on") == "on"


def test_stage_app__crashed_worker_releases_partitions_soon(tmp_path: Path) -> None:
    app = worker.create_app("messagehub-test", Settings(faust_data_dir=str(tmp_path)))

    assert app.conf.broker_session_timeout == worker.SESSION_TIMEOUT_SECONDS
    assert app.conf.broker_session_timeout <= 20.0
    assert app.conf.broker_heartbeat_interval * 3 <= app.conf.broker_session_timeout
