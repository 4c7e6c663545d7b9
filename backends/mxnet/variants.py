"""word2vec's four combinations in MXNet Gluon: `nn.Embedding` tables, CBOW's context mean,
hierarchical softmax's inner-node table, `autograd.record()`, `backward()` through one
hybridized graph, and `gluon.Trainer(..., 'adam')` or `'sgd'` (Adam given torch's eps placement,
`model.torch_epsilon`, and `step(1)` on the summed objective, as the chapter step).

The shapes and the objective are `common.variants'`; the oracle is
`backends/numpy/variants.py`. Both steps run this autodiff step (no tuned one).
"""
from __future__ import annotations

import pickle
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from backends.mxnet import model as chapter
from backends.mxnet.backend import MXNetBackend, mxnet_context
from backends.variant_base import VariantMixin, VariantState
from common import parallel
from common.variants import VariantBatch, input_table, output_table

DTYPES = (np.int32, np.float32, np.int32, np.float32, np.float32)


def context_mean(F: Any, vectors: Any, masks: Any) -> Any:
    """(B, C, E) input rows, (B, C) masks -> (B, E) their masked mean (cbow_mean=1)."""
    count = F.np.maximum(masks.sum(axis=1, keepdims=True), 1)
    return (vectors * F.np.expand_dims(masks, 2)).sum(axis=1) / count


def slot_mean_bce(F: Any, logits: Any, labels: Any, masks: Any) -> Any:
    """(B, L) -> (B,): each example's mean sigmoid BCE over its real slots.

    Written as softrelu(z) - y z (log(1 + e^z) - y z; MXNet's softrelu is linear above 20)
    rather than with `gluon.loss.SigmoidBCELoss`: that one computes relu(z) - y z +
    softrelu(-|z|), whose relu and abs have zero gradient at z = 0, so at exactly 0 its
    gradient is -y instead of 1/2 - y. Hierarchical softmax starts its inner table at zero,
    so every logit of the first step is exactly 0 (measured: gradients off by up to 0.36).
    """
    bce = F.npx.activation(logits, act_type="softrelu") - logits * labels
    return (masks * bce).sum(axis=1) / F.np.maximum(masks.sum(axis=1), 1)


class Word2VecVariant(gluon.HybridBlock):
    """The centre and context tables, and for hierarchical softmax the V-1 inner nodes."""

    def __init__(self, vocab_size: int, embed_size: int, model: str, loss: str) -> None:
        super().__init__()
        self.source, self.sink = input_table(model), output_table(model, loss)
        self.center = nn.Embedding(vocab_size, embed_size)
        self.context = nn.Embedding(vocab_size, embed_size)
        if loss == "hsoftmax":  # word2vec starts its syn1 at zero
            self.inner = nn.Embedding(vocab_size - 1, embed_size, weight_initializer="zeros")

    def hybrid_forward(self, F: Any, inputs: Any, input_masks: Any, targets: Any, masks: Any,
                       labels: Any) -> Any:
        """The batch's per-example objective, (B,): its sum is what is optimised."""
        h = context_mean(F, getattr(self, self.source)(inputs), input_masks)     # (B, E)
        u = getattr(self, self.sink)(targets)                                     # (B, L, E)
        logits = F.np.squeeze(F.npx.batch_dot(u, F.np.expand_dims(h, 2)), axis=2)
        return slot_mean_bce(F, logits, labels, masks)


class VariantBackend(VariantMixin, MXNetBackend):
    """The four combinations through Gluon's autograd and Trainer."""

    trainer_options: dict[str, Any] = {}  # the data-parallel engine's kvstore

    def __init__(self, vocab_size: int, embed_size: int, *, model: str, loss: str,
                 max_window: int, num_noise: int, counts: np.ndarray | None = None,
                 tree: Any = None, **options: Any) -> None:
        from backends.base import Backend

        Backend.__init__(self, vocab_size, embed_size, **options)
        self.context = mxnet_context(self.device)
        self.contexts = [self.context]  # the data-parallel engine's are several
        self.setup_variant(model, loss, max_window=max_window, num_noise=num_noise,
                           counts=counts, tree=tree)
        self.net = Word2VecVariant(vocab_size, embed_size, model, loss)
        self.net.initialize(ctx=self.context)
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.parameters = {name: getattr(self.net, name).weight for name in self.table_names}
        # The tables in the graph (hierarchical softmax leaves one of the pair out, which the
        # Trainer would call stale): only these are Adam's, the other keeps zero moments.
        self.trained = [name for name in self.table_names
                        if name in (input_table(model), output_table(model, loss))]
        self.init_params(self.seed)

    def _arrays(self, batch: VariantBatch,
                context: mx.Context | None = None) -> list[mx.np.ndarray]:
        return [mx.np.array(array, dtype=dtype, ctx=context or self.context)
                for array, dtype in zip(batch, DTYPES)]

    def _new_trainer(self) -> None:
        beta1, beta2 = chapter.ADAM_BETAS
        # The Updater numbers its states in the order of this list.
        trained = [self.parameters[name] for name in self.trained]
        if self.optimizer == "sgd":  # plain `w -= lr grad`: no momentum, no weight decay
            self.trainer = gluon.Trainer(trained, "sgd", {"learning_rate": self.lr},
                                         **self.trainer_options)
            return
        self.trainer = gluon.Trainer(trained, "adam",
                                     {"learning_rate": self.lr, "beta1": beta1, "beta2": beta2,
                                      "epsilon": chapter.ADAM_EPS}, **self.trainer_options)

    def get_tables(self) -> dict[str, np.ndarray]:
        return {name: parameter.data(self.context).asnumpy()
                for name, parameter in self.parameters.items()}

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.check_tables(tables, "parameter table")
        for name, parameter in self.parameters.items():
            parameter.set_data(mx.np.array(np.asarray(tables[name], np.float32),
                                           ctx=self.context))
        self._new_trainer()
        self.adam_steps = 0

    def optimizer_tables(self) -> VariantState:
        if self.optimizer == "sgd":
            return VariantState(self.adam_steps, self.empty_moments(), self.empty_moments())
        # Adam's moments live in the Trainer's Updater: a pickle of {index: (mean, var)}.
        states = pickle.loads(self.trainer._updaters[0].get_states(dump_optimizer=False))
        moments: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
        for name in self.parameters:
            index = self.trained.index(name) if name in self.trained else None
            for which, out in enumerate(moments):
                out[name] = np.zeros(self.table_shape(name), np.float32) \
                    if states.get(index) is None else states[index][which].asnumpy()
        return VariantState(self.adam_steps, *moments)

    def load_optimizer_tables(self, state: VariantState) -> None:
        self.check_moments(state)
        self._new_trainer()
        self.adam_steps = int(state.step)
        if self.optimizer == "sgd":  # no state but the step count (the schedule's position)
            return
        optimizer = self.trainer.optimizer
        for context, updater in zip(self.contexts, self.trainer._updaters):  # one per context
            states = {index: tuple(mx.nd.array(np.asarray(values[name], np.float32), ctx=context)
                                   for values in (state.exp_avg, state.exp_avg_sq))
                      for index, name in enumerate(self.trained)}
            updater.set_states(pickle.dumps(states))
            # MXNet's Adam counts t per parameter and context; the next step is t + 1.
            optimizer._set_current_context(context.device_id)
            optimizer._index_update_count.update(
                {index: int(state.step) for index in range(len(self.trained))})
        optimizer.num_update = int(state.step)
        self.adam_steps = int(state.step)

    def _backward(self, batch: VariantBatch) -> mx.np.ndarray:
        """Forward and backward of each context's share of `batch` (one context: all of it);
        the summed loss, on the first context."""
        shares = parallel.shards(batch, len(self.contexts))
        with autograd.record():
            losses = [self.net(*self._arrays(share, context))
                      for share, context in zip(shares, self.contexts)]
        for loss in losses:
            loss.backward()
        total = losses[0].sum()
        for loss in losses[1:]:
            total = total + loss.sum().as_in_context(self.context)
        return total

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        total = self._backward(batch)
        if len(self.contexts) > 1:
            self.trainer.allreduce_grads()  # what `step` sums, without the update
        return float(total.asnumpy()), {
            name: parameter.grad(self.context).asnumpy() if name in self.trained else
            np.zeros(self.table_shape(name), np.float32)
            for name, parameter in self.parameters.items()}

    def variant_eval(self, batch: VariantBatch) -> mx.np.ndarray:
        return self.net(*self._arrays(batch)).sum()

    def variant_step(self, batch: VariantBatch, lr: float) -> mx.np.ndarray:
        self.trainer.set_learning_rate(lr)
        total = self._backward(batch)
        if self.optimizer != "sgd":
            self.trainer.optimizer.epsilon = chapter.torch_epsilon(self.adam_steps)
        self.trainer.step(1)  # several contexts: their kvstore sums the gradients first
        return total
