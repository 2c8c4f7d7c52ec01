"""Applying the schema beside running services must never stall them.

The chaos run found the pipeline stuck for good after a restart: the
restarting process ran every schema file again, an ``ALTER TABLE ... ADD
COLUMN IF NOT EXISTS`` queued for an ACCESS EXCLUSIVE lock behind
outbound's open batch transaction, every later statement on the table
queued behind the ALTER, and outbound waited for one of those on its
second connection. The schema is now applied only when a file changed, and
its DDL gives up on a busy table after a lock timeout instead of waiting.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from messagehub import db
from services.router.replay import create_local_database

pytestmark = pytest.mark.stack


@pytest.fixture
def database_url(stack: dict[str, Any]) -> Iterator[str]:
    yield create_local_database(stack, f"schema_locks_{uuid.uuid4().hex[:8]}")


def test_apply_schema__second_run_applies_nothing(database_url: str) -> None:
    first = db.apply_schema(database_url)

    second = db.apply_schema(database_url)

    assert first == sorted(path.name for path in db.SCHEMA_DIR.glob("[0-9][0-9][0-9]-*.sql"))
    assert second == []


def test_apply_schema__changed_file_runs_again(database_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tmp_path / "001-test.sql"
    schema.write_text("CREATE TABLE IF NOT EXISTS t (a int);\n")
    monkeypatch.setattr(db, "SCHEMA_DIR", tmp_path)
    db.apply_schema(database_url)
    schema.write_text("CREATE TABLE IF NOT EXISTS t (a int);\n"
                      "ALTER TABLE t ADD COLUMN IF NOT EXISTS b int;\n")

    applied = db.apply_schema(database_url)

    assert applied == ["001-test.sql"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT a, b FROM t").fetchall() == []


def test_apply_schema__busy_table_does_not_block_readers(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tmp_path / "001-test.sql"
    schema.write_text("CREATE TABLE IF NOT EXISTS t (a int);\n")
    monkeypatch.setattr(db, "SCHEMA_DIR", tmp_path)
    db.apply_schema(database_url)
    schema.write_text("ALTER TABLE t ADD COLUMN IF NOT EXISTS b int;\n")
    monkeypatch.setattr(db, "SCHEMA_LOCK_TIMEOUT", "300ms")
    monkeypatch.setattr(db, "SCHEMA_ATTEMPTS", 2)

    with psycopg.connect(database_url) as long_transaction:
        long_transaction.execute("SELECT * FROM t").fetchall()  # holds ACCESS SHARE until the end
        failure: list[BaseException] = []
        migration = threading.Thread(target=lambda: _capture(failure, database_url))
        migration.start()
        time.sleep(0.1)

        # A reader that arrives while the ALTER waits must get through once it gave up.
        with psycopg.connect(database_url, options="-c statement_timeout=20000") as reader:
            assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)
        migration.join(timeout=30)

    assert [type(error) for error in failure] == [db.SchemaLockTimeout]


def _capture(failure: list[BaseException], database_url: str) -> None:
    try:
        db.apply_schema(database_url)
    except BaseException as exc:  # noqa: BLE001 - checked by the test
        failure.append(exc)
