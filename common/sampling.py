"""From an encoded corpus to skip-gram training examples, as the chapter samples them.

The chapter's `subsample`, `get_centers_and_contexts` and `get_negatives` loop over tokens
in Python; here each step is a handful of whole-array NumPy operations on the flat corpus,
drawing from one `numpy.random.Generator`, with the same distributions:

1. `subsample`: drop `<unk>`, keep word w with probability min(1, sqrt(t / f(w))).
2. `centers_and_contexts`: every position of a sentence of length >= 2 is a centre; its
   window size is uniform on 1..max_window_size; contexts are the window minus the centre.
3. `draw_negatives`: K noise words per context word from counts**0.75, none equal to a
   context word of the same example (the chapter redraws; so do we, only the collisions).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import DataError
from common.vocab import EncodedCorpus

NOISE_POWER = 0.75
# Only a vocabulary whose every word is some example's context makes redrawing endless.
_MAX_REDRAW_ROUNDS = 1000
ROWS_PER_BLOCK = 4096  # rows of noise drawn at a time (`preflight` counts their temporaries)
MEMBER_CELLS = 1 << 23  # at most 8 MB of membership bitmap at a time


class Pairs(NamedTuple):
    """Centres with their contexts, one row per centre, contexts left-aligned."""

    centers: np.ndarray       # (N,) int32
    contexts: np.ndarray      # (N, 2 * reach) int32, in sentence order, 0-padded
    num_contexts: np.ndarray  # (N,) int64, >= 1


class SkipGramData(NamedTuple):
    """Every training example of an epoch, padded to the widest possible row.

    Row i is `contexts_negatives[i, :lengths[i]]`: `num_contexts[i]` context words, then
    `K * num_contexts[i]` noise words; the rest is 0. Width = 2 * reach * (1 + K), where the
    reach is the window capped by the longest sentence (`context_reach`).
    """

    centers: np.ndarray             # (N,) int32
    contexts_negatives: np.ndarray  # (N, Lmax) int32
    num_contexts: np.ndarray        # (N,) int64
    lengths: np.ndarray             # (N,) int64, num_contexts * (1 + K)

    @property
    def num_examples(self) -> int:
        return len(self.centers)


def subsample(corpus: EncodedCorpus, counts: np.ndarray, t: float,
              rng: np.random.Generator) -> EncodedCorpus:
    """Drop `<unk>` and frequent words, keeping sentence boundaries (some become empty).

    f(w) = counts[w] / counts[1:].sum(): the vocabulary counts are the chapter's `counter`
    (built on the corpus after dropping `<unk>`, before the keep test). The chapter keeps a
    token when `uniform(0, 1) < sqrt(t / counter[w] * num_tokens)`; so do we.
    Shapes: corpus.tokens (T,) -> (T',) int32 with T' <= T.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts[1:].sum()
    # A count of 0 (a vocabulary from another corpus) gives inf: such a word is kept.
    with np.errstate(divide="ignore", invalid="ignore"):
        keep_probability = np.sqrt(t * total / counts)
    keep_probability[0] = 0.0
    keep = rng.random(len(corpus.tokens)) < keep_probability[corpus.tokens]
    kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return EncodedCorpus(corpus.tokens[keep], kept_before[corpus.offsets])


def context_reach(max_window_size: int, longest_sentence: int) -> int:
    """How far from its centre a context word can be: the window, or the longest sentence less one.

    A window wider than every sentence gives no more context words; padding to the window
    would only allocate zeros (6.1 GB of them for a 15,000-token corpus and a huge window).
    """
    return max(1, min(max_window_size, longest_sentence - 1))


def centers_and_contexts(corpus: EncodedCorpus, max_window_size: int,
                         rng: np.random.Generator, *, reach: int | None = None) -> Pairs:
    """Every position of every sentence of length >= 2, with a random symmetric window.

    The window of centre i is [i - w, i + w] clipped to its sentence, minus i, where w is
    uniform on 1..max_window_size, drawn once per centre (the chapter's `random.randint`).
    Rows are `2 * reach` wide: `reach` (default: this corpus' `context_reach`) caps the padding
    at what the longest sentence can give, and never changes the draw. Callers that build an
    epoch in pieces pass the whole corpus' reach, so every piece has the same width.
    Shapes: corpus.tokens (T,) -> Pairs with N = tokens in sentences of length >= 2.
    """
    lengths = corpus.lengths
    if reach is None:
        reach = context_reach(max_window_size, int(lengths.max(initial=0)))
    in_long_sentence = np.repeat(lengths >= 2, lengths)
    positions = np.flatnonzero(in_long_sentence)
    # Room left and right of each centre inside its sentence.
    sentence_end = np.repeat(corpus.offsets[1:], lengths)[in_long_sentence]
    room_left = positions - np.repeat(corpus.offsets[:-1], lengths)[in_long_sentence]
    room_right = sentence_end - 1 - positions
    window = rng.integers(1, max_window_size + 1, size=len(positions))
    left = np.minimum(window, room_left)
    right = np.minimum(window, room_right)
    # Candidate offsets -M..-1, 1..M in sentence order, so contexts come out left to right.
    offsets = np.concatenate([np.arange(-reach, 0), np.arange(1, reach + 1)])
    is_context = np.where(offsets < 0, -offsets <= left[:, None], offsets <= right[:, None])
    num_contexts = left + right
    context_positions = (positions[:, None] + offsets)[is_context]
    contexts = np.zeros((len(positions), 2 * reach), dtype=np.int32)
    # Row-major boolean assignment keeps each row's order and left-aligns it.
    contexts[np.arange(2 * reach) < num_contexts[:, None]] = \
        corpus.tokens[context_positions]
    return Pairs(corpus.tokens[positions], contexts, num_contexts.astype(np.int64, copy=False))


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
        count = len(self._accept)
        scaled = rng.random(size)
        scaled *= count
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


def draw_negatives(pairs: Pairs, sampler: NoiseSampler, num_noise_words: int,
                   rng: np.random.Generator) -> SkipGramData:
    """Add K noise words per context word, none equal to one of the example's contexts.

    Noise is drawn straight into the padded rows; collisions with a context word of the
    same row are redrawn until none is left. Every slot is thus an independent draw
    conditioned on avoiding the contexts: the distribution of the chapter's redraw loop.
    Shapes: Pairs (N,), (N, 2M) -> SkipGramData with rows of width 2M(1 + K).
    """
    num_rows, context_width = pairs.contexts.shape
    lengths = pairs.num_contexts * (1 + num_noise_words)
    contexts_negatives = np.zeros((num_rows, context_width * (1 + num_noise_words)),
                                  dtype=np.int32)
    contexts_negatives[:, :context_width] = pairs.contexts
    # The collision bitmap, all zeros between uses: allocated once, not once per block (its
    # pages would fault in again every time).
    vocab = len(sampler.probabilities) + 1
    group_rows = min(max(1, MEMBER_CELLS // vocab), ROWS_PER_BLOCK, max(num_rows, 1))
    member = np.zeros((group_rows, vocab), dtype=bool)
    # Blocks of rows keep every temporary in cache: on PTB this halves the time.
    for start in range(0, num_rows, ROWS_PER_BLOCK):
        block = slice(start, start + ROWS_PER_BLOCK)
        _fill_noise(contexts_negatives[block], pairs.contexts[block],
                    pairs.num_contexts[block], lengths[block], sampler, rng, member)
    return SkipGramData(pairs.centers, contexts_negatives, pairs.num_contexts, lengths)


def _fill_noise(rows: np.ndarray, contexts: np.ndarray, num_contexts: np.ndarray,
                lengths: np.ndarray, sampler: NoiseSampler, rng: np.random.Generator,
                member: np.ndarray) -> None:
    """Write noise into slots num_contexts..lengths-1 of each row of `rows` (a C-contiguous view).

    Collisions are found with `member`, a (group, V) all-false bitmap covering `group` rows at
    a time (left all false): one write per context word and one read per draw, where comparing
    every slot with every context column cost 2M reads per slot (3x slower on PTB with a
    window of 10). Draws, collisions and redraws come in the same order as before, so a seed
    gives the same noise words.
    """
    if not rows.flags.c_contiguous:
        raise ValueError("rows must be C-contiguous: the noise is written through a flat view")
    num_rows, width = rows.shape
    group, vocab = member.shape
    member = member.reshape(-1)
    noise_counts = lengths - num_contexts
    draw_starts = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(noise_counts, out=draw_starts[1:])
    total = int(draw_starts[-1])
    drawn = sampler.draw(total, rng)
    # Each draw's row and flat slot, in row-major order (the order a boolean mask fills).
    row_of = np.repeat(np.arange(num_rows), noise_counts)
    slot_of = np.repeat(np.arange(num_rows) * width + num_contexts - draw_starts[:-1],
                        noise_counts)
    slot_of += np.arange(total)
    flat_rows = rows.reshape(-1)  # a view, `rows` being contiguous
    flat_rows[slot_of] = drawn
    collides = np.empty(total, dtype=bool)
    context_columns = np.arange(contexts.shape[1])
    for start in range(0, num_rows, group):
        stop = min(start + group, num_rows)
        in_row = context_columns < num_contexts[start:stop, None]
        keys = np.repeat(np.arange(stop - start) * vocab, num_contexts[start:stop])
        keys += contexts[start:stop][in_row]
        member[keys] = True
        first, last = draw_starts[start], draw_starts[stop]
        np.take(member, (row_of[first:last] - start) * vocab + drawn[first:last],
                out=collides[first:last])
        member[keys] = False
    row_index, slot = row_of[collides], slot_of[collides]
    for _ in range(_MAX_REDRAW_ROUNDS):
        if len(row_index) == 0:
            return
        redrawn = sampler.draw(len(row_index), rng)
        still = (contexts[row_index] == redrawn[:, None]).any(axis=1)
        flat_rows[slot[~still]] = redrawn[~still]
        row_index, slot = row_index[still], slot[still]
    raise DataError("cannot draw noise words that differ from the context words: the "
                    "vocabulary is too small; use a larger corpus or lower --min-freq")


def build_dataset(corpus: EncodedCorpus, counts: np.ndarray, *, max_window_size: int,
                  num_noise_words: int, t: float, rng: np.random.Generator,
                  sampler: NoiseSampler | None = None) -> SkipGramData:
    """Subsample, cut windows and draw noise: one epoch's examples (the chapter's dataset).

    `sampler` may be passed to reuse its alias table across epochs.
    Shapes: corpus (T,) tokens, counts (V,) -> SkipGramData with N centres.
    """
    pairs = centers_and_contexts(subsample(corpus, counts, t, rng), max_window_size, rng)
    if len(pairs.centers) == 0:
        raise no_pairs_error(corpus, counts)
    return draw_negatives(pairs, sampler or NoiseSampler(counts), num_noise_words, rng)


def no_pairs_error(corpus: EncodedCorpus, counts: np.ndarray) -> DataError:
    """The one-line error for a corpus that leaves nothing to train on."""
    return DataError(f"the corpus ({len(corpus.tokens)} tokens, {len(corpus.offsets) - 1} "
                     f"sentences, vocabulary {len(counts)}) yields no centre/context pair "
                     f"after <unk> removal and subsampling: use a larger corpus or lower "
                     f"--min-freq")


def num_centers(corpus: EncodedCorpus) -> int:
    """Centres `centers_and_contexts` would give: tokens in sentences of length >= 2."""
    lengths = corpus.lengths
    return int(lengths[lengths >= 2].sum())


def take_sentences(corpus: EncodedCorpus, sentences: np.ndarray) -> EncodedCorpus:
    """The sentences at indices `sentences`, in that order, as a new flat corpus.

    One gather, no Python loop per sentence. Shapes: (S,) indices -> corpus of their tokens.
    """
    sentences = np.asarray(sentences, dtype=np.int64)
    starts = corpus.offsets[sentences]
    lengths = corpus.offsets[sentences + 1] - starts  # not corpus.lengths: O(chunk), not O(S)
    offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Position p of the new corpus reads old position p + (old start - new start) of its sentence.
    shift = np.repeat(starts - offsets[:-1], lengths)
    shift += np.arange(offsets[-1], dtype=np.int64)
    return EncodedCorpus(corpus.tokens[shift], offsets)

