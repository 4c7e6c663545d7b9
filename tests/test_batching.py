"""Batching: the chapter's batchify, masks and labels, fixed shapes, seeding, epochs, prefetch."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from common.batching import (Batch, EpochData, batchify, iterate_batches, num_batches,
                             prefetch)
from common.config import TrainConfig
from common.sampling import build_dataset
from common.vocab import EncodedCorpus

SAMPLING = dict(max_window_size=3, num_noise_words=2, t=0.05)


@pytest.fixture(scope="module")
def corpus() -> EncodedCorpus:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, size=120)
    tokens = rng.integers(0, 60, size=int(lengths.sum())).astype(np.int32)  # 0 = <unk>
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return EncodedCorpus(tokens, offsets)


@pytest.fixture(scope="module")
def counts(corpus) -> np.ndarray:
    return np.bincount(corpus.tokens, minlength=60)


@pytest.fixture(scope="module")
def data(corpus, counts):
    return build_dataset(corpus, counts, rng=np.random.default_rng(1), **SAMPLING)


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


def test_batches_cover_every_example_once_with_consistent_masks(data):
    seen, width = [], data.contexts_negatives.shape[1]
    batches = list(iterate_batches(data, 64, np.random.default_rng(2)))
    assert len(batches) == num_batches(data.num_examples, 64) == -(-data.num_examples // 64)
    for batch in batches:
        lengths = batch.masks.sum(axis=1)
        assert batch.contexts_negatives.shape[1] == lengths.max()  # the batch's own L
        assert np.all(batch.labels <= batch.masks)
        assert not batch.contexts_negatives[batch.masks == 0].any()
        assert batch.contexts_negatives[batch.masks == 1].all()
        # Masks and labels are prefixes: contexts first, then K noise words per context.
        assert np.array_equal(batch.masks, np.sort(batch.masks, axis=1)[:, ::-1])
        assert np.array_equal(batch.labels, np.sort(batch.labels, axis=1)[:, ::-1])
        slots_per_context = 1 + SAMPLING["num_noise_words"]
        assert np.array_equal(lengths, batch.labels.sum(axis=1) * slots_per_context)
        padded = np.zeros((len(batch.centers), width), dtype=np.int32)
        padded[:, :batch.contexts_negatives.shape[1]] = batch.contexts_negatives
        seen.append(np.concatenate([batch.centers, padded], axis=1))
    # The batches hold every row of the data exactly once (as multisets of whole rows).
    rows = np.concatenate(seen)
    expected = np.concatenate([data.centers[:, None], data.contexts_negatives], axis=1)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, expected.tolist()))
    assert batches[-1].centers.shape == (data.num_examples % 64 or 64, 1)


def test_fixed_length_and_padded_last_batch_keep_one_shape(data):
    width = data.contexts_negatives.shape[1]
    for length in (width, width + 4):
        batches = list(iterate_batches(data, 64, np.random.default_rng(3), fixed_length=length,
                                       pad_last_batch=True))
        assert {b.contexts_negatives.shape for b in batches} == {(64, length)}
        assert {b.masks.shape for b in batches} == {(64, length)}
        assert {b.labels.shape for b in batches} == {(64, length)}
        assert {b.centers.shape for b in batches} == {(64, 1)}
        real = data.num_examples - 64 * (len(batches) - 1)
        last = batches[-1]
        assert last.masks[:real, 0].all() and not last.masks[real:].any()
        assert not last.contexts_negatives[real:].any() and not last.centers[real:].any()
        assert sum(int(b.masks[:, 0].sum()) for b in batches) == data.num_examples
        assert not np.concatenate([b.masks[:, width:] for b in batches]).any()
    with pytest.raises(ValueError, match="shorter than the longest"):
        next(iterate_batches(data, 64, np.random.default_rng(3), fixed_length=3))


def test_fixed_length_gives_the_same_rows_as_the_chapters_padding(data):
    own = list(iterate_batches(data, 50, np.random.default_rng(4)))
    fixed = list(iterate_batches(data, 50, np.random.default_rng(4), fixed_length=30))
    for short, wide in zip(own, fixed):
        length = short.masks.shape[1]
        assert np.array_equal(short.contexts_negatives, wide.contexts_negatives[:, :length])
        assert np.array_equal(short.masks, wide.masks[:, :length])
        assert not wide.masks[:, length:].any()


@pytest.mark.parametrize("mode", ["static", "resample"])
def test_same_seed_same_batches(corpus, counts, mode):
    def run() -> list[list[Batch]]:
        epochs = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(5),
                           mode=mode, **SAMPLING)
        return [list(epochs.batches(epoch)) for epoch in range(2)]

    first, second = run(), run()
    assert all(batches_equal(a, b) for a, b in zip(first, second))
    assert not batches_equal(first[0], first[1])  # each epoch is shuffled anew


def test_batches_of_an_epoch_do_not_depend_on_what_came_before(corpus, counts):
    """Resuming at epoch 2 sees what an uninterrupted run saw."""
    uninterrupted = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(6),
                              mode="resample", **SAMPLING)
    for epoch in range(2):
        list(uninterrupted.batches(epoch))
    resumed = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(6),
                        mode="resample", **SAMPLING)
    assert batches_equal(list(resumed.batches(2)), list(uninterrupted.batches(2)))
    assert batches_equal(list(resumed.batches(2)), list(resumed.batches(2)))


def test_resample_draws_new_examples_every_epoch_and_static_does_not(corpus, counts):
    resample = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(7),
                         mode="resample", **SAMPLING)
    first, second = resample.dataset(0), resample.dataset(1)
    assert (first.num_examples != second.num_examples
            or not np.array_equal(first.contexts_negatives, second.contexts_negatives))
    sorted_rows = [np.unique(d.contexts_negatives, axis=0) for d in (first, second)]
    assert not (sorted_rows[0].shape == sorted_rows[1].shape
                and np.array_equal(sorted_rows[0], sorted_rows[1]))
    assert resample.num_batches(1) == num_batches(second.num_examples, 32)
    static = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(7),
                       mode="static", **SAMPLING)
    assert static.dataset(0) is static.dataset(3)
    assert static.num_examples(0) == static.num_examples(5)


def test_from_config_uses_the_configs_sampling_fields(corpus, counts):
    config = TrainConfig(batch_size=16, max_window_size=2, num_noise_words=3, subsample_t=0.05,
                         sampling="resample")
    epochs = EpochData.from_config(corpus, counts, config, np.random.default_rng(8),
                                   fixed_length=config.max_length, pad_last_batch=True)
    assert epochs.mode == "resample"
    batches = list(epochs.batches(0))
    assert len(batches) == epochs.num_batches(0)
    assert {b.contexts_negatives.shape for b in batches} == {(16, 2 * 2 * 4)}


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
