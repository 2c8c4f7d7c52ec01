"""Unit tests of the batch loop's pure steps: lanes by record key, and records a stage skips."""

from __future__ import annotations

from typing import Any

import pytest

from messagehub import codec
from messagehub.events import conversation_event
from messagehub.worker import BatchProcessor, Coordinates


def _processor(lanes: int = 1, stage: Any = None) -> BatchProcessor:
    unused: Any = None
    return BatchProcessor(stage=stage, pool=unused, relay=unused,
                          dead_letter_topic="x.dead-letter", sensor=unused, lanes=lanes)


def _record(offset: int, key: bytes | None) -> Coordinates:
    return Coordinates(topic="mail.received", partition=0, offset=offset, key=key, value=b"")


def test_split__one_lane_keeps_the_batch() -> None:
    batch = [_record(n, f"inbox-{n % 5}".encode()) for n in range(20)]
    assert _processor(1)._split(batch) == [batch]


def test_split__one_key_stays_in_one_lane_in_order() -> None:
    batch = [_record(n, f"inbox-{n % 7}".encode()) for n in range(70)] + [_record(70, None)]

    lanes = _processor(3)._split(batch)

    assert len(lanes) <= 3
    assert sorted(r.offset for lane in lanes for r in lane) == list(range(71))
    for lane in lanes:
        offsets = [r.offset for r in lane]
        assert offsets == sorted(offsets)
    lane_of_key = {r.key: index for index, lane in enumerate(lanes) for r in lane}
    for index, lane in enumerate(lanes):
        for record in lane:
            assert lane_of_key[record.key] == index


def test_lanes__must_be_positive() -> None:
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        _processor(0)


class _CreatedOnly:
    name = "created-only"

    def wants(self, record_name: str, record: dict[str, Any]) -> bool:
        return bool(record["type"] == "CONVERSATION_CREATED")


def _event(event_type: str) -> Coordinates:
    event = conversation_event(event_type, fact="f", inbox_id="i", conversation_id="c")
    return Coordinates(topic="conversation.events", partition=0, offset=0, key=b"i",
                       value=codec.encode("ConversationEvent", event))


def test_wanted__follows_the_stage() -> None:
    processor = _processor(stage=_CreatedOnly())
    assert processor._wanted(_event("CONVERSATION_CREATED"))
    assert not processor._wanted(_event("ASSIGNED"))


def test_wanted__undecodable_goes_on_to_dead_letter() -> None:
    processor = _processor(stage=_CreatedOnly())
    assert processor._wanted(_record(0, b"i"))


def test_wanted__stage_without_wants_takes_all() -> None:
    processor = _processor(stage=object())
    assert processor._wanted(_event("ASSIGNED"))
