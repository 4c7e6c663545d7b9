"""What the pipeline samples from: the noise distribution (counts**0.75) and the example rows.

The chapter's `subsample`, `get_centers_and_contexts` and `get_negatives` loop over tokens
in Python; `common.stream` draws the same distributions as whole-array NumPy operations keyed
by corpus position. Here live the pieces with no notion of position: the alias-table noise
sampler (uniforms in, words out), the padded rows of an epoch, and the no-pairs error.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import DataError
from common.vocab import EncodedCorpus

NOISE_POWER = 0.75


class SkipGramData(NamedTuple):
    """Every training example of an epoch, padded to the widest possible row.

    Row i is `contexts_negatives[i, :lengths[i]]`: `num_contexts[i]` context words, then
    `K * num_contexts[i]` noise words; the rest is 0. Width = 2 * max_window_size * (1 + K).
    """

    centers: np.ndarray             # (N,) int32
    contexts_negatives: np.ndarray  # (N, Lmax) int32
    num_contexts: np.ndarray        # (N,) int64
    lengths: np.ndarray             # (N,) int64, num_contexts * (1 + K)

    @property
    def num_examples(self) -> int:
        return len(self.centers)


class NoiseSampler:
    """Draws word indices 1..V-1 with probability proportional to counts**0.75.

    Walker's alias method: one uniform per draw, O(1) each; on PTB's 6,718 words it is
    1.5-2x faster than a binary search of the cumulative weights (`random.choices`).
    The chapter's `RandomGenerator` only caches draws; a NumPy Generator needs no cache.
    """

    def __init__(self, counts: np.ndarray) -> None:
        weights = np.asarray(counts, dtype=np.float64)[1:] ** NOISE_POWER
        if len(weights) == 0 or not weights.sum() > 0:
            raise DataError("the vocabulary has no word besides <unk> to draw noise from: "
                            "use a larger corpus or lower --min-freq")
        self.probabilities = weights / weights.sum()  # (V-1,), index j is word j + 1
        self._accept, self._alias = _alias_table(self.probabilities)

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """(size,) int32 word indices in 1..V-1."""
        return self.from_uniform(rng.random(size))

    def from_uniform(self, uniform: np.ndarray) -> np.ndarray:
        """One word per uniform in [0, 1): (n,) float64 -> (n,) int32 in 1..V-1."""
        count = len(self._accept)
        scaled = uniform * count
        column = scaled.astype(np.int32)
        np.minimum(column, count - 1, out=column)  # guards u * count rounding up to count
        scaled -= column  # the fraction decides between the column and its alias
        accepted = scaled < self._accept[column]
        drawn = self._alias[column]
        np.copyto(drawn, column, where=accepted)
        drawn += 1
        return drawn


def _alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's construction: column j keeps j with `accept[j]`, else gives `alias[j]`."""
    count = len(probabilities)
    scaled = probabilities * count
    accept = np.ones(count, dtype=np.float64)
    alias = np.arange(count, dtype=np.int32)
    small = np.flatnonzero(scaled < 1.0).tolist()
    large = np.flatnonzero(scaled >= 1.0).tolist()
    scaled = scaled.tolist()
    while small and large:  # O(V) Python steps, once per sampler (ms on PTB)
        low, high = small.pop(), large[-1]
        accept[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        if scaled[high] < 1.0:
            small.append(large.pop())
    return accept, alias  # leftovers keep accept = 1 (rounding), as Vose prescribes


def context_reach(max_window_size: int, longest_sentence: int) -> int:
    """How far from its centre a context word can be: the window, or the longest sentence less one.

    A window wider than every sentence gives no more context words; padding rows to the window
    would only allocate zeros (6.1 GB of them for a 15,000-token corpus and a huge window).
    """
    return max(1, min(max_window_size, longest_sentence - 1))


def no_pairs_error(corpus: EncodedCorpus, counts: np.ndarray) -> DataError:
    """The one-line error for a corpus that leaves nothing to train on."""
    return DataError(f"the corpus ({len(corpus.tokens)} tokens, {len(corpus.offsets) - 1} "
                     f"sentences, vocabulary {len(counts)}) yields no centre/context pair "
                     f"after <unk> removal and subsampling: use a larger corpus or lower "
                     f"--min-freq")
