"""The chapter's model in MXNet Gluon (`mxnet.np`/`npx`): two embeddings, `batch_dot`, the loss.

Every function takes `F`, the namespace Gluon hands to `hybrid_forward`: `mx.ndarray` when the
block runs eagerly, `mx.symbol` while it is being hybridized into a graph. Called from outside
a block, pass `mx.ndarray`. `F.np` and `F.npx` are then MXNet's NumPy-like API in both cases.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

mx.npx.set_np()  # NumPy semantics (shapes, dtypes, `mx.np` arrays) for everything below

# Glorot/Xavier uniform with gain 1, as torch's xavier_uniform_: magnitude 3 with the average
# fan gives sqrt(3 / ((V + E) / 2)) = sqrt(6 / (V + E)). The chapter's MXNet tab kept
# nn.Embedding's default, uniform(-0.07, 0.07); its PyTorch tab used Xavier-uniform.
XAVIER_UNIFORM = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)


def embed(F: Any, table: Any, ids: Any) -> Any:
    """Rows of `table` (V, E) at `ids` (...) -> (..., E); what `nn.Embedding` computes."""
    vocab_size, embed_size = table.shape
    return F.npx.embedding(ids, table, input_dim=vocab_size, output_dim=embed_size)


def batch_dots(F: Any, v: Any, u: Any) -> Any:
    """(B, 1, E) centre rows, (B, L, E) context rows -> (B, 1, L) dot products.

    The chapter writes `npx.batch_dot(v, u.swapaxes(1, 2))`: `swapaxes` materialises a
    transposed (B, L, E) copy, and its backward another. That cost 27 to 45 ms per step of
    B=512, L=60 on a 2-core CPU, more than the rest of the step together; `transpose_b` lets
    the GEMM read `u` as stored. The operands go in as u v^T, (L, E) x (E, 1) per example:
    MXNet runs one small GEMM per example, and that matrix-vector shape took half the time
    of v u^T's (1, E) x (E, L) forward. (B, L, 1) and (B, 1, L) share one memory layout, so
    the reshape to the chapter's shape copies nothing.
    """
    dots = F.npx.batch_dot(u, v, transpose_b=True)  # (B, L, 1)
    return F.npx.reshape(dots, (-2, 1, -1))         # -2 keeps B, -1 infers L


def slot_count(F: Any, labels: Any) -> Any:
    """L of a (B, L) array as a float 0-d array; a symbol has no `.shape` while hybridizing."""
    return F.npx.shape_array(labels)[1].astype("float32")


def per_example_objective(F: Any, loss: gluon.loss.SigmoidBCELoss, logits: Any, labels: Any,
                          masks: Any) -> Any:
    """Mean BCE over each example's real slots: (B, L) logits, labels, masks -> (B,).

    `loss` is `gluon.loss.SigmoidBCELoss`, the mask its sample weight: it returns the mean over
    all L slots, so the chapter's `* L / mask.sum(1)` turns that into the mean over the real
    ones. The `max(., 1)` makes all-padding rows (the padded last batch) count 0, not 0/0.
    """
    real = F.np.maximum(masks.sum(axis=1), 1)
    return loss(logits, labels, masks) * slot_count(F, labels) / real


class SkipGram(gluon.HybridBlock):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1]).

    Both `nn.Embedding`s keep the default `sparse_grad=False`: their gradients are dense
    (V, E) arrays, zero where the batch has no id, so Adam decays every row's moments at
    every step as the chapter's dense `torch.optim.Adam` does.
    """

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        super().__init__()
        self.center = nn.Embedding(vocab_size, embed_size, weight_initializer=XAVIER_UNIFORM)
        self.context = nn.Embedding(vocab_size, embed_size, weight_initializer=XAVIER_UNIFORM)

    def hybrid_forward(self, F: Any, centers: Any, contexts_negatives: Any) -> Any:
        """(B, 1), (B, L) ids -> (B, 1, L) logits, the chapter's `skip_gram`."""
        return batch_dots(F, self.center(centers), self.context(contexts_negatives))


class SkipGramObjective(gluon.HybridBlock):
    """`net` plus the masked loss: the optimised quantity, the chapter's `l.sum()`, as one block.

    One block so that hybridizing compiles the forward, the loss and their backward into a
    single cached graph (one call into the engine per step instead of one per operator).
    """

    def __init__(self, net: SkipGram) -> None:
        super().__init__()
        self.net = net
        self.loss = gluon.loss.SigmoidBCELoss()

    def hybrid_forward(self, F: Any, centers: Any, contexts_negatives: Any, masks: Any,
                       labels: Any) -> Any:
        """(B, 1), (B, L) ids, (B, L) float masks and labels -> 0-d summed objective."""
        # (B, 1, L) -> (B, L); squeeze, because a symbol's shape is unknown while tracing.
        logits = F.np.squeeze(self.net(centers, contexts_negatives), axis=1)
        return per_example_objective(F, self.loss, logits, labels, masks).sum()
