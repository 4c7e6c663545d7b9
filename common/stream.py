"""The streaming data pipeline: batches made on demand from a small per-epoch plan.

Every random draw is keyed by *position*, not by the order in which it is made: a counter-based
generator (`keyed_uniform`: the SplitMix64 finaliser of key + counter) turns (stream key,
counter) into a uniform, and the key is (seed, purpose) for `static` sampling (the chapter
samples once) or (seed, epoch, purpose) for `resample`. The counters are corpus positions:

- subsampling: token p is kept when `u(keep, p) < min(1, sqrt(t / f(w)))` (`<unk>` never);
- windows: the centre at position p gets `1 + floor(u(window, p) * max_window_size)`;
- noise: slot s of the centre at p draws `u(noise_r, p * slots + s)` through the alias table,
  redrawn with round r + 1 while it equals one of the row's context words.

A batch is therefore a pure function of (seed, epoch, its centres), the same whichever chunk
of the plan or of the batch made it, whichever thread, and after any resume.

The plan of an epoch is two arrays of one word each per centre: `centres`, the sorted corpus
positions of the kept tokens of sentences that keep at least two (exactly the chapter's
centres after subsampling), and `order`, their shuffled order. In a sorted `centres` the
neighbours of a centre inside its subsampled sentence are its neighbours in the array, so a
batch's contexts are a gather of `centres[i - w .. i + w]` limited to the sentence. Memory:
8 bytes per centre (4 + 4 while the corpus has fewer than 2**32 tokens) for the plan, plus
O(batch) per batch, plus the corpus itself (memory-mapped from the token cache for a file).
A small epoch, whose padded rows fit `MATERIALIZE_BYTES` (PTB: 82 MB), has its rows drawn
whole (static: once; resample: each epoch) and its batches gathered from them: the same rows,
the drawing off the training step's path.
"""
from __future__ import annotations

import functools
from typing import Iterator, NamedTuple

import numpy as np

from common.batching import Batch, _make_batch, num_batches
from common.config import SAMPLING_MODES, TrainConfig
from common.errors import DataError
from common.sampling import NoiseSampler, SkipGramData, context_reach, no_pairs_error
from common.vocab import EncodedCorpus

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Purposes mixed into each stream key, so no two kinds of draw share a stream.
_KEEP, _WINDOW, _NOISE, _ORDER = 1, 2, 3, 4
_STATIC_EPOCH = 0  # static streams use "epoch" 0; resample uses epoch + 1
# Only a vocabulary whose every word is some example's context makes redrawing endless.
_MAX_REDRAW_ROUNDS = 1000
PLAN_CHUNK_TOKENS = 1 << 20
# An epoch whose padded rows fit in this many bytes is made whole, a chunk of centres at a
# time, when its first batch is asked for; its batches are then gathers of those rows. The
# rows are the ones the batches would draw (position-keyed), so the batches are the same; on
# PTB (82 MB) this takes the drawing off the step's critical path: making each batch apart
# cost torch 38% of its speed on 2 cores (156,156 against 251,819 centre words/s).
MATERIALIZE_BYTES = 256 << 20
ROWS_CHUNK = 1 << 12


@functools.lru_cache(maxsize=1024)
def stream_key(*parts: int) -> int:
    """A 64-bit stream key from integers (seed, epoch, purpose, round): SeedSequence-mixed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


def keyed_uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1), one per counter, a pure function of (key, counter).

    SplitMix64's output function on state `key + counter * golden`: each counter's value
    is independent of which others are drawn with it. Shapes: (...,) uint64-able -> float64.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(counters, dtype=np.uint64) * _GOLDEN
        z += np.uint64(key)
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    z >>= np.uint64(11)  # 53 bits: exact in a float64
    return z.astype(np.float64) * (1.0 / (1 << 53))


def keep_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """(V,) float64: min(1, sqrt(t / f(w))) with f over the non-<unk> counts; `<unk>` 0.

    A count of 0 (a vocabulary from another corpus) gives inf: such a word is kept.
    """
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.sqrt(t * counts[1:].sum() / counts)
    keep[0] = 0.0
    return keep


class EpochPlan(NamedTuple):
    """One epoch's centres (sorted corpus positions) and the order the batches take them."""

    centres: np.ndarray  # (N,) uint32 (int64 past 2**32 tokens), sorted
    order: np.ndarray    # (N,) uint32 (int64 past 2**32 centres): indices into centres

    @property
    def num_examples(self) -> int:
        return len(self.centres)


class Rows(NamedTuple):
    """Examples before padding to a batch: what `_make_batch` needs."""

    centers: np.ndarray             # (n,) int32
    contexts_negatives: np.ndarray  # (n, 2M(1 + K)) int32, 0-padded
    num_contexts: np.ndarray        # (n,) int64
    lengths: np.ndarray             # (n,) int64


def _index_dtype(limit: int) -> type:
    return np.uint32 if limit < 2**32 else np.int64


def find_centres(corpus: EncodedCorpus, keep_probability: np.ndarray, key: int, *,
                 chunk_tokens: int = PLAN_CHUNK_TOKENS) -> np.ndarray:
    """Sorted positions of the kept tokens of sentences that keep at least two.

    Reads the corpus chunk by chunk (whole sentences), so a memory-mapped corpus is paged
    through once; the result is written into an array of the corpus's length whose untouched
    tail is never faulted in. Shapes: corpus (T,) -> (N,) positions, N <= T.
    """
    total = len(corpus.tokens)
    found = np.empty(total, dtype=_index_dtype(total))
    filled = 0
    offsets = corpus.offsets
    sentence = 0
    num_sentences = len(offsets) - 1
    while sentence < num_sentences:
        start = int(offsets[sentence])
        # Whole sentences up to about chunk_tokens tokens (at least one sentence).
        last = int(np.searchsorted(offsets, start + chunk_tokens, side="right")) - 1
        last = min(max(last, sentence + 1), num_sentences)
        stop = int(offsets[last])
        if stop > start:
            tokens = np.asarray(corpus.tokens[start:stop])
            positions = np.arange(start, stop, dtype=np.uint64)
            kept = np.flatnonzero(keyed_uniform(key, positions) < keep_probability[tokens])
            kept += start
            bounds = offsets[sentence:last + 1]
            owner = np.searchsorted(bounds, kept, side="right") - 1
            per_sentence = np.bincount(owner, minlength=last - sentence)
            kept = kept[per_sentence[owner] >= 2]
            found[filled:filled + len(kept)] = kept
            filled += len(kept)
        sentence = last
    return found[:filled]


def make_rows(corpus: EncodedCorpus, plan: EpochPlan, indices: np.ndarray, *,
              max_window_size: int, num_noise_words: int, sampler: NoiseSampler,
              window_key: int, noise_key: int, reach: int | None = None) -> Rows:
    """The examples of plan centres `indices` (into `plan.centres`), in that order.

    Contexts come out left to right and left-aligned, noise words follow: the chapter's rows.
    `reach` (default `max_window_size`) caps how far a context can be, so a window wider than
    every sentence pads no further than a sentence can give; the window draw is unchanged.
    Shapes: (n,) indices -> Rows of width 2R(1 + K), R = reach.
    """
    reach = max_window_size if reach is None else reach
    indices = np.asarray(indices, dtype=np.int64)
    centres = plan.centres
    count = len(centres)
    positions = centres[indices].astype(np.int64)
    sentence = np.searchsorted(corpus.offsets, positions, side="right") - 1
    first, end = corpus.offsets[sentence], corpus.offsets[sentence + 1]
    window = 1 + (keyed_uniform(window_key, positions) * max_window_size).astype(np.int64)
    steps = np.concatenate([np.arange(-reach, 0), np.arange(1, reach + 1)])
    neighbour = indices[:, None] + steps
    inside = (neighbour >= 0) & (neighbour < count) & (np.abs(steps) <= window[:, None])
    neighbour_positions = centres[np.clip(neighbour, 0, count - 1)].astype(np.int64)
    inside &= (neighbour_positions >= first[:, None]) & (neighbour_positions < end[:, None])
    num_contexts = inside.sum(axis=1)
    width = 2 * reach
    rows = len(indices)
    contexts_negatives = np.zeros((rows, width * (1 + num_noise_words)), dtype=np.int32)
    # Row-major boolean assignment keeps each row's order and left-aligns it.
    context_tokens = np.asarray(corpus.tokens[neighbour_positions[inside]], dtype=np.int32)
    contexts = np.zeros((rows, width), dtype=np.int32)
    contexts[np.arange(width) < num_contexts[:, None]] = context_tokens
    contexts_negatives[:, :width] = contexts
    lengths = num_contexts * (1 + num_noise_words)
    _fill_noise(contexts_negatives, contexts, num_contexts, lengths, positions, sampler,
                noise_key)
    centre_tokens = np.asarray(corpus.tokens[positions], dtype=np.int32)
    return Rows(centre_tokens, contexts_negatives, num_contexts, lengths)


def _mix64(value: int) -> int:
    """SplitMix64's finaliser on a Python int: a cheap key for each redraw round."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def _fill_noise(rows: np.ndarray, contexts: np.ndarray, num_contexts: np.ndarray,
                lengths: np.ndarray, positions: np.ndarray, sampler: NoiseSampler,
                noise_key: int) -> None:
    """Noise in slots num_contexts..lengths-1 of each row, none equal to a context of its row.

    Slot s of the centre at p draws with counter p * width + s; a collision is redrawn from
    the next round's stream with the same counter, until none is left.
    """
    num_rows, width = rows.shape
    columns = np.arange(width)
    row_index, slot = np.nonzero((columns >= num_contexts[:, None]) &
                                 (columns < lengths[:, None]))
    counters = positions[row_index].astype(np.uint64) * np.uint64(width) + slot.astype(np.uint64)
    pending = np.arange(len(row_index))
    for round_ in range(_MAX_REDRAW_ROUNDS):
        if len(pending) == 0:
            return
        drawn = sampler.from_uniform(keyed_uniform(_mix64(noise_key ^ round_),
                                                   counters[pending]))
        clash = (contexts[row_index[pending]] == drawn[:, None]).any(axis=1)
        done = pending[~clash]
        rows[row_index[done], slot[done]] = drawn[~clash]
        pending = pending[clash]
    raise DataError("cannot draw noise words that differ from the context words: the "
                    "vocabulary is too small; use a larger corpus or lower --min-freq")


class EpochData:
    """What each epoch trains on: `static` (sampled once, the chapter) or `resample`.

    Batches are made when asked for, from the epoch's plan (`EpochPlan`), each draw keyed by
    position (module docstring): `batches(e)` is the same whenever and however it is asked
    for, so a resumed run sees what an uninterrupted one saw. `static` keys every draw by
    (seed, centre) and only reshuffles per epoch; `resample` keys by (seed, epoch, centre).
    """

    def __init__(self, corpus: EncodedCorpus, counts: np.ndarray, *, max_window_size: int,
                 num_noise_words: int, t: float, batch_size: int, seed: int,
                 mode: str = "static", fixed_length: int | None = None,
                 pad_last_batch: bool = False,
                 chunk_tokens: int = PLAN_CHUNK_TOKENS,
                 materialize_bytes: int = MATERIALIZE_BYTES) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        # Rows are as wide as the longest sentence lets a window reach (`context_reach`).
        self.reach = context_reach(max_window_size, int(corpus.lengths.max(initial=0)))
        width = 2 * self.reach * (1 + num_noise_words)
        if fixed_length is not None and fixed_length < width:
            raise ValueError(f"fixed_length {fixed_length} is shorter than the longest possible "
                             f"example ({width} slots)")
        self.corpus, self.counts, self.mode = corpus, np.asarray(counts), mode
        self.max_window_size, self.num_noise_words, self.t = max_window_size, num_noise_words, t
        self.batch_size, self.fixed_length, self.pad_last_batch = \
            batch_size, fixed_length, pad_last_batch
        self.seed, self.chunk_tokens = int(seed), chunk_tokens
        self.materialize_bytes = materialize_bytes
        self._rows: tuple[int, Rows] | None = None  # (stream, every row of the epoch), if made
        self.keep_probability = keep_probabilities(self.counts, t)
        self.sampler = NoiseSampler(self.counts)
        self._plan: tuple[int, EpochPlan] | None = None  # the latest epoch's, reused
        self._static_centres: np.ndarray | None = None
        if mode == "static":  # sampled once, before training, as the chapter does
            self._static_centres = self._centres(_STATIC_EPOCH)

    @classmethod
    def from_config(cls, corpus: EncodedCorpus, counts: np.ndarray, config: TrainConfig,
                    **options: object) -> "EpochData":
        """From a `TrainConfig` (its sampling fields and seed); `options` are fixed_length etc."""
        return cls(corpus, counts, max_window_size=config.max_window_size,
                   num_noise_words=config.num_noise_words, t=config.subsample_t,
                   batch_size=config.batch_size, mode=config.sampling, seed=config.seed,
                   **options)

    def _stream(self, epoch: int) -> int:
        """The draw streams' epoch: 0 for static (one sample), epoch + 1 for resample."""
        return _STATIC_EPOCH if self.mode == "static" else epoch + 1

    def _centres(self, stream: int) -> np.ndarray:
        centres = find_centres(self.corpus, self.keep_probability,
                               stream_key(self.seed, stream, _KEEP),
                               chunk_tokens=self.chunk_tokens)
        if len(centres) == 0:
            raise no_pairs_error(self.corpus, self.counts)
        return centres

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch `epoch`'s centres and shuffled order (cached for the latest epoch)."""
        cached = self._plan
        if cached is not None and cached[0] == epoch:
            return cached[1]
        self._plan = None  # the previous epoch's plan goes before the next one is drawn
        centres = self._static_centres if self.mode == "static" \
            else self._centres(self._stream(epoch))
        order = np.arange(len(centres), dtype=_index_dtype(len(centres)))
        # Shuffled in place: no int64 permutation the size of the epoch.
        np.random.default_rng([self.seed, epoch + 1, _ORDER]).shuffle(order)
        plan = EpochPlan(centres, order)
        self._plan = (epoch, plan)
        return plan

    def rows(self, epoch: int, indices: np.ndarray) -> Rows:
        """The examples of plan centres `indices` of epoch `epoch` (any subset, any order)."""
        stream = self._stream(epoch)
        return make_rows(self.corpus, self.plan(epoch), indices,
                         max_window_size=self.max_window_size,
                         num_noise_words=self.num_noise_words, sampler=self.sampler,
                         window_key=stream_key(self.seed, stream, _WINDOW),
                         noise_key=stream_key(self.seed, stream, _NOISE), reach=self.reach)

    def batch(self, epoch: int, index: int) -> Batch:
        """Batch `index` of epoch `epoch`, made now from the plan (or the epoch's rows)."""
        plan = self.plan(epoch)
        chosen = plan.order[index * self.batch_size:(index + 1) * self.batch_size]
        whole = self._epoch_rows(epoch, plan)
        if whole is not None:
            return self._to_batch(Rows(*(array[chosen] for array in whole)))
        return self._to_batch(self.rows(epoch, chosen))

    def _epoch_rows(self, epoch: int, plan: EpochPlan) -> Rows | None:
        """Every row of the epoch, indexed like `plan.centres`, when they fit
        `materialize_bytes` (else None).

        Made a chunk of centres at a time (bounded temporaries); static sampling makes them
        once, resample once per epoch.
        """
        width = 2 * self.reach * (1 + self.num_noise_words)
        if plan.num_examples * width * 4 > self.materialize_bytes:
            return None
        stream = self._stream(epoch)
        cached = self._rows
        if cached is not None and cached[0] == stream:
            return cached[1]
        self._rows = None
        count = plan.num_examples
        whole = Rows(np.empty(count, dtype=np.int32), np.empty((count, width), dtype=np.int32),
                     np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64))
        for start in range(0, count, ROWS_CHUNK):
            part = self.rows(epoch, np.arange(start, min(start + ROWS_CHUNK, count)))
            for target, source in zip(whole, part):
                target[start:start + len(source)] = source
        self._rows = (stream, whole)
        return whole

    def _to_batch(self, rows: Rows) -> Batch:
        lengths, num_contexts = rows.lengths, rows.num_contexts
        length = self.fixed_length if self.fixed_length is not None \
            else max(int(lengths.max(initial=0)), 1)
        width = rows.contexts_negatives.shape[1]
        if length <= width:
            contexts_negatives = rows.contexts_negatives[:, :length]
        else:
            contexts_negatives = np.zeros((len(lengths), length), dtype=np.int32)
            contexts_negatives[:, :width] = rows.contexts_negatives
        centers = rows.centers
        missing = self.batch_size - len(centers)
        if self.pad_last_batch and missing:
            centers = np.concatenate([centers, np.zeros(missing, dtype=np.int32)])
            contexts_negatives = np.concatenate(
                [contexts_negatives, np.zeros((missing, length), dtype=np.int32)])
            lengths = np.concatenate([lengths, np.zeros(missing, dtype=np.int64)])
            num_contexts = np.concatenate([num_contexts, np.zeros(missing, dtype=np.int64)])
        return _make_batch(centers, contexts_negatives, num_contexts, lengths)

    # -- the interface the epoch driver uses ---------------------------------------------------

    def num_examples(self, epoch: int) -> int:
        """Centre words in epoch `epoch` (resample: the plan's, drawn once per epoch)."""
        if self.mode == "static":
            return len(self._static_centres)
        return self.plan(epoch).num_examples

    def num_batches(self, epoch: int) -> int:
        return num_batches(self.num_examples(epoch), self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Epoch `epoch`'s shuffled batches from batch `start`, all full but the last."""
        self.plan(epoch)  # errors raise here, not in the consumer's first `next`
        return (self.batch(epoch, index) for index in range(start, self.num_batches(epoch)))

    def dataset(self, epoch: int) -> SkipGramData:
        """Every example of epoch `epoch`, in corpus order, padded: for tests, small corpora."""
        plan = self.plan(epoch)
        rows = self.rows(epoch, np.arange(plan.num_examples))
        return SkipGramData(rows.centers, rows.contexts_negatives, rows.num_contexts,
                            rows.lengths)


def plan_bytes(num_centres: int, num_tokens: int) -> int:
    """Bytes of one epoch's plan (centres + order), the pipeline's only per-epoch memory."""
    return num_centres * (np.dtype(_index_dtype(num_tokens)).itemsize
                          + np.dtype(_index_dtype(num_centres)).itemsize)
