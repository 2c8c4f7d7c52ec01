"""Fixtures of the ingest tests: the in-process rig on the session stack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.ingest.harness import IngestRig


@pytest.fixture(scope="module")
def rig(stack: dict[str, Any]) -> Iterator[IngestRig]:
    """The ingest service's loop, pool, producer and intake, in the test process."""
    ingest_rig = IngestRig(stack)
    try:
        yield ingest_rig
    finally:
        ingest_rig.close()
