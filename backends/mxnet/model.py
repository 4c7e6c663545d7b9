"""The chapter's model in MXNet Gluon (`mxnet.np`/`npx`): the `nn.Embedding` pair, `batch_dot`,
`gluon.loss.SigmoidBCELoss`, and the chapter's step: `autograd.record()`, `backward()`,
`gluon.Trainer(..., 'adam')`.

Every function taking `F` gets the namespace Gluon hands to `hybrid_forward`: `mx.ndarray` when
the block runs eagerly, `mx.symbol` while it is being hybridized into a graph. Called from
outside a block, pass `mx.ndarray`. `F.np` and `F.npx` are then MXNet's NumPy-like API in both
cases.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from backends.base import ADAM_BETAS, ADAM_EPS

mx.npx.set_np()  # NumPy semantics (shapes, dtypes, `mx.np` arrays) for everything below

# Glorot/Xavier uniform with gain 1, as torch's xavier_uniform_: magnitude 3 with the average
# fan gives sqrt(3 / ((V + E) / 2)) = sqrt(6 / (V + E)). The chapter's MXNet tab kept
# nn.Embedding's default, uniform(-0.07, 0.07); its PyTorch tab used Xavier-uniform.
XAVIER_UNIFORM = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)


def embed(F: Any, table: Any, ids: Any) -> Any:
    """Rows of `table` (V, E) at `ids` (...) -> (..., E); what `nn.Embedding` computes."""
    vocab_size, embed_size = table.shape
    return F.npx.embedding(ids, table, input_dim=vocab_size, output_dim=embed_size)


def skip_gram(F: Any, centers: Any, contexts_negatives: Any, embed_v: Callable[[Any], Any],
              embed_u: Callable[[Any], Any]) -> Any:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, and the two lookups (the `nn.Embedding`s) -> (B, 1, L). The chapter
    writes `npx.batch_dot(v, u.swapaxes(1, 2))`: `swapaxes` materialises a transposed
    (B, L, E) copy, and its backward another; `transpose_b` lets the GEMM read `u` as stored.
    """
    v = embed_v(centers)              # (B, 1, E)
    u = embed_u(contexts_negatives)   # (B, L, E)
    return F.npx.batch_dot(v, u, transpose_b=True)


def masked_bce(loss: gluon.loss.SigmoidBCELoss, logits: Any, labels: Any, masks: Any) -> Any:
    """The chapter's `loss(pred, label, mask)`: (B, L) -> (B,) mean over L of mask * BCE.

    `loss` is `gluon.loss.SigmoidBCELoss`, the mask its sample weight.
    """
    return loss(logits, labels, masks)


def per_example_objective(F: Any, loss: gluon.loss.SigmoidBCELoss, logits: Any, labels: Any,
                          masks: Any) -> Any:
    """Mean BCE over each example's real slots: (B, L) logits, labels, masks -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the `max(., 1)` makes all-padding rows (the
    padded last batch) count 0, not 0/0. L is read from the graph (`shape_array`): a symbol
    has no `.shape` while hybridizing.
    """
    slots = F.npx.shape_array(labels)[1].astype("float32")
    real = F.np.maximum(masks.sum(axis=1), 1)
    return masked_bce(loss, logits, labels, masks) * slots / real


class SkipGramModel(gluon.HybridBlock):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1]).

    Both `nn.Embedding`s keep the default `sparse_grad=False`: their gradients are dense
    (V, E) arrays, zero where the batch has no id, so Adam decays every row's moments at
    every step as the chapter's dense `torch.optim.Adam` does.
    """

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        super().__init__()
        self.center = nn.Embedding(vocab_size, embed_size, weight_initializer=XAVIER_UNIFORM)
        self.context = nn.Embedding(vocab_size, embed_size, weight_initializer=XAVIER_UNIFORM)

    @property
    def tables(self) -> tuple[mx.np.ndarray, mx.np.ndarray]:
        """The two (V, E) tables (on the context the model was initialised on)."""
        return self.center.weight.data(), self.context.weight.data()

    def hybrid_forward(self, F: Any, centers: Any, contexts_negatives: Any) -> Any:
        """(B, 1), (B, L) ids -> (B, 1, L) logits, the chapter's `skip_gram`."""
        return skip_gram(F, centers, contexts_negatives, self.center, self.context)


class SkipGramObjective(gluon.HybridBlock):
    """`net` plus the masked loss: the chapter's `l`, (B,), as one block.

    One block so that `hybridize()` compiles the forward, the loss and their backward into a
    single cached graph (one call into the engine per step instead of one per operator).
    """

    def __init__(self, net: SkipGramModel) -> None:
        super().__init__()
        self.net = net
        self.loss = gluon.loss.SigmoidBCELoss()

    def hybrid_forward(self, F: Any, centers: Any, contexts_negatives: Any, masks: Any,
                       labels: Any) -> Any:
        """(B, 1), (B, L) ids, (B, L) float masks and labels -> (B,) per-example objective."""
        # (B, 1, L) -> (B, L); squeeze, because a symbol's shape is unknown while tracing.
        logits = F.np.squeeze(self.net(centers, contexts_negatives), axis=1)
        return per_example_objective(F, self.loss, logits, labels, masks)


def trainer(net: SkipGramModel, learning_rate: float) -> gluon.Trainer:
    """Gluon's Trainer with MXNet's Adam, betas and eps as torch's (eps reset every step)."""
    beta1, beta2 = ADAM_BETAS
    return gluon.Trainer(net.collect_params(), "adam",
                         {"learning_rate": learning_rate, "beta1": beta1, "beta2": beta2,
                          "epsilon": ADAM_EPS})


def torch_epsilon(step: int) -> float:
    """The eps that makes MXNet's Adam step `step` (1, 2, ...) equal torch's: eps sqrt(1 - b2^t).

    MXNet (`mx.optimizer.Adam.update`, then the `adam_update` kernel):
        lr_t = lr sqrt(1 - b2^t) / (1 - b1^t);   w -= lr_t m / (sqrt(v) + eps)
    torch:  w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    MXNet's eps sits outside the second bias correction; multiplying torch's numerator and
    denominator by sqrt(1 - b2^t) gives MXNet's form with eps sqrt(1 - b2^t). With a constant
    eps the early steps (sqrt(1 - b2^t) ~ 0.03 at t = 1) differ most, where sqrt(v) is not far
    above eps.
    """
    return ADAM_EPS * math.sqrt(1 - ADAM_BETAS[1] ** step)


def train_step(objective: SkipGramObjective, trainer: gluon.Trainer, centers: Any,
               contexts_negatives: Any, masks: Any, labels: Any, step: int) -> Any:
    """The chapter's loop body, as Adam step `step` (1, 2, ...); returns `l.sum()`, 0-d.

    `trainer.step(1)`, not the chapter tab's `trainer.step(batch_size)`: Gluon divides the
    gradients by the number it is given, so `step(batch_size)` optimises the mean objective,
    while the PyTorch tab (and every backend here) optimises the sum (`l.sum().backward()`).
    Adam is nearly scale-invariant, but not exactly (eps), and the losses would not match.
    `l.backward()` on the (B,) `l` is the sum's gradient (a head gradient of ones).
    """
    with autograd.record():
        losses = objective(centers, contexts_negatives, masks, labels)
    losses.backward()
    trainer.optimizer.epsilon = torch_epsilon(step)
    trainer.step(1)
    return losses.sum()
