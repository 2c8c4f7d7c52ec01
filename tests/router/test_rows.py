"""Values the router writes to jsonb columns."""

from __future__ import annotations

import json

from services.router.rows import to_json


def test_to_json__drops_nul_everywhere() -> None:
    value = {"status\x00": "5.1.1\x00", "failed_recipients": ["rita@\x00example.org"],
             "nested": [{"reason": "mailbox\x00 full"}], "count": 2, "none": None}

    text = to_json(value)

    assert "\\u0000" not in text
    assert json.loads(text) == {"status": "5.1.1", "failed_recipients": ["rita@example.org"],
                                "nested": [{"reason": "mailbox full"}], "count": 2,
                                "none": None}


def test_to_json__keeps_non_ascii_and_backslashes() -> None:
    text = to_json({"name": "髙橋 花子", "path": "C:\\u0000\\x"})

    assert json.loads(text) == {"name": "髙橋 花子", "path": "C:\\u0000\\x"}
