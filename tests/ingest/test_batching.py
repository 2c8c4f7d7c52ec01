"""Batcher: concurrent calls share a flush, and a bad item fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.ingest.batching import Batcher


class Recorder:
    """A flush that doubles numbers, records each batch and refuses negative numbers."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {list(items)}")
        return [item * 2 for item in items]


def test_batcher__callers_share_a_flush() -> None:
    async def run() -> tuple[list[int], list[list[int]]]:
        recorder = Recorder()
        batcher: Batcher[int, int] = Batcher(recorder.flush, max_items=3)
        calls = [asyncio.create_task(batcher.submit(number)) for number in range(6)]
        await asyncio.sleep(0.01)
        recorder.release.set()
        return list(await asyncio.gather(*calls)), recorder.batches

    results, batches = asyncio.run(run())

    assert results == [0, 2, 4, 6, 8, 10]
    # Calls made before the flush starts go together, three at most.
    assert batches == [[0, 1, 2], [3, 4, 5]]


def test_batcher__a_bad_item_fails_only_its_caller() -> None:
    async def run() -> tuple[list[object], list[list[int]]]:
        recorder = Recorder()
        recorder.release.set()
        batcher: Batcher[int, int] = Batcher(recorder.flush)
        calls = [asyncio.create_task(batcher.submit(number)) for number in (1, 2, -3, 4)]
        return list(await asyncio.gather(*calls, return_exceptions=True)), recorder.batches

    results, batches = asyncio.run(run())

    assert results[:2] == [2, 4]
    assert results[3] == 8
    assert isinstance(results[2], ValueError)
    assert batches == [[1, 2, -3, 4], [1], [2], [-3], [4]]


def test_batcher__a_cancelled_caller_leaves_the_others() -> None:
    async def run() -> list[int]:
        recorder = Recorder()
        batcher: Batcher[int, int] = Batcher(recorder.flush)
        first = asyncio.create_task(batcher.submit(1))
        cancelled = asyncio.create_task(batcher.submit(2))
        remaining = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        recorder.release.set()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return [await first, await remaining]

    assert asyncio.run(run()) == [2, 6]


def test_batcher__retries_skip_callers_that_left() -> None:
    async def run() -> list[list[int]]:
        recorder = Recorder()
        batcher: Batcher[int, int] = Batcher(recorder.flush)
        calls = [asyncio.create_task(batcher.submit(number)) for number in (1, -2, 3)]
        await asyncio.sleep(0.01)
        calls[2].cancel()
        recorder.release.set()
        await asyncio.gather(*calls, return_exceptions=True)
        return recorder.batches

    # The failed batch is retried item by item, without the caller that left.
    assert asyncio.run(run()) == [[1, -2, 3], [1], [-2]]


def test_batcher__stopped_batch_fails_its_callers() -> None:
    async def run() -> list[object]:
        recorder = Recorder()
        batcher: Batcher[int, int] = Batcher(recorder.flush)
        calls = [asyncio.create_task(batcher.submit(number)) for number in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher._worker is not None
        batcher._worker.cancel()
        return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5))

    results = asyncio.run(run())

    assert [type(result) for result in results] == [RuntimeError, RuntimeError]
