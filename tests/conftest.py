"""Fixtures every test module may use: where the shared test material lives.

The reported-fault cases and the public mail corpus live beside the
repository, in ``../shared`` (override with ``MESSAGEHUB_SHARED_DIR``). Tests
that need them skip with the reason when that folder is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir_path() -> Path:
    """Return the folder of shared cases and corpus, whether or not it exists."""
    configured = os.environ.get("MESSAGEHUB_SHARED_DIR")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_dir_path()
    if not (path / "cases").is_dir():
        pytest.skip(f"shared test material not found at {path}: set MESSAGEHUB_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def cases_dir(shared_dir: Path) -> Path:
    return shared_dir / "cases"


@pytest.fixture(scope="session")
def corpus_dir(shared_dir: Path) -> Path:
    return shared_dir / "corpus"


TEST_STATE_DIR = Path(os.environ.get("MESSAGEHUB_TEST_STATE_DIR", "/var/tmp/messagehub/test"))
TEST_PORT_BASE = int(os.environ.get("MESSAGEHUB_TEST_PORT_BASE", "27000"))


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, Any]]:
    """Start a fresh local stack and the services for the test session.

    It has its own state dir and ports, so it runs beside a demo stack. The
    state of an earlier test session is wiped first.
    """
    from messagehub import stackctl

    stackctl.reset(TEST_STATE_DIR, TEST_PORT_BASE)

    stackctl.up(TEST_STATE_DIR, TEST_PORT_BASE)
    try:
        yield stackctl.stack_info(TEST_STATE_DIR)
    finally:
        stackctl.down(TEST_STATE_DIR, TEST_PORT_BASE)
