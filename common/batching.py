"""Minibatches: the contract between the data pipeline and every backend (NumPy at the boundary).

`batchify` is the chapter's function on a list of examples; `common.stream` makes the
training batches on demand from a per-epoch plan, through the same `_make_batch` (masks and
labels from comparing a column range with each row's lengths). `prefetch` keeps batches
ready on a background thread.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref
from typing import Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np


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


def touched_rows(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The rows a sparse optimiser updates: (centre-table rows, context-table rows), sorted.

    The centre table's are the batch's centres; the context table's, the ids of the slots
    with mask > 0. Row 0 is the padding id (`<unk>`, which the pipeline never emits): it is
    never touched, as `padding_idx=0` makes it in torch.
    """
    centres = np.unique(np.asarray(batch.centers))
    contexts = np.unique(np.asarray(batch.contexts_negatives)[np.asarray(batch.masks) > 0])
    return centres[centres != 0].astype(np.int64), contexts[contexts != 0].astype(np.int64)


class LocalBatch(NamedTuple):
    """A batch over its own small vocabulary: the rows it looks up, renumbered from 0.

    A sparse optimiser's step then costs what the batch touches, not V: gather `rows` of
    the tables (and moments), run the dense step on those (n, E) tables, scatter back.
    """

    rows: np.ndarray             # (n,) int64 global ids, sorted; rows[0] == 0, the padding row
    batch: Batch                 # the same batch, ids as positions in `rows`
    center_touched: np.ndarray   # (n,) bool: the centre table's touched rows (`touched_rows`)
    context_touched: np.ndarray  # (n,) bool: the context table's


def localize(batch: Batch) -> LocalBatch:
    """Renumber a batch's ids to positions in its sorted unique ids (0 always first)."""
    centers = np.asarray(batch.centers)
    contexts = np.asarray(batch.contexts_negatives)
    ids = np.concatenate([[0], centers.ravel(), contexts.ravel()])
    rows, inverse = _unique_ids(ids)
    local_centers = inverse[1:1 + centers.size].reshape(centers.shape).astype(np.int32)
    local_contexts = inverse[1 + centers.size:].reshape(contexts.shape).astype(np.int32)
    center_touched = np.zeros(len(rows), dtype=bool)
    context_touched = np.zeros(len(rows), dtype=bool)
    center_touched[local_centers] = True
    context_touched[local_contexts[np.asarray(batch.masks) > 0]] = True
    center_touched[0] = context_touched[0] = False
    return LocalBatch(rows.astype(np.int64), Batch(local_centers, local_contexts, batch.masks,
                                                   batch.labels),
                      center_touched, context_touched)


def _unique_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(ids, return_inverse=True)` for non-negative ids. While the largest id is
    within a few times the id count (PTB's vocabulary against a batch's slots), marking the
    ids in a table of that size is several times cheaper than `np.unique`'s sort; past that
    the table would cost more than the sort, which follows the batch alone."""
    top = int(ids.max()) + 1
    if top > 4 * ids.size:
        return np.unique(ids, return_inverse=True)
    present = np.zeros(top, dtype=bool)
    present[ids] = True
    rows = np.flatnonzero(present)
    position = np.cumsum(present, dtype=np.int64) - 1  # id -> its place among the rows
    return rows, position[ids]


def local_rows(count: int) -> int:
    """A local batch's row count rounded up to a power of two (at least 64), so that a
    compiled step (jit, XLA) sees a few shapes rather than one per batch."""
    return max(64, 1 << (count - 1).bit_length())


def stack_local(batches: Sequence[Batch]) -> tuple[list[Batch], np.ndarray, np.ndarray]:
    """For compiled steps: batches -> their local batches, rows (G, n) int32 and touched
    flags (G, 2, n) float32 (centre table, context table), n = `local_rows` of the largest;
    rows past a batch's own are 0 (padding) and untouched."""
    local = [localize(batch) for batch in batches]
    width = local_rows(max(len(item.rows) for item in local))
    rows = np.zeros((len(local), width), np.int32)
    touched = np.zeros((len(local), 2, width), np.float32)
    for index, item in enumerate(local):
        rows[index, :len(item.rows)] = item.rows
        touched[index, 0, :len(item.rows)] = item.center_touched
        touched[index, 1, :len(item.rows)] = item.context_touched
    return [item.batch for item in local], rows, touched


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
