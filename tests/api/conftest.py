"""Fixtures of the API tests: a caller with the stack's bootstrap admin token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import Api


@pytest.fixture(scope="session")
def api(stack: dict[str, Any]) -> Api:
    return Api(stack["api"], stack["api_token"])
