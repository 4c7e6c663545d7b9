"""Skip-gram with negative sampling in plain NumPy: the chapter's model, backward by hand.

The forward functions mirror the chapter's `embed`, `skip_gram` and `SigmoidBCELoss`; the
backward is what autograd computes in the other backends, written out so that they can be
checked against it. Every function keeps its inputs' dtype: float32 for training, float64 for
the finite-difference tests.
"""
from __future__ import annotations

import numpy as np

from backends.base import Params

# In `scatter_add`, a key with at least this many rows is summed by `np.add.reduceat`, rarer
# keys by one fancy-indexed addition per occurrence. Tuned on B=512, L=60, V=6719, E=100.
FREQUENT_KEY_MIN_COUNT = 16


def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of `table` at `ids`: (V, E), (...) ints -> (..., E)."""
    return table.take(ids, axis=0)  # `take` is faster than fancy indexing for this gather


def skip_gram(centers: np.ndarray, contexts_negatives: np.ndarray, center_table: np.ndarray,
              context_table: np.ndarray) -> np.ndarray:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), as the chapter's `bmm(v, u^T)`.
    """
    v = embed(center_table, centers)             # (B, 1, E)
    u = embed(context_table, contexts_negatives)  # (B, L, E)
    return np.matmul(v, u.transpose(0, 2, 1))


def sigmoid_bce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Element-wise binary cross-entropy on logits: (...) -> (...).

    max(x, 0) - x y + log(1 + exp(-|x|)) is -y log s(x) - (1 - y) log(1 - s(x)) rearranged so
    that exp never overflows, as torch's `binary_cross_entropy_with_logits` does.
    """
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) is at most 1. (...) -> (...)."""
    decay = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1, decay) / (1 + decay)


def masked_bce(logits: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The chapter's `SigmoidBCELoss`: (B, L) logits, labels, masks -> (B,) mean of mask * bce."""
    return (masks * sigmoid_bce(logits, labels)).mean(axis=1)


def example_weights(masks: np.ndarray) -> np.ndarray:
    """1 / max(real slots, 1) per example: (B, L) -> (B,); all-padding rows then count 0."""
    return 1 / np.maximum(masks.sum(axis=1), 1)


def per_example_loss(logits: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    Equals the chapter's `masked_bce(...) * L / masks.sum(1)` whenever a row has a real slot.
    """
    return (masks * sigmoid_bce(logits, labels)).sum(axis=1) * example_weights(masks)


def objective(centers: np.ndarray, contexts_negatives: np.ndarray, masks: np.ndarray,
              labels: np.ndarray, center_table: np.ndarray,
              context_table: np.ndarray) -> np.ndarray:
    """The optimised quantity, the chapter's `l.sum()`: (B, 1), (B, L) ... -> a 0-d array."""
    pred = skip_gram(centers, contexts_negatives, center_table, context_table)
    return per_example_loss(pred.reshape(labels.shape), labels, masks).sum()


def objective_and_gradients(centers: np.ndarray, contexts_negatives: np.ndarray,
                            masks: np.ndarray, labels: np.ndarray, center_table: np.ndarray,
                            context_table: np.ndarray,
                            out: Params | None = None) -> tuple[np.ndarray, Params]:
    """`objective` and its gradients, by hand: what autograd gives the other backends.

    (B, 1), (B, L) ids, (B, L) masks and labels, (V, E) tables -> 0-d loss, and the dense
    (V, E) gradients as `Params` (the contract's exchange format). `out`, when given, is
    overwritten and returned (the training loop reuses its buffers).

    With x = v_b . u_bl and w_b = 1 / max(sum_l mask_bl, 1):
        d loss / d x_bl = w_b * mask_bl * (sigmoid(x_bl) - label_bl)              (B, L)
        d loss / d v_b  = sum_l (d loss / d x_bl) u_bl, added to row centers_b   (B, E)
        d loss / d u_bl = (d loss / d x_bl) v_b, added to row contexts_negatives_bl.
    """
    batch_size, slots = labels.shape
    center_ids = centers.reshape(batch_size)
    v = embed(center_table, center_ids)            # (B, E)
    u = embed(context_table, contexts_negatives)    # (B, L, E)
    logits = np.matmul(v[:, None, :], u.transpose(0, 2, 1)).reshape(batch_size, slots)
    loss = per_example_loss(logits, labels, masks).sum()

    weights = example_weights(masks)                                   # (B,)
    dlogits = masks * (sigmoid(logits) - labels) * weights[:, None]    # (B, L)
    dv = np.matmul(dlogits[:, None, :], u).reshape(batch_size, -1)     # (B, E)

    if out is None:
        out = Params(np.zeros_like(center_table), np.zeros_like(context_table))
    else:
        out.center.fill(0)
        out.context.fill(0)
    scatter_add(out.center, center_ids, np.arange(batch_size), np.ones_like(weights), dv)
    # Padding slots have zero gradient; leaving them out halves the scatter on typical batches.
    real = np.flatnonzero(masks.reshape(-1))
    scatter_add(out.context, contexts_negatives.reshape(-1)[real], real // slots,
                dlogits.reshape(-1)[real], v)
    return loss, out


def scatter_add(out: np.ndarray, keys: np.ndarray, sources: np.ndarray, weights: np.ndarray,
                table: np.ndarray) -> None:
    """out[keys[i]] += weights[i] * table[sources[i]] for every i, repeated keys summed.

    (R, E) out, (n,) keys, sources and weights, (K, E) table: a sparse (R, K) matrix times
    `table`. `np.add.at` does this row by row and would be most of a step. Instead the
    occurrences are sorted by key: keys with many occurrences are summed by one
    `np.add.reduceat` over their contiguous runs (its cost is per run), the rest by one
    fancy-indexed `+=` per occurrence number (no key repeats within one, so `+=` is exact).
    No BLAS call, so the result does not depend on the thread count.
    """
    if keys.size == 0:
        return
    keys = keys.astype(np.intp, copy=False)
    by_key = _stable_argsort(keys, bound=out.shape[0])
    sorted_keys = keys[by_key]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    lengths = np.diff(np.append(starts, keys.size))

    frequent = lengths >= FREQUENT_KEY_MIN_COUNT
    in_frequent = np.repeat(frequent, lengths)
    if frequent.any():
        taken = by_key[in_frequent]  # whole runs, still sorted by key
        rows = table.take(sources[taken], axis=0)
        rows *= weights[taken][:, None]
        run_lengths = lengths[frequent]
        run_starts = np.cumsum(run_lengths) - run_lengths
        out[sorted_keys[starts[frequent]]] += np.add.reduceat(rows, run_starts, axis=0)

    if frequent.all():
        return
    rare = ~in_frequent
    occurrence = (np.arange(keys.size) - np.repeat(starts, lengths))[rare]
    by_occurrence = _stable_argsort(occurrence, bound=FREQUENT_KEY_MIN_COUNT)
    taken = by_key[rare][by_occurrence]
    rows = table.take(sources[taken], axis=0)
    rows *= weights[taken][:, None]
    taken_keys = keys[taken]
    begin = 0
    for end in np.cumsum(np.bincount(occurrence)):
        out[taken_keys[begin:end]] += rows[begin:end]
        begin = end


def _stable_argsort(values: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of non-negative ints below `bound`: (n,) -> (n,).

    NumPy radix-sorts 16-bit ints, 10x faster than its merge sort on V=6719 keys.
    """
    if bound <= 1 << 16:
        values = values.astype(np.uint16)
    return np.argsort(values, kind="stable")
