"""Batching: the chapter's batchify, masks and labels, prefetch (epochs: test_stream.py)."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from common.batching import Batch, batchify, prefetch


def batches_equal(first: list[Batch], second: list[Batch]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a, b) for one, other in zip(first, second) for a, b in zip(one, other))


def test_batchify_gives_the_chapters_arrays():
    batch = batchify([(1, [2, 2], [3, 3, 3, 3]), (1, [2, 2, 2], [3, 3])])
    assert batch.centers.tolist() == [[1], [1]]
    assert batch.contexts_negatives.tolist() == [[2, 2, 3, 3, 3, 3], [2, 2, 2, 3, 3, 0]]
    assert batch.masks.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert batch.labels.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert batch.centers.dtype == batch.contexts_negatives.dtype == np.int32
    assert batch.masks.dtype == batch.labels.dtype == np.float32


def test_prefetch_yields_everything_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetch([], depth=1)) == []


def test_prefetch_raises_the_producers_exception_after_its_items():
    def failing():
        yield 1
        yield 2
        raise KeyError("broken source")

    received = []
    with pytest.raises(KeyError, match="broken source"):
        for item in prefetch(failing()):
            received.append(item)
    assert received == [1, 2]


def test_prefetch_stops_and_closes_the_source_when_the_consumer_leaves():
    closed = threading.Event()

    def endless():
        try:
            item = 0
            while True:
                yield item
                item += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.wait(2.0)
    assert threading.active_count() == before


def test_prefetch_dropped_before_its_first_item_stops_its_thread():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 0
        finally:
            closed.set()

    stream = prefetch(endless(), depth=1)
    del stream
    gc.collect()
    assert closed.wait(2.0)
