"""The streaming pipeline: draws keyed by position, the chapter's distributions, any chunking.

Statistical tests use fixed seeds (deterministic) and a 0.1 % chi-square level.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.batching import Batch, num_batches
from common.config import TrainConfig
from common.errors import DataError
from common.stream import EpochData, find_centres, keep_probabilities, keyed_uniform, stream_key
from common.vocab import EncodedCorpus, Vocab
from test_sampling import assert_chi_square_fits

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


def epochs_of(corpus, counts, **options) -> EpochData:
    settings = dict(SAMPLING, batch_size=32, seed=5, mode="static")
    settings.update(options)
    return EpochData(corpus, counts, **settings)


def batches_equal(first: list[Batch], second: list[Batch]) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a, b) for one, other in zip(first, second) for a, b in zip(one, other))


def assert_valid_batches(batches: list[Batch], batch_size: int, num_noise_words: int,
                         width: int | None = None) -> int:
    """Masks, labels and padding agree; no noise word is a context of its row; real rows."""
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


# -- keyed draws ----------------------------------------------------------------------------------


def test_keyed_uniforms_depend_only_on_key_and_counter():
    counters = np.arange(100_000, dtype=np.uint64)
    whole = keyed_uniform(7, counters)
    assert whole.min() >= 0 and whole.max() < 1
    assert np.array_equal(whole[[5, 99_999, 3]], keyed_uniform(7, counters[[5, 99_999, 3]]))
    assert not np.array_equal(whole, keyed_uniform(8, counters))
    assert_chi_square_fits(np.bincount((whole * 20).astype(int), minlength=20), np.ones(20))
    # Neighbouring counters are not correlated (lag-1 correlation of 100k uniforms).
    assert abs(np.corrcoef(whole[:-1], whole[1:])[0, 1]) < 0.02
    assert stream_key(0, 1, 2) != stream_key(0, 2, 1)


# -- the batches are the same however the work is chunked ----------------------------------------


@pytest.mark.parametrize("mode", ["static", "resample"])
def test_batches_are_the_same_however_the_work_is_chunked(corpus, counts, mode):
    """Plan chunks of any size, batches made one by one or from the epoch's rows made whole,
    in any order or in pieces: the same examples."""
    reference = epochs_of(corpus, counts, mode=mode)  # small: its rows are made whole
    expected = [list(reference.batches(epoch)) for epoch in range(2)]
    assert reference._rows is not None
    for chunk_tokens, materialize_bytes in ((1, 0), (37, 1 << 30), (400, 0)):
        other = epochs_of(corpus, counts, mode=mode, chunk_tokens=chunk_tokens,
                          materialize_bytes=materialize_bytes)
        # Epochs asked in reverse, batches in reverse: nothing depends on what came before.
        for epoch in (1, 0):
            backwards = [other.batch(epoch, i) for i in reversed(range(other.num_batches(epoch)))]
            assert batches_equal(backwards[::-1], expected[epoch])
    # Rows made in two halves, or one by one, equal the rows made together.
    plan = reference.plan(1)
    chosen = plan.order[:50]
    together = reference.rows(1, chosen)
    halves = [reference.rows(1, part) for part in (chosen[:17], chosen[17:])]
    single = [reference.rows(1, chosen[i:i + 1]) for i in range(len(chosen))]
    for pieces in (halves, single):
        for whole, parts in zip(together, zip(*pieces)):
            assert np.array_equal(whole, np.concatenate(parts))
    # Resuming from batch 3 gives the batches an uninterrupted epoch gives from there on.
    assert batches_equal(list(reference.batches(0, 3)), expected[0][3:])


@pytest.mark.parametrize("mode", ["static", "resample"])
def test_same_seed_same_batches_and_each_epoch_reshuffled(corpus, counts, mode):
    first = [list(epochs_of(corpus, counts, mode=mode).batches(e)) for e in range(2)]
    second = [list(epochs_of(corpus, counts, mode=mode).batches(e)) for e in range(2)]
    assert all(batches_equal(a, b) for a, b in zip(first, second))
    assert not batches_equal(first[0], first[1])
    other_seed = list(epochs_of(corpus, counts, mode=mode, seed=6).batches(0))
    assert not batches_equal(first[0], other_seed)


def _rows(batches: list[Batch]) -> list[tuple[int, ...]]:
    """Each real row as (centre, real slots...), for multiset comparisons."""
    return sorted(tuple([int(b.centers[i, 0])] + b.contexts_negatives[i][b.masks[i] > 0].tolist())
                  for b in batches for i in np.flatnonzero(b.masks[:, 0]))


def test_static_samples_once_and_resample_every_epoch(corpus, counts):
    static = epochs_of(corpus, counts, mode="static")
    assert _rows(list(static.batches(0))) == _rows(list(static.batches(3)))
    assert static.num_examples(0) == static.num_examples(3)
    resample = epochs_of(corpus, counts, mode="resample")
    assert _rows(list(resample.batches(0))) != _rows(list(resample.batches(1)))
    for epoch in range(2):
        batches = list(resample.batches(epoch))
        assert len(batches) == resample.num_batches(epoch) == \
            num_batches(resample.num_examples(epoch), 32)
        assert assert_valid_batches(batches, 32, 2) == resample.num_examples(epoch)
        data = resample.dataset(epoch)  # the same examples, in corpus order
        expected = sorted(tuple([int(c)] + row[:length].tolist()) for c, row, length in
                          zip(data.centers, data.contexts_negatives, data.lengths))
        assert _rows(batches) == expected


def test_fixed_shapes_pad_only_the_last_batch(corpus, counts):
    width = 2 * SAMPLING["max_window_size"] * (1 + SAMPLING["num_noise_words"])
    epochs = epochs_of(corpus, counts, mode="resample", batch_size=24, fixed_length=width + 2,
                       pad_last_batch=True)
    batches = list(epochs.batches(0))
    assert {b.contexts_negatives.shape for b in batches} == {(24, width + 2)}
    assert assert_valid_batches(batches, 24, 2, width + 2) == epochs.num_examples(0)
    assert all(b.masks[:, 0].all() for b in batches[:-1])
    own = list(epochs_of(corpus, counts, mode="resample", batch_size=24).batches(0))
    for short, wide in zip(own, batches):  # the same rows as the batch's own width
        length = short.masks.shape[1]
        rows = len(short.centers)
        assert np.array_equal(short.contexts_negatives, wide.contexts_negatives[:rows, :length])
        assert not wide.masks[:, length:].any() and not wide.masks[rows:].any()
    with pytest.raises(ValueError, match="shorter than the longest"):
        epochs_of(corpus, counts, fixed_length=3)


def test_from_config_uses_the_configs_sampling_fields_and_seed(corpus, counts):
    config = TrainConfig(batch_size=16, max_window_size=2, num_noise_words=3, subsample_t=0.05,
                         sampling="resample", seed=4)
    epochs = EpochData.from_config(corpus, counts, config, fixed_length=config.max_length,
                                   pad_last_batch=True)
    assert epochs.mode == "resample" and epochs.seed == 4
    batches = list(epochs.batches(0))
    assert len(batches) == epochs.num_batches(0)
    assert {b.contexts_negatives.shape for b in batches} == {(16, 2 * 2 * 4)}


# -- the chapter's distributions -----------------------------------------------------------------


def _centres_of(corpus: EncodedCorpus, counts: np.ndarray, t: float, key: int) -> np.ndarray:
    return find_centres(corpus, keep_probabilities(counts, t), key)


def test_subsampling_keeps_with_probability_sqrt_t_over_f():
    counts = np.array([50, 1000, 400, 100, 10], dtype=np.int64)  # index 0: <unk>
    rng = np.random.default_rng(1)
    tokens = np.repeat(np.arange(5, dtype=np.int32), counts * 20)
    rng.shuffle(tokens)
    corpus = EncodedCorpus(tokens, np.array([0, len(tokens)], dtype=np.int64))
    t = 0.02
    keep = np.minimum(1, np.sqrt(t / (counts[1:] / counts[1:].sum())))
    kept = np.bincount(tokens[_centres_of(corpus, counts, t, 3)], minlength=5)
    assert kept[0] == 0  # <unk> is never a centre
    trials = counts[1:] * 20
    sd = np.sqrt(trials * keep * (1 - keep))
    assert np.all(np.abs(kept[1:] - trials * keep) <= 4 * sd + 1e-9), kept
    assert kept[4] == trials[3]  # a rare word (keep = 1) always stays


def test_the_chapters_tiny_dataset_gives_symmetric_windows_of_size_one_or_two():
    tiny = [list(range(1, 8)), list(range(8, 11))]
    corpus = EncodedCorpus.from_ids(tiny)
    counts = np.ones(11, dtype=np.int64)
    seen_sizes = set()
    for seed in range(8):
        epochs = EpochData(corpus, counts, max_window_size=2, num_noise_words=1, t=1.0,
                           batch_size=4, seed=seed)
        data = epochs.dataset(0)
        assert data.centers.tolist() == list(range(1, 11))  # t = 1 keeps every word
        for center, row, count in zip(data.centers, data.contexts_negatives, data.num_contexts):
            sentence = tiny[0] if center < 8 else tiny[1]
            i = sentence.index(center)
            windows = {size: sentence[max(0, i - size):i] + sentence[i + 1:i + 1 + size]
                       for size in (1, 2)}
            contexts = row[:count].tolist()
            matching = [size for size, window in windows.items() if window == contexts]
            assert matching, (center, contexts)
            if len(matching) == 1:
                seen_sizes.add(matching[0])
    assert seen_sizes == {1, 2}


def test_short_sentences_have_no_centres_and_windows_stay_in_their_sentence():
    corpus = EncodedCorpus.from_ids([[5], [], [1, 2], [3], [4, 6, 7]])
    counts = np.ones(8, dtype=np.int64)
    data = EpochData(corpus, counts, max_window_size=3, num_noise_words=1, t=1.0, batch_size=2,
                     seed=0).dataset(0)
    assert data.centers.tolist() == [1, 2, 4, 6, 7]
    assert data.contexts_negatives[:2, 0].tolist() == [2, 1]
    assert data.num_contexts[:2].tolist() == [1, 1]
    assert set(data.contexts_negatives[2:, :data.num_contexts.max()][
        np.arange(data.num_contexts.max()) < data.num_contexts[2:, None]].tolist()) <= {4, 6, 7}


def test_window_sizes_are_uniform():
    max_window = 5
    corpus = EncodedCorpus.from_ids([list(range(1, 40001))])
    epochs = EpochData(corpus, np.ones(40001, dtype=np.int64), max_window_size=max_window,
                       num_noise_words=1, t=1.0, batch_size=512, seed=2)
    interior = epochs.dataset(0).num_contexts[max_window:-max_window]  # 2 * window
    sizes = np.bincount(interior // 2, minlength=max_window + 1)[1:]
    assert sizes.sum() == len(interior)
    assert_chi_square_fits(sizes, np.ones(max_window))


def test_noise_avoids_contexts_and_keeps_the_conditional_distribution():
    counts = np.array([0, 100, 50, 30, 20, 10], dtype=np.int64)
    # Sentences "1 2": each centre's one context is the other; noise must avoid it.
    corpus = EncodedCorpus.from_ids([[1, 2]] * 3000)
    data = EpochData(corpus, counts, max_window_size=1, num_noise_words=5, t=1.0,
                     batch_size=64, seed=9).dataset(0)
    assert data.lengths.tolist() == [6] * 6000
    noise = data.contexts_negatives[:, 1:6]
    assert not noise[data.centers == 1].__eq__(2).any()
    assert not noise[data.centers == 2].__eq__(1).any()
    assert not (noise == 0).any() and not data.contexts_negatives[:, 6:].any()
    rows_of_one = noise[data.centers == 1].ravel()  # noise of centre 1 never draws 2
    observed = np.bincount(rows_of_one, minlength=6)[[1, 3, 4, 5]]
    assert_chi_square_fits(observed, counts[[1, 3, 4, 5]] ** 0.75)


def test_ptb_epoch_matches_the_chapters_size(ptb_data):
    from common.corpus import read_ptb

    sentences = read_ptb(ptb_data).sentences
    vocab = Vocab(sentences, min_freq=10)
    corpus = vocab.encode(sentences)
    epochs = EpochData(corpus, vocab.counts, max_window_size=5, num_noise_words=5, t=1e-4,
                       batch_size=512, seed=0)
    data = epochs.dataset(0)
    # The chapter prints "# center-context pairs: 1503420" for its random draw.
    assert 1.45e6 < data.num_contexts.sum() < 1.55e6
    assert 330_000 < data.num_examples < 355_000
    # keep("the") = sqrt(1e-4 * 820056 / 50770) = 0.0402: about 2040 of 50770 stay, sd 44.
    the = int((data.centers == vocab["the"]).sum())
    assert abs(the - 0.0402 * 50770) < 5 * 44
    assert int((data.centers == vocab["join"]).sum()) == 45  # rare: always kept


@pytest.mark.parametrize("sentences", [[[0, 0, 0], [0, 0]], [[3], [4], []]])
def test_no_pair_is_a_one_line_data_error(sentences):
    corpus = EncodedCorpus.from_ids(sentences)
    with pytest.raises(DataError, match="yields no centre/context pair") as error:
        EpochData(corpus, np.array([5, 1, 1, 1, 1]), max_window_size=2, num_noise_words=2,
                  t=1.0, batch_size=4, seed=0)
    assert "\n" not in str(error.value) and "--min-freq" in str(error.value)


def test_a_vocabulary_too_small_for_noise_is_a_data_error():
    epochs = EpochData(EncodedCorpus.from_ids([[1, 1, 1]]), np.array([0, 3]), max_window_size=1,
                       num_noise_words=1, t=1.0, batch_size=2, seed=0)
    with pytest.raises(DataError, match="differ from the context words"):
        list(epochs.batches(0))


def test_memory_is_the_plan_not_the_padded_epoch():
    """The plan is 8 bytes per centre; batches are made one at a time (tracemalloc), unless
    the epoch's rows fit `materialize_bytes` (not here: 0)."""
    import tracemalloc

    rng = np.random.default_rng(12)
    lengths = rng.integers(5, 35, size=5000)
    tokens = (rng.zipf(1.3, size=int(lengths.sum())) % 2000 + 1).astype(np.int32)
    corpus = EncodedCorpus(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    counts = np.bincount(tokens, minlength=2001)
    tracemalloc.start()
    try:
        epochs = EpochData(corpus, counts, max_window_size=5, num_noise_words=5, t=1.0,
                           batch_size=256, seed=0, materialize_bytes=0)  # made one by one
        for _ in epochs.batches(0):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    centres = epochs.num_examples(0)  # ~100k: the padded epoch would be 100k x 60 x 4 = 24 MB
    padded = centres * 60 * 4
    assert peak < padded / 4, (peak, padded)
    assert peak < 8 * len(tokens) + 4 * centres + 3 * 2**20, peak
