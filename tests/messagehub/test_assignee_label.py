"""How the CLI and the demo name a conversation's assignee."""

from __future__ import annotations

import pytest

from messagehub.inboxes import assignee_label


@pytest.mark.parametrize(("assignee", "queued", "label"), [
    ("Kim", False, "Kim"),
    (None, True, "(queued)"),
    # List mail and autoresponses are kept without being queued.
    (None, False, "(unassigned)"),
])
def test_assignee_label__agent_queue_or_none(assignee: str | None, queued: bool,
                                             label: str) -> None:
    assert assignee_label({"assignee": assignee, "queued": queued}) == label
