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


def assert_valid_batches(batches: list[Batch], batch_size: int, num_noise_words: int,
                         width: int | None = None) -> int:
    """Every batch's masks, labels and padding agree; no noise word is a context of its row.

    Returns the number of real rows (centre words) seen.
    """
    real = 0
    for index, batch in enumerate(batches):
        rows, slots = batch.contexts_negatives.shape
        assert batch.centers.shape == (rows, 1) and batch.masks.shape == (rows, slots)
        assert rows == batch_size or index == len(batches) - 1  # all full but the last
        assert width is None or slots == width
        masks, labels = batch.masks.astype(bool), batch.labels.astype(bool)
        assert (np.diff(masks.astype(int), axis=1) <= 0).all()
        assert (np.diff(labels.astype(int), axis=1) <= 0).all() and not (labels & ~masks).any()
        assert not batch.contexts_negatives[~masks].any() and batch.contexts_negatives[masks].all()
        lengths = masks.sum(axis=1)
        assert np.array_equal(lengths, labels.sum(axis=1) * (1 + num_noise_words))
        for row in np.flatnonzero(lengths):
            contexts = batch.contexts_negatives[row][labels[row]]
            noise = batch.contexts_negatives[row][masks[row] & ~labels[row]]
            assert not np.isin(noise, contexts).any()
        real += int(masks[:, 0].sum())
    return real


def _rows(batches: list[Batch]) -> list[tuple[int, ...]]:
    """Each real row as (centre, real slots...), for multiset comparisons."""
    return sorted(tuple([int(b.centers[i, 0])] + b.contexts_negatives[i][b.masks[i] > 0].tolist())
                  for b in batches for i in np.flatnonzero(b.masks[:, 0]))


@pytest.mark.parametrize("chunk_tokens", [1, 37, 400, 1 << 18])
def test_resample_streams_chunks_into_valid_full_batches(corpus, counts, chunk_tokens):
    epochs = EpochData(corpus, counts, batch_size=32, rng=np.random.default_rng(9),
                       mode="resample", chunk_tokens=chunk_tokens, **SAMPLING)
    for epoch in range(2):
        batches = list(epochs.batches(epoch))
        assert len(batches) == epochs.num_batches(epoch)
        real = assert_valid_batches(batches, 32, SAMPLING["num_noise_words"])
        assert real == epochs.num_examples(epoch)
        # The stream holds exactly the epoch's examples, whichever chunk they came from.
        data = epochs.dataset(epoch)
        expected = sorted(tuple([int(c)] + row[:length].tolist()) for c, row, length in
                          zip(data.centers, data.contexts_negatives, data.lengths))
        assert _rows(batches) == expected


def test_resample_with_fixed_shapes_pads_only_the_last_batch(corpus, counts):
    width = 2 * SAMPLING["max_window_size"] * (1 + SAMPLING["num_noise_words"])
    epochs = EpochData(corpus, counts, batch_size=24, rng=np.random.default_rng(10),
                       mode="resample", chunk_tokens=64, fixed_length=width + 2,
                       pad_last_batch=True, **SAMPLING)
    batches = list(epochs.batches(0))
    assert {b.contexts_negatives.shape for b in batches} == {(24, width + 2)}
    assert assert_valid_batches(batches, 24, SAMPLING["num_noise_words"],
                                width + 2) == epochs.num_examples(0)
    assert all(b.masks[:, 0].all() for b in batches[:-1])
    with pytest.raises(ValueError, match="shorter than the longest"):
        list(EpochData(corpus, counts, batch_size=24, rng=np.random.default_rng(10),
                       mode="resample", chunk_tokens=64, fixed_length=3,
                       **SAMPLING).batches(0))


def test_resample_in_chunks_is_deterministic_and_new_every_epoch(corpus, counts):
    def run() -> list[list[Batch]]:
        epochs = EpochData(corpus, counts, batch_size=16, rng=np.random.default_rng(11),
                           mode="resample", chunk_tokens=50, **SAMPLING)
        counted = [epochs.num_batches(epoch) for epoch in (2, 0, 1)]  # any order, any time
        batches = [list(epochs.batches(epoch)) for epoch in range(3)]
        assert [len(b) for b in batches] == [counted[1], counted[2], counted[0]]
        return batches

    first, second = run(), run()
    assert all(batches_equal(a, b) for a, b in zip(first, second))
    assert _rows(first[0]) != _rows(first[1]) != _rows(first[2])  # fresh draws, not a reshuffle


def test_resample_peak_memory_is_a_chunk_not_the_epoch():
    """Static holds every row of the epoch; resample only a chunk's (traced by tracemalloc)."""
    import tracemalloc

    rng = np.random.default_rng(12)
    lengths = rng.integers(5, 35, size=5000)
    tokens = (rng.zipf(1.3, size=int(lengths.sum())) % 2000 + 1).astype(np.int32)
    corpus = EncodedCorpus(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    counts = np.bincount(tokens, minlength=2001)
    sampling = dict(max_window_size=5, num_noise_words=5, t=1.0)  # t=1: keep every word

    def peak(mode: str) -> float:
        tracemalloc.start()
        try:
            epochs = EpochData(corpus, counts, batch_size=256, rng=np.random.default_rng(0),
                               mode=mode, chunk_tokens=2048, **sampling)
            for _ in epochs.batches(0):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    static, resample = peak("static"), peak("resample")
    assert static > 20 * 2**20  # ~100k rows of 60 int32 slots, and more
    assert resample < static / 5, (resample, static)  # measured: 3.3 vs 30.5 MiB
