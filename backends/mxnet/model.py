"""The chapter's model in MXNet Gluon (`mxnet.np`/`npx`): two embeddings, `batch_dot`, the loss.

Two ways to the gradient, the same mathematics:
- `SkipGramObjective` + autograd, as the chapter writes it (`batch_dot` over (B, L) slots).
- `PairObjective` + `dense_gradients`, the objective's gradient written out (as in
  `backends/numpy/model.py`): the training step. It works on the batch's real (centre, context)
  pairs only, listed on the host by `common.batching.real_pairs` (`pair_plan`), and sums the
  gradient rows with two sparse matrix products. About 2x less CPU per step than autograd on a
  2-core CPU, where MXNet 1.9.1's wheel (SSE3 kernels) spends its time in `batch_dot`'s 512 tiny
  GEMMs per direction, in `_backward_Embedding` and in elementwise passes over the (B, L, E)
  slots, 56% of which are padding on PTB.

Every function taking `F` gets the namespace Gluon hands to `hybrid_forward`: `mx.ndarray` when
the block runs eagerly, `mx.symbol` while it is being hybridized into a graph. Called from
outside a block, pass `mx.ndarray`. `F.np` and `F.npx` are then MXNet's NumPy-like API in both
cases.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from common.batching import RealPairs, real_pairs

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


class PairPlan(NamedTuple):
    """A batch as its real (centre, context) pairs, in two flat arrays the device reads.

    Pairs are sorted by centre id (stable), so that with `row_starts` they are the rows of a
    CSR matrix over (centre, context) ids. Entries past `count` are padding: id 0, weight 0.
    """

    ids: np.ndarray     # int64: centre ids (capacity), context ids (capacity), row_starts (V+1)
    floats: np.ndarray  # float32: signs (capacity), weights (capacity)
    count: int          # P, the number of real pairs
    capacity: int       # the padded pair count the compiled graph was built for


def pair_plan(batch: Any, vocab_size: int, capacity: int, ids: np.ndarray | None = None,
              floats: np.ndarray | None = None) -> PairPlan:
    """A Batch's real slots as (centre, context, sign, weight), padded to `capacity`."""
    return padded_plan(real_pairs(batch, vocab_size), capacity, ids, floats)


def padded_plan(pairs: RealPairs, capacity: int, ids: np.ndarray | None = None,
                floats: np.ndarray | None = None) -> PairPlan:
    """`common.batching.real_pairs` laid out for the compiled graph, padded to `capacity`.

    sign = 1 - 2 label (+1 for a noise word, -1 for a context word) turns the BCE of logit x
    into softplus(sign x); the weight is the chapter's per-example mean. `ids`
    (2 capacity + V + 1 int64) and `floats` (2 capacity float32) are filled when given, so
    that the plan can be written straight into device memory.
    """
    count, vocab_size = len(pairs.center_ids), len(pairs.row_starts) - 1
    if count > capacity:
        raise ValueError(f"{count} pairs exceed the plan's capacity {capacity}")
    ids = np.empty(2 * capacity + vocab_size + 1, np.int64) if ids is None else ids
    floats = np.empty(2 * capacity, np.float32) if floats is None else floats
    center_ids, context_ids, row_starts = ids[:capacity], ids[capacity:2 * capacity], \
        ids[2 * capacity:]
    signs, weights = floats[:capacity], floats[capacity:]
    for padded in (center_ids, context_ids, signs, weights):
        padded[count:] = 0
    center_ids[:count] = pairs.center_ids
    context_ids[:count] = pairs.context_ids
    signs[:count] = 1 - 2 * pairs.labels
    weights[:count] = pairs.weights
    row_starts[:] = pairs.row_starts
    return PairPlan(ids, floats, count, capacity)


class PairObjective(gluon.HybridBlock):
    """The objective over a batch's pairs and its gradient with respect to each logit.

    With x_p = v_c . u_o for pair p = (centre c, context o), s_p its sign, w_p its weight:
        loss = sum_p w_p softplus(s_p x_p)      (the chapter's l.sum(), padding excluded)
        g_p  = d loss / d x_p = w_p s_p sigmoid(s_p x_p)
    The dot products are one elementwise product and a FullyConnected against a row of ones:
    on PTB's 13,400 x 100 products that row sum (oneDNN's inner product) takes 0.1-0.3 ms
    where `sum(axis=1)` takes 7 ms, and `batch_dot` over pairs would be 13,400 tiny GEMMs.
    """

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        super().__init__()
        self.vocab_size, self.embed_size = vocab_size, embed_size

    def hybrid_forward(self, F: Any, center_table: Any, context_table: Any, center_ids: Any,
                       context_ids: Any, signs: Any, weights: Any) -> tuple[Any, Any]:
        """(V, E) tables, (P,) ids, signs, weights -> 0-d loss, (P,) d loss / d logits."""
        sizes = dict(input_dim=self.vocab_size, output_dim=self.embed_size)  # no .shape here
        ones = F.np.ones((1, self.embed_size), dtype="float32")
        v = F.npx.embedding(center_ids, center_table, **sizes)            # (P, E)
        u = F.npx.embedding(context_ids, context_table, **sizes)          # (P, E)
        logits = F.npx.fully_connected(u * v, ones, num_hidden=1, no_bias=True)
        signed = F.np.squeeze(logits, axis=1) * signs                   # s_p x_p, (P,)
        terms = weights * F.npx.activation(signed, act_type="softrelu")
        # A running sum, in float64, is summed in pair order: the padding after the real
        # pairs adds exact zeros, so the loss does not depend on the capacity (a `dot` or
        # `sum` may group terms by length), and a resumed run reports bit for bit the same.
        running = F.np.cumsum(terms.astype("float64"))
        loss = F.np.squeeze(F.npx.slice(running, begin=(-1,), end=(None,)), axis=0)
        loss = loss.astype("float32")
        return loss, weights * signs * F.npx.sigmoid(signed)


def dense_gradients(slot_grads: Any, context_ids: Any, row_starts: Any, center_table: Any,
                    context_table: Any, center_grad: Any, context_grad: Any) -> None:
    """Overwrite both (V, E) gradients from the pairs' d loss / d logits, eagerly.

    M = sum_p g_p e_c e_o^T is a (V, V) CSR matrix (rows: centres, columns: contexts), so
        d loss / d center  = M @ context_table      d loss / d context = M^T @ center_table
    which sums repeated ids and leaves untouched rows 0: dense gradients, for dense Adam.
    Both products read each pair once; no (P, E) temporary is written. Sparse arrays are
    legacy `mx.nd` arrays, hence the `as_nd_ndarray()` views (no copies). The training step
    uses the native `w2v_dense_gradients` (`gradient_kernel.cc`, the same sums in one pass)
    where it is built; this is its fallback (W2V_MXNET_KERNEL=builtin) and its reference.
    """
    vocab_size = center_table.shape[0]
    pairs = mx.nd.sparse.csr_matrix((slot_grads.as_nd_ndarray(), context_ids.as_nd_ndarray(),
                                     row_starts.as_nd_ndarray()),
                                    shape=(vocab_size, vocab_size))
    mx.nd.sparse.dot(pairs, context_table.as_nd_ndarray(), out=center_grad.as_nd_ndarray())
    mx.nd.sparse.dot(pairs, center_table.as_nd_ndarray(), transpose_a=True,
                     forward_stype="default", out=context_grad.as_nd_ndarray())
