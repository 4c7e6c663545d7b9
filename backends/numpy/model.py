"""The chapter's model in plain NumPy: the embedding pair, `skip_gram` by batched matmul, the
masked loss, and the backward written out as autograd would compute it.

This is the oracle every other backend is tested against, so it is written to be obviously
right rather than fast: the lookups' backward is `np.add.at` (repeated ids summed), nothing
is planned or fused. The tuned version of the same step is `backends/numpy/fast.py`. Every
function keeps its inputs' dtype: float32 for training, float64 for the finite-difference
tests.
"""
from __future__ import annotations

import numpy as np

from backends.base import Params


def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of `table` at `ids`: (V, E), (...) ints -> (..., E)."""
    return table[ids]


def skip_gram(centers: np.ndarray, contexts_negatives: np.ndarray, center_table: np.ndarray,
              context_table: np.ndarray) -> np.ndarray:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), as the chapter's `bmm(v, u^T)`.
    """
    v = embed(center_table, centers)              # (B, 1, E)
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


def real_slots(masks: np.ndarray) -> np.ndarray:
    """Real slots per example, at least 1: (B, L) -> (B,); all-padding rows then count 0."""
    return np.maximum(masks.sum(axis=1), 1)


def per_example_objective(logits: np.ndarray, labels: np.ndarray,
                          masks: np.ndarray) -> np.ndarray:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the `maximum` makes all-padding rows (which
    pad the last batch of fixed-shape backends) count 0 instead of 0/0.
    """
    slots = masks.shape[1]
    return masked_bce(logits, labels, masks) * slots / real_slots(masks)


def objective(centers: np.ndarray, contexts_negatives: np.ndarray, masks: np.ndarray,
              labels: np.ndarray, center_table: np.ndarray,
              context_table: np.ndarray) -> np.ndarray:
    """The optimised quantity, the chapter's `l.sum()`: (B, 1), (B, L) ... -> a 0-d array."""
    pred = skip_gram(centers, contexts_negatives, center_table, context_table)
    return per_example_objective(pred.reshape(labels.shape), labels, masks).sum()


def objective_and_gradients(centers: np.ndarray, contexts_negatives: np.ndarray,
                            masks: np.ndarray, labels: np.ndarray, center_table: np.ndarray,
                            context_table: np.ndarray) -> tuple[np.ndarray, Params]:
    """`objective` and its dense gradients, derived by hand: what autograd gives the others.

    (B, 1), (B, L) ids, (B, L) masks and labels, (V, E) tables -> 0-d loss, and the (V, E)
    gradients as `Params` (the contract's exchange format). With x_bl = v_b . u_bl and
    n_b = max(sum_l mask_bl, 1):
        d loss / d x_bl = mask_bl * (sigmoid(x_bl) - label_bl) / n_b          (B, L)
        d loss / d v_b  = sum_l (d loss / d x_bl) u_bl, added to row centers_b
        d loss / d u_bl = (d loss / d x_bl) v_b, added to row contexts_negatives_bl
    `np.add.at` is the lookups' backward: it sums the rows of repeated ids.
    """
    v = embed(center_table, centers)               # (B, 1, E)
    u = embed(context_table, contexts_negatives)   # (B, L, E)
    logits = np.matmul(v, u.transpose(0, 2, 1)).reshape(labels.shape)
    loss = per_example_objective(logits, labels, masks).sum()

    logit_grads = masks * (sigmoid(logits) - labels) / real_slots(masks)[:, None]  # (B, L)
    center_rows_grad = np.matmul(logit_grads[:, None, :], u)                     # (B, 1, E)
    context_rows_grad = logit_grads[:, :, None] * v                              # (B, L, E)
    center_grad = np.zeros_like(center_table)
    context_grad = np.zeros_like(context_table)
    np.add.at(center_grad, centers, center_rows_grad)
    np.add.at(context_grad, contexts_negatives, context_rows_grad)
    return loss, Params(center_grad, context_grad)


class SkipGramModel:
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1]).

    NumPy has no module system; the two tables are plain (V, E) arrays (views into the
    backend's storage), initialised Xavier-uniform by the backend from `init_params_numpy`.
    """

    def __init__(self, center: np.ndarray, context: np.ndarray) -> None:
        self.center, self.context = center, context

    def __call__(self, centers: np.ndarray, contexts_negatives: np.ndarray) -> np.ndarray:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        return skip_gram(centers, contexts_negatives, self.center, self.context)

    def objective(self, centers: np.ndarray, contexts_negatives: np.ndarray, masks: np.ndarray,
                  labels: np.ndarray) -> np.ndarray:
        """The optimised quantity, the chapter's `l.sum()`: a 0-d array."""
        return objective(centers, contexts_negatives, masks, labels, self.center, self.context)

    def objective_and_gradients(self, centers: np.ndarray, contexts_negatives: np.ndarray,
                                masks: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, Params]:
        """The objective and its (V, E) gradients: NumPy's stand-in for autograd."""
        return objective_and_gradients(centers, contexts_negatives, masks, labels,
                                       self.center, self.context)
