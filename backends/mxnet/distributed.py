"""MXNet data parallelism: Gluon over a list of contexts, gradients summed by a kvstore.

The parameters live on N contexts (`mx.cpu(0) .. mx.cpu(N-1)` here, `mx.gpu(i)` on GPUs), each
global batch is split into N equal shares, one per context, and:
- chapter step: the chapter's `autograd.record()` and `backward()` on each context's share,
  then `gluon.Trainer(..., kvstore="device", update_on_kvstore=False).step(1)`: the kvstore
  sums the contexts' gradients (push/pull) and every context's updater applies the same Adam
  step to its copy; `step(1)`, so the sum is not rescaled;
- fast step: each context's written-out gradient (`fast.FastStep`), summed by the same
  kvstore push/pull, then each context's Adam.
MXNet 1.9.1's pip wheel is built with the distributed kvstore (`mx.runtime.Features()` lists
DIST_KVSTORE): `dist_sync` over several processes or hosts is in the README's
"Data-parallel" section. One process has no replica that can die alone. The other
combinations (`DataParallelVariant`) run the chapter step's way on the same contexts and
kvstore: their forward and backward per context, then their Trainer's `step(1)`.
"""
from __future__ import annotations

import pickle
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Params
from backends.mxnet import fast, model
from backends.mxnet.backend import BATCH_DTYPES, ChapterStep, MXNetBackend
from backends.mxnet.variants import VariantBackend
from common import parallel
from common.batching import Batch
from common.errors import ConfigError

KVSTORE = "device"  # sums on the devices; "local" sums on the CPU: the same on a CPU


def _arrays(batch: Batch, context: mx.Context) -> tuple[mx.np.ndarray, ...]:
    return tuple(mx.np.array(array, dtype=dtype, ctx=context)
                 for array, dtype in zip(batch, BATCH_DTYPES))


def _total(losses: list[Any], context: mx.Context) -> Any:
    """The replicas' 0-d losses summed on `context`."""
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss.as_in_context(context)
    return total


class ChapterSteps(ChapterStep):
    """The chapter's step on every context, one Trainer whose kvstore sums the gradients."""

    def __init__(self, net: model.SkipGramModel, lr: float, contexts: list[mx.Context]) -> None:
        self.contexts = contexts
        super().__init__(net, lr, contexts[0])

    def reset(self) -> None:
        beta1, beta2 = ADAM_BETAS
        self.trainer = gluon.Trainer(self.net.collect_params(), "adam",
                                     {"learning_rate": self.lr, "beta1": beta1, "beta2": beta2,
                                      "epsilon": ADAM_EPS},
                                     kvstore=KVSTORE, update_on_kvstore=False)
        self.step_count = 0

    def _backward(self, batch: Batch) -> list[Any]:
        """Forward and backward of each context's share; its (B/N,) losses per context."""
        shares = parallel.shards(batch, len(self.contexts))
        with autograd.record():
            losses = [self.objective(*_arrays(share, context))
                      for share, context in zip(shares, self.contexts)]
        for loss in losses:
            loss.backward()
        return [loss.sum() for loss in losses]

    def train_step(self, batch: Batch, lr: float) -> mx.np.ndarray:
        self.step_count += 1
        self.trainer.set_learning_rate(lr)
        losses = self._backward(batch)
        self.trainer.optimizer.epsilon = model.torch_epsilon(self.step_count)
        self.trainer.step(1)  # kvstore: the gradients summed, then each context's Adam
        return _total(losses, self.context)

    def loss_and_grads(self, batch: Batch) -> tuple[mx.np.ndarray, tuple[mx.np.ndarray, ...]]:
        losses = self._backward(batch)
        self.trainer.allreduce_grads()  # what `step` sums, without the update
        return _total(losses, self.context), (self.net.center.weight.grad(self.context),
                                              self.net.context.weight.grad(self.context))

    def _updaters(self) -> list[Any]:
        return self.trainer._updaters  # one per context, as `ChapterStep._updater`

    def load_state(self, state: AdamState) -> None:
        self.reset()
        self.trainer._init_kvstore()  # the updaters exist once the kvstore does
        for context, updater in zip(self.contexts, self._updaters()):
            states = {index: tuple(mx.nd.array(np.asarray(values, np.float32), ctx=context)
                                   for values in pair)
                      for index, pair in enumerate(zip(state.exp_avg, state.exp_avg_sq))}
            updater.set_states(pickle.dumps(states))
        optimizer = self.trainer.optimizer
        for context in self.contexts:  # MXNet's Adam counts t per parameter and context
            optimizer._set_current_context(context.device_id)
            optimizer._index_update_count.update({0: state.step, 1: state.step})
        optimizer.num_update = int(state.step)
        self.step_count = int(state.step)


class FastSteps:
    """The fast step on every context, its gradients summed by a kvstore push/pull."""

    def __init__(self, vocab_size: int, embed_size: int, lr: float,
                 contexts: list[mx.Context]) -> None:
        self.contexts = contexts
        self.steps = [fast.FastStep(vocab_size, embed_size, lr, context)
                      for context in contexts]
        self.kvstore = mx.kv.create(KVSTORE)
        for key, grad in enumerate(self.steps[0].grads):
            self.kvstore.init(key, grad.as_nd_ndarray())

    @property
    def grads(self) -> tuple[mx.np.ndarray, ...]:
        return self.steps[0].grads

    def reset(self) -> None:
        for step in self.steps:
            step.reset()

    def gradients(self, tables: list[tuple[mx.np.ndarray, mx.np.ndarray]], batch: Batch) -> Any:
        shares = parallel.shards(batch, len(self.contexts))
        losses = [step.gradients(table_pair, share)
                  for step, table_pair, share in zip(self.steps, tables, shares)]
        for key in range(len(self.steps[0].grads)):
            grads = [step.grads[key].as_nd_ndarray() for step in self.steps]
            self.kvstore.push(key, grads)
            self.kvstore.pull(key, out=grads)
        return _total(losses, self.contexts[0])

    def train_step(self, tables: list[tuple[mx.np.ndarray, mx.np.ndarray]], batch: Batch,
                   lr: float) -> Any:
        loss = self.gradients(tables, batch)
        for step, table_pair in zip(self.steps, tables):
            step.apply(table_pair, lr)
        return loss

    def eval_loss(self, tables: tuple[mx.np.ndarray, mx.np.ndarray], batch: Batch) -> Any:
        return self.steps[0].eval_loss(tables, batch)

    def state(self) -> AdamState:
        return self.steps[0].state()

    def load_state(self, state: AdamState) -> None:
        for step in self.steps:
            step.load_state(state)
            for index in list(step.optimizer.moments):  # each on its own context
                step.optimizer.moments[index] = tuple(
                    moment.as_in_context(step.context) for moment in step.optimizer.moments[index])


def replica_contexts(context: mx.Context, replicas: int) -> list[mx.Context]:
    """`replicas` contexts of `context`'s kind: cpu(0 .. N-1), or N GPUs (one line if absent)."""
    if context.device_type == "cpu":
        return [mx.cpu(index) for index in range(replicas)]
    if mx.context.num_gpus() < replicas:
        raise ConfigError(f"--data-parallel {replicas} needs {replicas} GPUs; MXNet "
                          f"sees {mx.context.num_gpus()}")
    return [mx.gpu(index) for index in range(replicas)]


class DataParallelBackend(MXNetBackend):
    """`MXNetBackend` over `replicas` contexts of the chosen kind."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self.contexts = replica_contexts(self.context, replicas)
        self.context, self.replicas = self.contexts[0], len(self.contexts)
        self.net.collect_params().reset_ctx(self.contexts)
        if step == "chapter":
            self.trainer = ChapterSteps(self.net, lr, self.contexts)
        else:
            self.trainer = FastSteps(vocab_size, embed_size, lr, self.contexts)
        self.init_params(seed)

    def _tables_per_context(self) -> list[tuple[mx.np.ndarray, mx.np.ndarray]]:
        return [(self.net.center.weight.data(context), self.net.context.weight.data(context))
                for context in self.contexts]

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        for parameter, values in zip((self.net.center.weight, self.net.context.weight), params):
            parameter.set_data(mx.np.array(np.asarray(values, dtype=np.float32)))  # every ctx
        self.trainer.reset()
        self.adam_steps = 0

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        if self.step == "chapter":
            return super().loss_and_grads(batch)
        loss = self.trainer.gradients(self._tables_per_context(), batch)
        return float(loss.asnumpy()), Params(*(grad.asnumpy() for grad in self.trainer.grads))

    def train_step(self, batch: Batch) -> mx.np.ndarray:
        lr = self.next_lr()
        if self.step == "chapter":
            return self.trainer.train_step(batch, lr)
        return self.trainer.train_step(self._tables_per_context(), batch, lr)


class DataParallelVariant(VariantBackend):
    """The other combinations (`variants.VariantBackend`, which splits each batch over its
    contexts) on `replicas` contexts, their Trainer's kvstore summing the gradients."""

    trainer_options = {"kvstore": KVSTORE, "update_on_kvstore": False}

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int,
                 **options: Any) -> None:
        super().__init__(vocab_size, embed_size, **options)
        self.contexts = replica_contexts(self.context, replicas)
        self.context, self.replicas = self.contexts[0], len(self.contexts)
        self.net.collect_params().reset_ctx(self.contexts)
        self.init_params(self.seed)  # every context's copy, and a Trainer over them all
