"""Minibatches: the contract between the data pipeline and every backend (NumPy at the boundary).

`batchify` is the chapter's function on a list of examples. `iterate_batches` cuts the
padded `SkipGramData` into shuffled batches without a Python loop per example: rows are
gathered with one fancy index and masks/labels come from comparing a column range with
each row's lengths. `EpochData` decides what an epoch sees: the chapter's dataset sampled
once (`static`) or a fresh subsample, windows and noise every epoch (`resample`, the
chapter's exercise 2). `prefetch` keeps batches ready on a background thread.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref
from typing import Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np

from common.config import SAMPLING_MODES, TrainConfig
from common.sampling import NoiseSampler, SkipGramData, build_dataset
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
    if fixed_length is not None and data.num_examples and fixed_length < data.lengths.max():
        raise ValueError(f"fixed_length {fixed_length} is shorter than the longest example "
                         f"({int(data.lengths.max())} slots)")
    width = data.contexts_negatives.shape[1]
    order = rng.permutation(data.num_examples)
    for start in range(0, data.num_examples, batch_size):
        rows = order[start:start + batch_size]
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
        yield _make_batch(centers, contexts_negatives, num_contexts, lengths)


class EpochData:
    """What each epoch trains on: `static` (sampled once, the chapter) or `resample`.

    All randomness descends from the one Generator given: a seed drawn from it at
    construction makes epoch e's stream `default_rng([seed, e])`, so `batches(e)` is the
    same whenever it is asked for (same seed, same batches; resuming at epoch e sees what
    an uninterrupted run would have seen).
    """

    def __init__(self, corpus: EncodedCorpus, counts: np.ndarray, *, max_window_size: int,
                 num_noise_words: int, t: float, batch_size: int, rng: np.random.Generator,
                 mode: str = "static", fixed_length: int | None = None,
                 pad_last_batch: bool = False) -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        self.corpus, self.counts, self.mode = corpus, np.asarray(counts), mode
        self.max_window_size, self.num_noise_words, self.t = max_window_size, num_noise_words, t
        self.batch_size, self.fixed_length, self.pad_last_batch = \
            batch_size, fixed_length, pad_last_batch
        self.sampler = NoiseSampler(self.counts)
        self._seed = int(rng.integers(2**63 - 1))
        self._cached: tuple[int, SkipGramData] | None = None
        if mode == "static":  # built once, before training, as the chapter does
            self._cached = (-1, self._build(self._epoch_rng(-1)))

    @classmethod
    def from_config(cls, corpus: EncodedCorpus, counts: np.ndarray, config: TrainConfig,
                    rng: np.random.Generator, **options: object) -> "EpochData":
        """From a `TrainConfig` (its sampling fields); `options` are fixed_length etc."""
        return cls(corpus, counts, max_window_size=config.max_window_size,
                   num_noise_words=config.num_noise_words, t=config.subsample_t,
                   batch_size=config.batch_size, mode=config.sampling, rng=rng, **options)

    def _epoch_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, epoch + 1])

    def _build(self, rng: np.random.Generator) -> SkipGramData:
        return build_dataset(self.corpus, self.counts, max_window_size=self.max_window_size,
                             num_noise_words=self.num_noise_words, t=self.t, rng=rng,
                             sampler=self.sampler)

    def dataset(self, epoch: int) -> SkipGramData:
        """Epoch `epoch`'s examples (the same object every epoch when static)."""
        if self.mode == "static":
            return self._cached[1]
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._build(self._epoch_rng(epoch)))
        return self._cached[1]

    def num_examples(self, epoch: int) -> int:
        return self.dataset(epoch).num_examples

    def num_batches(self, epoch: int) -> int:
        return num_batches(self.num_examples(epoch), self.batch_size)

    def batches(self, epoch: int) -> Iterator[Batch]:
        """Epoch `epoch`'s shuffled batches; resample mode draws its data first."""
        data = self.dataset(epoch)
        # The resample build consumed its own stream; shuffling uses a sibling one.
        shuffle_rng = np.random.default_rng([self._seed, epoch + 1, 1])
        return iterate_batches(data, self.batch_size, shuffle_rng,
                               fixed_length=self.fixed_length,
                               pad_last_batch=self.pad_last_batch)


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
