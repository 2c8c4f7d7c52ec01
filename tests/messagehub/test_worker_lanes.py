"""Unit tests of how the batch loop splits a batch into lanes by record key."""

from __future__ import annotations

from typing import Any

import pytest

from messagehub.worker import BatchProcessor, Coordinates


def _processor(lanes: int) -> BatchProcessor:
    unused: Any = None
    return BatchProcessor(stage=unused, pool=unused, relay=unused, dead_letter_topic="x.dead-letter",
                          sensor=unused, lanes=lanes)


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
