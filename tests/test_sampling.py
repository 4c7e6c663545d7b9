"""The noise distribution: the alias table draws counts**0.75 (keyed draws: test_stream.py).

Statistical tests use fixed seeds (so they are deterministic) and a 0.1 % chi-square level.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import DataError
from common.sampling import NoiseSampler

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


def test_a_vocabulary_too_small_for_noise_is_a_data_error():
    with pytest.raises(DataError, match="no word besides <unk>"):
        NoiseSampler(np.array([7]))
