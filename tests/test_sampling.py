"""Sampling: subsampling, windows and noise follow the chapter's distributions and exclusions.

Statistical tests use fixed seeds (so they are deterministic) and a 0.1 % chi-square level.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import DataError
from common.sampling import (NoiseSampler, Pairs, build_dataset, centers_and_contexts,
                             draw_negatives, num_centers, subsample, take_sentences)
from common.vocab import EncodedCorpus, Vocab

# chi2.ppf(0.999, df) for the degrees of freedom used here, in case SciPy is missing.
_CHI2_999 = {4: 18.467, 2: 13.816, 20: 45.315}


def assert_chi_square_fits(observed: np.ndarray, expected_probabilities: np.ndarray) -> None:
    """Counts agree with the probabilities at the 0.1 % level (Pearson's chi-square)."""
    expected = expected_probabilities / expected_probabilities.sum() * observed.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    degrees = len(observed) - 1
    try:
        from scipy.stats import chi2

        critical = float(chi2.ppf(0.999, degrees))
    except ImportError:
        critical = _CHI2_999[degrees]
    assert statistic < critical, (statistic, critical, observed.tolist(), expected.tolist())


@pytest.fixture(scope="module")
def ptb(ptb_data) -> tuple[Vocab, EncodedCorpus]:
    from common.corpus import read_ptb

    sentences = read_ptb(ptb_data).sentences
    vocab = Vocab(sentences, min_freq=10)
    return vocab, vocab.encode(sentences)


def test_subsampling_on_ptb_keeps_the_rarely_and_join_always(ptb):
    vocab, corpus = ptb
    kept = subsample(corpus, vocab.counts, 1e-4, np.random.default_rng(0))
    before, after = np.bincount(corpus.tokens, minlength=len(vocab)), \
        np.bincount(kept.tokens, minlength=len(vocab))
    assert after[0] == 0  # <unk> is gone
    assert before[vocab["the"]] == 50770 and after[vocab["the"]] < 50770 / 20
    assert after[vocab["join"]] == before[vocab["join"]] == 45
    # keep("the") = sqrt(1e-4 * 820056 / 50770) = 0.0402: 2040 expected, sd 44
    assert abs(after[vocab["the"]] - 0.0402 * 50770) < 5 * 44
    assert len(kept.offsets) == len(corpus.offsets)


def test_subsampling_keeps_with_probability_sqrt_t_over_f():
    counts = np.array([50, 1000, 400, 100, 10], dtype=np.int64)  # index 0: <unk>
    rng = np.random.default_rng(1)
    tokens = np.repeat(np.arange(5, dtype=np.int32), counts * 20)
    rng.shuffle(tokens)
    corpus = EncodedCorpus(tokens, np.array([0, len(tokens) // 2, len(tokens)], dtype=np.int64))
    t = 0.02
    frequency = counts[1:] / counts[1:].sum()
    keep = np.minimum(1, np.sqrt(t / frequency))
    kept = subsample(corpus, counts, t, rng)
    kept_counts = np.bincount(kept.tokens, minlength=5)
    assert kept_counts[0] == 0
    trials = counts[1:] * 20
    sd = np.sqrt(trials * keep * (1 - keep))
    assert np.all(np.abs(kept_counts[1:] - trials * keep) <= 4 * sd + 1e-9), kept_counts
    assert kept_counts[4] == trials[3]  # a rare word (keep = 1) always stays
    # Sentences keep their boundaries and their order: each is a subsequence of the original.
    for original, subsampled in zip(corpus.to_lists(), kept.to_lists()):
        iterator = iter(original)
        assert all(token in iterator for token in subsampled)


def test_the_chapters_tiny_dataset_gives_symmetric_windows_of_size_one_or_two():
    tiny = [list(range(7)), list(range(7, 10))]
    seen_sizes = set()
    for seed in range(5):
        pairs = centers_and_contexts(EncodedCorpus.from_ids(tiny), 2, np.random.default_rng(seed))
        assert pairs.centers.tolist() == list(range(10))
        assert pairs.contexts.shape == (10, 4) and pairs.contexts.dtype == np.int32
        for center, row, count in zip(pairs.centers, pairs.contexts, pairs.num_contexts):
            sentence = tiny[0] if center < 7 else tiny[1]
            i = sentence.index(center)
            windows = {size: sentence[max(0, i - size):i] + sentence[i + 1:i + 1 + size]
                       for size in (1, 2)}
            contexts = row[:count].tolist()
            matching = [size for size, window in windows.items() if window == contexts]
            assert matching, (center, contexts)
            if len(matching) == 1:  # near a sentence end both sizes can give one window
                seen_sizes.add(matching[0])
            assert not row[count:].any()  # zero padding
    assert seen_sizes == {1, 2}
    # One seed, exactly: the first sentence's centre 3 has either [2, 4] or [1, 2, 4, 5].
    pairs = centers_and_contexts(EncodedCorpus.from_ids(tiny), 2, np.random.default_rng(0))
    assert pairs.contexts[3, :pairs.num_contexts[3]].tolist() in ([2, 4], [1, 2, 4, 5])
    assert pairs.contexts[9, :pairs.num_contexts[9]].tolist() in ([8], [7, 8])


def test_short_sentences_have_no_centres():
    corpus = EncodedCorpus.from_ids([[5], [], [1, 2], [3]])
    pairs = centers_and_contexts(corpus, 3, np.random.default_rng(0))
    assert pairs.centers.tolist() == [1, 2]
    assert pairs.num_contexts.tolist() == [1, 1]
    assert pairs.contexts[:, 0].tolist() == [2, 1]


def test_window_sizes_are_uniform():
    max_window = 5
    corpus = EncodedCorpus.from_ids([list(range(1, 40001))])
    pairs = centers_and_contexts(corpus, max_window, np.random.default_rng(2))
    interior = pairs.num_contexts[max_window:-max_window]  # never clipped: 2 * window
    sizes = np.bincount(interior // 2, minlength=max_window + 1)[1:]
    assert sizes.sum() == len(interior)
    assert_chi_square_fits(sizes, np.ones(max_window))


def test_noise_sampler_alias_table_is_exact():
    counts = np.array([999, 5000, 1, 300, 300, 42, 0, 7], dtype=np.int64)
    sampler = NoiseSampler(counts)
    expected = counts[1:] ** 0.75 / (counts[1:] ** 0.75).sum()
    assert np.allclose(sampler.probabilities, expected)
    # Probability of word j from the table: its own column's acceptance plus what others alias.
    size = len(expected)
    from_table = sampler._accept.copy()
    np.add.at(from_table, sampler._alias, 1 - sampler._accept)
    assert np.allclose(from_table / size, expected, atol=1e-12)


def test_noise_frequencies_follow_counts_to_the_three_quarters():
    ranks = np.arange(1, 301)
    counts = np.concatenate([[10_000], (50_000 / ranks).astype(np.int64)])
    sampler = NoiseSampler(counts)
    drawn = sampler.draw(300_000, np.random.default_rng(3))
    assert drawn.dtype == np.int32 and drawn.min() >= 1 and drawn.max() <= 300
    observed = np.bincount(drawn, minlength=301)[1:]
    weights = counts[1:] ** 0.75
    top = 20  # the top words one by one, the rest pooled
    assert_chi_square_fits(np.append(observed[:top], observed[top:].sum()),
                           np.append(weights[:top], weights[top:].sum()))


def test_noise_is_never_unk_nor_a_zero_count_word():
    counts = np.array([10**6, 3, 0, 5], dtype=np.int64)
    drawn = NoiseSampler(counts).draw(20_000, np.random.default_rng(4))
    assert set(np.unique(drawn).tolist()) == {1, 3}


def test_noise_avoids_contexts_and_keeps_the_conditional_distribution():
    counts = np.array([0, 100, 50, 30, 20, 10], dtype=np.int64)
    rows = 4000
    contexts = np.zeros((rows, 4), dtype=np.int32)
    contexts[:, :2] = [1, 2]  # the two most likely noise words are forbidden everywhere
    pairs = Pairs(np.full(rows, 5, dtype=np.int32), contexts, np.full(rows, 2, dtype=np.int64))
    data = draw_negatives(pairs, NoiseSampler(counts), 5, np.random.default_rng(5))
    assert data.contexts_negatives.shape == (rows, 4 * 6)
    assert data.lengths.tolist() == [12] * rows
    noise = data.contexts_negatives[:, 2:12]
    assert not np.isin(noise, [0, 1, 2]).any()
    assert not data.contexts_negatives[:, 12:].any()
    observed = np.bincount(noise.ravel(), minlength=6)[3:]
    assert_chi_square_fits(observed, counts[3:] ** 0.75)


def test_noise_collisions_are_found_whatever_the_bitmap_grouping(monkeypatch):
    """The membership bitmap covers a group of rows at a time; the grouping changes nothing."""
    import common.sampling as sampling

    rng = np.random.default_rng(11)
    rows, width = 3000, 6
    counts = np.arange(12, dtype=np.int64) ** 2  # 11 words, the frequent ones collide often
    num_contexts = rng.integers(1, width + 1, size=rows)
    contexts = np.where(np.arange(width) < num_contexts[:, None],
                        rng.integers(1, 12, size=(rows, width)), 0).astype(np.int32)
    pairs = Pairs(np.ones(rows, dtype=np.int32), contexts, num_contexts.astype(np.int64))

    def draw(cells: int) -> np.ndarray:
        monkeypatch.setattr(sampling, "MEMBER_CELLS", cells)
        return draw_negatives(pairs, NoiseSampler(counts), 3,
                              np.random.default_rng(12)).contexts_negatives

    whole, grouped, row_by_row = draw(1 << 23), draw(12 * 7), draw(1)
    assert np.array_equal(whole, grouped) and np.array_equal(whole, row_by_row)
    for row in range(rows):
        count = num_contexts[row]
        noise = whole[row, count:4 * count]
        assert noise.all() and not np.isin(noise, contexts[row, :count]).any()
        assert not whole[row, 4 * count:].any()


def test_dataset_rows_are_contexts_then_noise_then_padding():
    rng = np.random.default_rng(6)
    tokens = rng.integers(1, 40, size=3000).astype(np.int32)
    corpus = EncodedCorpus(tokens, np.array([0, 5, 6, 1000, 3000], dtype=np.int64))
    counts = np.bincount(tokens, minlength=40)
    data = build_dataset(corpus, counts, max_window_size=3, num_noise_words=4, t=1.0, rng=rng)
    assert data.contexts_negatives.shape == (data.num_examples, 2 * 3 * 5)
    assert data.centers.dtype == np.int32 and data.contexts_negatives.dtype == np.int32
    assert np.array_equal(data.lengths, data.num_contexts * 5)
    assert data.num_examples == 2999  # t = 1 keeps every word; the 1-word sentence has none
    for row in range(0, data.num_examples, 97):
        count, length = data.num_contexts[row], data.lengths[row]
        contexts = data.contexts_negatives[row, :count]
        noise = data.contexts_negatives[row, count:length]
        assert 1 <= count <= 6 and contexts.all() and noise.all()
        assert not np.isin(noise, contexts).any()
        assert not data.contexts_negatives[row, length:].any()


def test_same_seed_same_dataset():
    corpus = EncodedCorpus.from_ids([list(range(1, 30)) * 3, list(range(5, 25))])
    counts = np.bincount(corpus.tokens, minlength=30)
    first, second = (build_dataset(corpus, counts, max_window_size=4, num_noise_words=3, t=0.01,
                                   rng=np.random.default_rng(7)) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_ptb_dataset_matches_the_chapters_size(ptb):
    vocab, corpus = ptb
    data = build_dataset(corpus, vocab.counts, max_window_size=5, num_noise_words=5, t=1e-4,
                         rng=np.random.default_rng(0))
    # The chapter prints "# center-context pairs: 1503420" for its random draw.
    assert 1.45e6 < data.num_contexts.sum() < 1.55e6
    assert 330_000 < data.num_examples < 355_000
    assert data.contexts_negatives.shape[1] == 60
    sample = np.random.default_rng(1).choice(data.num_examples, 2000, replace=False)
    for row in sample:
        count, length = data.num_contexts[row], data.lengths[row]
        assert not np.isin(data.contexts_negatives[row, count:length],
                           data.contexts_negatives[row, :count]).any()


@pytest.mark.parametrize("sentences", [[[0, 0, 0], [0, 0]], [[3], [4], []]])
def test_no_pair_is_a_one_line_data_error(sentences):
    corpus = EncodedCorpus.from_ids(sentences)
    with pytest.raises(DataError, match="yields no centre/context pair") as error:
        build_dataset(corpus, np.array([5, 1, 1, 1, 1]), max_window_size=2, num_noise_words=2,
                      t=1.0, rng=np.random.default_rng(0))
    assert "\n" not in str(error.value) and "--min-freq" in str(error.value)


def test_a_vocabulary_too_small_for_noise_is_a_data_error():
    corpus = EncodedCorpus.from_ids([[1, 1, 1]])
    with pytest.raises(DataError, match="differ from the context words"):
        build_dataset(corpus, np.array([0, 3]), max_window_size=1, num_noise_words=1, t=1.0,
                      rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="no word besides <unk>"):
        NoiseSampler(np.array([7]))


def test_take_sentences_gathers_whole_sentences_in_the_given_order():
    corpus = EncodedCorpus.from_ids([[1, 2, 3], [], [4], [5, 6]])
    taken = take_sentences(corpus, np.array([3, 0, 1, 3]))
    assert taken.to_lists() == [[5, 6], [1, 2, 3], [], [5, 6]]
    assert take_sentences(corpus, np.array([], dtype=np.int64)).to_lists() == []
    # Centres: tokens of sentences with at least two tokens, as centers_and_contexts finds them.
    pairs = centers_and_contexts(corpus, 2, np.random.default_rng(0))
    assert num_centers(corpus) == 5 == len(pairs.centers)
