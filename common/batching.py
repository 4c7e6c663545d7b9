"""Minibatches: the contract between the data pipeline and every backend (NumPy at the boundary).

`batchify` is the chapter's function on a list of examples. `iterate_batches` cuts the
padded `SkipGramData` into shuffled batches without a Python loop per example: rows are
gathered with one fancy index and masks/labels come from comparing a column range with
each row's lengths. `EpochData` decides what an epoch sees: the chapter's dataset sampled
once (`static`) or a fresh subsample, windows and noise every epoch (`resample`, the
chapter's exercise 2, streamed in chunks so memory does not grow with the corpus).
`prefetch` keeps batches ready on a background thread.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref
from typing import Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np

from common.config import SAMPLING_MODES, TrainConfig
from common.sampling import (NoiseSampler, SkipGramData, build_dataset, centers_and_contexts,
                             context_reach, draw_negatives, no_pairs_error, num_centers, subsample,
                             take_sentences)
from common.vocab import EncodedCorpus

Item = TypeVar("Item")


class Batch(NamedTuple):
    """B examples, L slots per example: contexts first, then noise words, then padding."""

    centers: np.ndarray             # (B, 1) int32
    contexts_negatives: np.ndarray  # (B, L) int32, padded with 0
    masks: np.ndarray               # (B, L) float32, 1 = real slot
    labels: np.ndarray              # (B, L) float32, 1 = context word


def _make_batch(centers: np.ndarray, contexts_negatives: np.ndarray, num_contexts: np.ndarray,
                lengths: np.ndarray) -> Batch:
    """Masks and labels from per-row counts: slot j is real if j < length, a context if
    j < num_contexts. Shapes: (B,), (B, L), (B,), (B,) -> Batch."""
    columns = np.arange(contexts_negatives.shape[1])
    return Batch(centers.astype(np.int32, copy=False).reshape(-1, 1),
                 contexts_negatives.astype(np.int32, copy=False),
                 (columns < lengths[:, None]).astype(np.float32),
                 (columns < num_contexts[:, None]).astype(np.float32))


class RealPairs(NamedTuple):
    """A batch's real (centre, context) slots, padding dropped, sorted by centre id (stable).

    Pair p is a slot with mask > 0; all-padding rows produce none (the `max(., 1)` rule).
    With `row_starts` the pairs are the nonzeros of a (V, V) CSR matrix over (centre, context)
    ids, the shape in which backends that skip the padding compute the objective's gradient.
    """

    center_ids: np.ndarray   # (P,) int64
    context_ids: np.ndarray  # (P,) int64
    labels: np.ndarray       # (P,) float32, 1 = context word, 0 = noise word
    weights: np.ndarray      # (P,) float32, m_bl / max(sum_l m_bl, 1): the per-example mean
    row_starts: np.ndarray   # (V + 1,) int64: centre i's pairs are row_starts[i]:row_starts[i+1]


def real_pairs(batch: Batch, vocab_size: int) -> RealPairs:
    """List a batch's real slots on the host, in centre order: Batch -> RealPairs.

    Vectorised NumPy, about 0.2 ms for PTB's B=512. Rows are put in centre order first (a
    stable argsort, a radix sort on 16-bit keys where the vocabulary allows), so the pairs
    come out sorted by centre with no second sort.
    """
    centers = np.asarray(batch.centers).reshape(-1)
    keys = centers.astype(np.uint16) if vocab_size <= 1 << 16 else centers
    examples = np.argsort(keys, kind="stable")
    masks = np.take(batch.masks, examples, axis=0)
    flat = np.flatnonzero(masks > 0)                          # real slots, in pair order
    per_example = np.count_nonzero(masks > 0, axis=1)
    scale = 1 / np.maximum(masks.sum(axis=1, dtype=np.float32), 1)
    weights = np.repeat(scale.astype(np.float32), per_example) * masks.take(flat)
    labels = np.take(batch.labels, examples, axis=0).take(flat).astype(np.float32, copy=False)
    context_ids = np.take(batch.contexts_negatives, examples, axis=0).take(flat)
    center_ids = np.repeat(centers[examples].astype(np.int64), per_example)
    row_starts = np.zeros(vocab_size + 1, dtype=np.int64)
    np.cumsum(np.bincount(center_ids, minlength=vocab_size), out=row_starts[1:])
    return RealPairs(center_ids, context_ids.astype(np.int64), labels,
                     weights.astype(np.float32, copy=False), row_starts)


def batchify(examples: Sequence[tuple[int, Sequence[int], Sequence[int]]]) -> Batch:
    """The chapter's `batchify`: (center, contexts, negatives) triples, padded to the longest."""
    num_contexts = np.array([len(contexts) for _, contexts, _ in examples], dtype=np.int64)
    lengths = np.array([len(contexts) + len(negatives) for _, contexts, negatives in examples],
                       dtype=np.int64)
    contexts_negatives = np.zeros((len(examples), int(lengths.max(initial=0))), dtype=np.int32)
    for row, (_, contexts, negatives) in enumerate(examples):
        contexts_negatives[row, :lengths[row]] = list(contexts) + list(negatives)
    centers = np.array([center for center, _, _ in examples], dtype=np.int32)
    return _make_batch(centers, contexts_negatives, num_contexts, lengths)


def num_batches(num_examples: int, batch_size: int) -> int:
    """Batches in an epoch of `num_examples` (the last one may be short)."""
    return math.ceil(num_examples / batch_size)


def _check_fixed_length(data: SkipGramData, fixed_length: int | None) -> None:
    if fixed_length is not None and data.num_examples and fixed_length < data.lengths.max():
        raise ValueError(f"fixed_length {fixed_length} is shorter than the longest example "
                         f"({int(data.lengths.max())} slots)")


def _batch_of_rows(data: SkipGramData, rows: np.ndarray, batch_size: int,
                   fixed_length: int | None, pad_last_batch: bool) -> Batch:
    """Rows `rows` of `data` as one Batch (padded to `batch_size` rows if asked)."""
    width = data.contexts_negatives.shape[1]
    lengths, num_contexts = data.lengths[rows], data.num_contexts[rows]
    length = fixed_length if fixed_length is not None else int(lengths.max())
    if length <= width:
        contexts_negatives = data.contexts_negatives[rows, :length]
    else:
        contexts_negatives = np.zeros((len(rows), length), dtype=np.int32)
        contexts_negatives[:, :width] = data.contexts_negatives[rows]
    centers = data.centers[rows]
    missing = batch_size - len(rows)
    if pad_last_batch and missing:
        centers = np.concatenate([centers, np.zeros(missing, dtype=centers.dtype)])
        contexts_negatives = np.concatenate(
            [contexts_negatives, np.zeros((missing, length), dtype=np.int32)])
        lengths = np.concatenate([lengths, np.zeros(missing, dtype=lengths.dtype)])
        num_contexts = np.concatenate([num_contexts,
                                       np.zeros(missing, dtype=num_contexts.dtype)])
    return _make_batch(centers, contexts_negatives, num_contexts, lengths)


def iterate_batches(data: SkipGramData, batch_size: int, rng: np.random.Generator, *,
                    fixed_length: int | None = None,
                    pad_last_batch: bool = False) -> Iterator[Batch]:
    """One shuffled pass over `data`.

    L is each batch's longest row (the chapter), or `fixed_length` for every batch, since
    compiled frameworks (XLA, tf.function, hybridize) retrace on each new shape.
    `pad_last_batch` fills the short last batch with all-zero rows (mask 0) for the same
    reason; such rows contribute nothing to a masked loss.
    Shapes: SkipGramData (N, Lmax) -> Batch (B, L), B = batch_size except maybe the last.
    """
    _check_fixed_length(data, fixed_length)
    order = rng.permutation(data.num_examples)
    for start in range(0, data.num_examples, batch_size):
        yield _batch_of_rows(data, order[start:start + batch_size], batch_size, fixed_length,
                             pad_last_batch)


def _concatenate(parts: Sequence[SkipGramData]) -> SkipGramData:
    return SkipGramData(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _take(data: SkipGramData, rows: np.ndarray) -> SkipGramData:
    return SkipGramData(*(array[rows] for array in data))


class _EpochPlan(NamedTuple):
    """A re-sampled epoch's layout, decided before any example is drawn."""

    order: np.ndarray    # (S,) int64: the sentences in this epoch's shuffled order
    bounds: np.ndarray   # (C + 1,) int64: chunk c is order[bounds[c]:bounds[c + 1]]
    centers: np.ndarray  # (C,) int64: centre words (examples) chunk c yields


class EpochData:
    """What each epoch trains on: `static` (sampled once, the chapter) or `resample`.

    All randomness descends from the one Generator given: a seed drawn from it at
    construction makes epoch e's streams `default_rng([seed, e + 1, ...])`, so `batches(e)`
    is the same whenever it is asked for (same seed, same batches; resuming at epoch e sees
    what an uninterrupted run would have seen).

    `resample` streams, so memory stays at the corpus plus a few chunks instead of every
    centre/context/noise row of the epoch (on a 50M-token corpus, tens of GiB): the epoch's
    sentences are shuffled, cut into chunks of about `chunk_tokens` tokens, and each chunk is
    subsampled, windowed, given noise words and shuffled on its own (with the short remainder
    of the chunk before), from its own stream `[seed, e + 1, 2, chunk]`. Its subsampling is
    that stream's first draw, so counting an epoch's examples (`num_batches`, before
    iterating) redraws only the keep mask, not windows or noise.
    """

    def __init__(self, corpus: EncodedCorpus, counts: np.ndarray, *, max_window_size: int,
                 num_noise_words: int, t: float, batch_size: int, rng: np.random.Generator,
                 mode: str = "static", fixed_length: int | None = None,
                 pad_last_batch: bool = False, chunk_tokens: int = 1 << 18) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        self.corpus, self.counts, self.mode = corpus, np.asarray(counts), mode
        self.max_window_size, self.num_noise_words, self.t = max_window_size, num_noise_words, t
        self.batch_size, self.fixed_length, self.pad_last_batch = \
            batch_size, fixed_length, pad_last_batch
        self.chunk_tokens = chunk_tokens
        # Every chunk pads to the whole corpus' reach, so that chunks can be joined.
        self.reach = context_reach(max_window_size, int(corpus.lengths.max(initial=0)))
        self.sampler = NoiseSampler(self.counts)
        self._seed = int(rng.integers(2**63 - 1))
        self._static: SkipGramData | None = None
        self._plan: tuple[int, _EpochPlan] | None = None  # the latest epoch's, reused
        if mode == "static":  # built once, before training, as the chapter does
            self._static = build_dataset(
                corpus, self.counts, max_window_size=max_window_size,
                num_noise_words=num_noise_words, t=t, rng=np.random.default_rng([self._seed, 0]),
                sampler=self.sampler)

    @classmethod
    def from_config(cls, corpus: EncodedCorpus, counts: np.ndarray, config: TrainConfig,
                    rng: np.random.Generator, **options: object) -> "EpochData":
        """From a `TrainConfig` (its sampling fields); `options` are fixed_length etc."""
        return cls(corpus, counts, max_window_size=config.max_window_size,
                   num_noise_words=config.num_noise_words, t=config.subsample_t,
                   batch_size=config.batch_size, mode=config.sampling, rng=rng, **options)

    # -- resample: the per-epoch plan and its chunks ------------------------------------------

    def _chunk_rng(self, epoch: int, chunk: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, epoch + 1, 2, chunk])

    def _subsampled_chunk(self, plan: _EpochPlan, chunk: int,
                          rng: np.random.Generator) -> EncodedCorpus:
        sentences = plan.order[plan.bounds[chunk]:plan.bounds[chunk + 1]]
        return subsample(take_sentences(self.corpus, sentences), self.counts, self.t, rng)

    def _epoch_plan(self, epoch: int) -> _EpochPlan:
        """Shuffle the sentences, cut chunks, count each chunk's centres (cached per epoch)."""
        cached = self._plan
        if cached is not None and cached[0] == epoch:
            return cached[1]
        lengths = self.corpus.lengths
        order = np.random.default_rng([self._seed, epoch + 1, 3]).permutation(len(lengths))
        ends = np.cumsum(lengths[order])
        total = int(ends[-1]) if len(ends) else 0
        cuts = np.searchsorted(ends, np.arange(self.chunk_tokens, total, self.chunk_tokens),
                               side="right")
        bounds = np.unique(np.concatenate([[0], cuts, [len(order)]])).astype(np.int64)
        plan = _EpochPlan(order, bounds, np.zeros(len(bounds) - 1, dtype=np.int64))
        for chunk in range(len(bounds) - 1):
            kept = self._subsampled_chunk(plan, chunk, self._chunk_rng(epoch, chunk))
            plan.centers[chunk] = num_centers(kept)
        if not plan.centers.sum():
            raise no_pairs_error(self.corpus, self.counts)
        self._plan = (epoch, plan)
        return plan

    def _chunk_data(self, plan: _EpochPlan, epoch: int,
                    chunk: int) -> tuple[SkipGramData, np.random.Generator]:
        """Chunk `chunk`'s examples, unshuffled, and its stream (to shuffle with)."""
        rng = self._chunk_rng(epoch, chunk)
        kept = self._subsampled_chunk(plan, chunk, rng)
        pairs = centers_and_contexts(kept, self.max_window_size, rng, reach=self.reach)
        return draw_negatives(pairs, self.sampler, self.num_noise_words, rng), rng

    def _stream(self, epoch: int, plan: _EpochPlan) -> Iterator[Batch]:
        options = (self.batch_size, self.fixed_length, self.pad_last_batch)
        carried: SkipGramData | None = None  # fewer than batch_size rows left by a chunk
        for chunk in np.flatnonzero(plan.centers).tolist():
            data, rng = self._chunk_data(plan, epoch, chunk)
            _check_fixed_length(data, self.fixed_length)
            order, start = rng.permutation(data.num_examples), 0
            if carried is not None:  # complete the last chunk's remainder, copying only it
                start = self.batch_size - carried.num_examples
                carried = _concatenate([carried, _take(data, order[:start])])
                if carried.num_examples < self.batch_size:  # a chunk smaller than a batch
                    continue
                yield _batch_of_rows(carried, np.arange(self.batch_size), *options)
            full = start + (data.num_examples - start) // self.batch_size * self.batch_size
            for begin in range(start, full, self.batch_size):
                yield _batch_of_rows(data, order[begin:begin + self.batch_size], *options)
            carried = _take(data, order[full:]) if full < data.num_examples else None
            del data
        if carried is not None:
            yield _batch_of_rows(carried, np.arange(carried.num_examples), *options)

    # -- the interface the epoch driver uses ---------------------------------------------------

    def dataset(self, epoch: int) -> SkipGramData:
        """Epoch `epoch`'s examples in one array set (the same object every epoch if static).

        In resample mode this materialises the whole epoch, chunk after chunk, unshuffled:
        for tests and small corpora; training streams through `batches`.
        """
        if self.mode == "static":
            return self._static
        plan = self._epoch_plan(epoch)
        return _concatenate([self._chunk_data(plan, epoch, chunk)[0]
                             for chunk in np.flatnonzero(plan.centers).tolist()])

    def num_examples(self, epoch: int) -> int:
        """Centre words in epoch `epoch` (resample: counted without drawing windows or noise)."""
        if self.mode == "static":
            return self._static.num_examples
        return int(self._epoch_plan(epoch).centers.sum())

    def num_batches(self, epoch: int) -> int:
        return num_batches(self.num_examples(epoch), self.batch_size)

    def batches(self, epoch: int) -> Iterator[Batch]:
        """Epoch `epoch`'s shuffled batches, all full but the last."""
        if self.mode == "static":
            # The static build consumed stream [seed, 0]; epoch e shuffles with its own.
            shuffle_rng = np.random.default_rng([self._seed, epoch + 1, 1])
            return iterate_batches(self._static, self.batch_size, shuffle_rng,
                                   fixed_length=self.fixed_length,
                                   pad_last_batch=self.pad_last_batch)
        return self._stream(epoch, self._epoch_plan(epoch))  # plan first: errors raise here


class _End(NamedTuple):
    error: BaseException | None


def prefetch(iterable: Iterable[Item], depth: int = 2) -> Iterator[Item]:
    """Produce up to `depth` items ahead on a background thread.

    NumPy releases the GIL in its copies, so the next batches are cut (or the next
    re-sampled epoch is built) while the framework runs the current step. An exception in
    the producer is raised here, in the consumer; leaving the loop early (break, error,
    garbage collection) stops the producer and closes the source.
    """
    items: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_End(None))
        except BaseException as error:  # noqa: BLE001  (handed to the consumer)
            put(_End(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="w2v-prefetch", daemon=True)
    thread.start()
    consumer = _consume(items, stop, thread)
    weakref.finalize(consumer, stop.set)  # dropped before its first item: stop anyway
    return consumer


def _consume(items: queue.Queue, stop: threading.Event,
             thread: threading.Thread) -> Iterator[Item]:
    try:
        while True:
            item = items.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()
