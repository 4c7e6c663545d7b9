"""MXNet data parallelism: Gluon over a list of contexts, gradients summed by a kvstore.

The parameters live on N contexts (`mx.cpu(0) .. mx.cpu(N-1)` here, `mx.gpu(i)` on GPUs), each
global batch is split into N equal shares, one per context, and:
- chapter step: the chapter's `autograd.record()` and `backward()` on each context's share,
  then `gluon.Trainer(..., kvstore="device", update_on_kvstore=False).step(1)`: the kvstore
  sums the contexts' gradients (push/pull) and every context's updater applies the same Adam
  step to its copy; `step(1)`, so the sum is not rescaled;
- fast step: each context's written-out gradient (`fast.FastStep`), summed by the same
  kvstore push/pull, then each context's Adam.
Several processes or hosts: `dist_sync`, MXNet's parameter server (the 1.9.1 wheel is built
with it: `mx.runtime.Features()` lists DIST_KVSTORE). A worker started by MXNet's launcher, or
with the variables it sets (DMLC_ROLE=worker, DMLC_PS_ROOT_URI/PORT, DMLC_NUM_WORKER/SERVER),
joins the kvstore `mx.kv.create("dist_sync")`; every worker reads the same batch stream and
takes its rank's (`kv.rank` of `kv.num_workers`) share of every global batch, split over its
own contexts; the same Trainer (or the fast step's push/pull) sums the gradients over its
contexts and, on the servers, over the workers, and each worker applies the same Adam step.
The same command run with DMLC_ROLE=server or scheduler becomes that role when it imports
mxnet (MXNet's own `kvstore_server`), as in any MXNet script. Rank 0 writes the run folder.
One process (a context list) has no replica that can die alone. The other combinations
(`DataParallelVariant`) run the chapter step's way on the same contexts and kvstore 'device'
(one process: dist_sync trains the chapter's combination): their forward and backward per
context, then their Trainer's `step(1)`.
"""
from __future__ import annotations

import os
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
ROLE_ENV, WORKERS_ENV = "DMLC_ROLE", "DMLC_NUM_WORKER"  # set by MXNet's launcher
# Keys of the dist kvstore beside the tables' 0 and 1: the summed loss, the stop signal.
LOSS_KEY, STOP_KEY, SIGNALS = 100, 101, 65
_dist: list[Any] = []  # the one dist_sync kvstore of this process, once joined


def dist_kvstore() -> Any:
    """The `dist_sync` kvstore when MXNet's launcher started this process as a worker (joined
    once: a dist kvstore's keys are set once per process), else None."""
    if os.environ.get(ROLE_ENV) != "worker":
        return None
    if not _dist:
        # The scheduler waits for every role; bounded, as every later wait (`_watch`).
        watch = parallel.CollectiveWatch("a worker", "the dist_sync kvstore's start")
        with watch.waiting():
            kvstore = mx.kv.create("dist_sync")
        watch.who, watch.what = f"replica {kvstore.rank}", "a dist_sync step"
        _dist.append(kvstore)
        _watch.append(watch)
    return _dist[0]


_watch: list[parallel.CollectiveWatch] = []  # bounds this worker's waits for the others


def _shares(batch: Batch, replicas: int, first: int, count: int) -> list[Batch]:
    """Shares `first .. first + count - 1` of `replicas` equal shares of a global batch: this
    process's contexts' (every worker reads the same stream)."""
    return parallel.shards(batch, replicas)[first:first + count]


def _sum_over_workers(kvstore: Any, key: int, value: mx.nd.NDArray) -> mx.nd.NDArray:
    """`value` summed over the workers (dist_sync: the server adds every worker's push)."""
    total = mx.nd.zeros(value.shape, ctx=value.context)
    # A copy: on a CPU the dist kvstore keeps the pushed array as its receive buffer and pulls
    # into it ("avoid memory copy", kvstore_dist.h), which must not be the caller's.
    kvstore.push(key, value.copy())
    kvstore.pull(key, out=total)
    return total


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

    def __init__(self, net: model.SkipGramModel, lr: float, contexts: list[mx.Context],
                 split: Any, kvstore: Any = KVSTORE) -> None:
        self.contexts, self.split, self.kvstore = contexts, split, kvstore
        super().__init__(net, lr, contexts[0])

    def reset(self) -> None:
        beta1, beta2 = ADAM_BETAS
        options = {"learning_rate": self.lr, "beta1": beta1, "beta2": beta2,
                   "epsilon": ADAM_EPS}
        if getattr(self, "trainer", None) is not None and self.kvstore is not KVSTORE:
            # A dist kvstore's keys are set once (a second Trainer's would wait forever):
            # keep the Trainer and its kvstore, start a fresh Adam.
            self.trainer._init_optimizer("adam", options)
        else:
            self.trainer = gluon.Trainer(self.net.collect_params(), "adam", options,
                                         kvstore=self.kvstore, update_on_kvstore=False)
        self.step_count = 0

    def _backward(self, batch: Batch) -> list[Any]:
        """Forward and backward of each context's share; its (B/N,) losses per context."""
        shares = self.split(batch)
        with autograd.record():
            losses = [self.objective(*_arrays(share, context))
                      for share, context in zip(shares, self.contexts)]
        for loss in losses:
            loss.backward()
        return [loss.sum() for loss in losses]

    def _join(self) -> None:
        """Under dist_sync, the Trainer's kvstore set up before any gradient is pushed.

        Left to itself the Trainer sets it up inside its first `step`, after the backward:
        rank 0 pushes its tables to the servers (`init`) and every worker pulls them back, and
        those pulls run beside the step's gradient push/pull of the same keys. The servers hold
        no optimiser (`update_on_kvstore=False`), so once every worker has pushed they store
        the summed gradient under the table's key, and a pull answered after that wrote the
        summed gradient into a worker's table (seen in 3 runs of 12: the context table after
        step 1 off on one worker). So: set it up here, wait for this worker's pulls, and let
        no worker push before every worker's pulls are done (a barrier)."""
        trainer = self.trainer
        if self.kvstore is KVSTORE or (trainer._kv_initialized and not trainer._params_to_init):
            return
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        trainer._init_params()  # rank 0's tables to the servers, pulled by every worker
        mx.nd.waitall()
        self.kvstore._barrier()

    def train_step(self, batch: Batch, lr: float) -> mx.np.ndarray:
        self._join()
        self.step_count += 1
        self.trainer.set_learning_rate(lr)
        losses = self._backward(batch)
        self.trainer.optimizer.epsilon = model.torch_epsilon(self.step_count)
        self.trainer.step(1)  # kvstore: the gradients summed, then each context's Adam
        return _total(losses, self.context)

    def loss_and_grads(self, batch: Batch) -> tuple[mx.np.ndarray, tuple[mx.np.ndarray, ...]]:
        self._join()
        losses = self._backward(batch)
        self.trainer.allreduce_grads()  # what `step` sums, without the update
        return _total(losses, self.context), (self.net.center.weight.grad(self.context),
                                              self.net.context.weight.grad(self.context))

    def _updaters(self) -> list[Any]:
        return self.trainer._updaters  # one per context, as `ChapterStep._updater`

    def load_state(self, state: AdamState) -> None:
        self.reset()
        if not self.trainer._kv_initialized:
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
                 contexts: list[mx.Context], split: Any, kvstore: Any = None) -> None:
        self.contexts, self.split = contexts, split
        self.steps = [fast.FastStep(vocab_size, embed_size, lr, context)
                      for context in contexts]
        self.kvstore = kvstore or mx.kv.create(KVSTORE)
        for key, grad in enumerate(self.steps[0].grads):
            self.kvstore.init(key, grad.as_nd_ndarray())

    @property
    def grads(self) -> tuple[mx.np.ndarray, ...]:
        return self.steps[0].grads

    def reset(self) -> None:
        for step in self.steps:
            step.reset()

    def gradients(self, tables: list[tuple[mx.np.ndarray, mx.np.ndarray]], batch: Batch) -> Any:
        shares = self.split(batch)
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


def replica_contexts(context: mx.Context, count: int, replicas: int) -> list[mx.Context]:
    """`count` contexts of `context`'s kind for this process's share of `replicas`: cpu(0 ..
    count-1), or that many GPUs (one line if absent)."""
    if context.device_type == "cpu":
        return [mx.cpu(index) for index in range(count)]
    if mx.context.num_gpus() < count:
        raise ConfigError(f"--data-parallel {replicas} needs {count} GPUs here; MXNet "
                          f"sees {mx.context.num_gpus()}")
    return [mx.gpu(index) for index in range(count)]


class DataParallelBackend(MXNetBackend):
    """`MXNetBackend` over `replicas` contexts of the chosen kind."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self.dist = dist_kvstore()
        workers = self.dist.num_workers if self.dist is not None else 1
        if replicas % workers:
            raise ConfigError(f"--data-parallel {replicas} does not split over "
                              f"{WORKERS_ENV}={workers} workers: give a multiple of it")
        local = replicas // workers  # this worker's contexts
        self.contexts = replica_contexts(self.context, local, replicas)
        self.context, self.replicas = self.contexts[0], replicas
        self.rank = self.dist.rank if self.dist is not None else 0

        def split(batch: Batch) -> list[Batch]:
            return _shares(batch, replicas, self.rank * local, local)

        self.net.collect_params().reset_ctx(self.contexts)
        if step == "chapter":
            self.trainer = ChapterSteps(self.net, lr, self.contexts, split,
                                        self.dist or KVSTORE)
        else:
            self.trainer = FastSteps(vocab_size, embed_size, lr, self.contexts, split,
                                     self.dist)
        if self.dist is not None:
            self.dist.init(LOSS_KEY, mx.nd.zeros((1,)))
            self.dist.init(STOP_KEY, mx.nd.zeros((SIGNALS,)))
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
        if self.dist is None:
            return self._step(batch)
        with _watch[0].waiting():
            return self._dist_step(batch)

    def _step(self, batch: Batch) -> mx.np.ndarray:
        lr = self.next_lr()
        if self.step == "chapter":
            return self.trainer.train_step(batch, lr)
        return self.trainer.train_step(self._tables_per_context(), batch, lr)

    def _dist_step(self, batch: Batch) -> mx.np.ndarray:
        loss = self._step(batch)
        # The global batch's loss (this worker's shares and the others'), and the step done
        # before the host prepares the next: without this wait the fast step's second epoch on
        # the tiny corpus, and once in five runs the chapter step's, ended off the one-replica
        # loss under dist_sync (a step's push racing the next one's; the kvstore reuses the
        # pushed arrays). The step already waits for the servers, so the wait costs little.
        total = _sum_over_workers(self.dist, LOSS_KEY, loss.as_nd_ndarray().reshape((1,)))
        mx.nd.waitall()
        return total.as_np_ndarray()[0]

    def agree_to_stop(self, signum: int) -> int:
        """Workers under dist_sync: the largest signal any worker received (0: none)."""
        if self.dist is None:
            return signum
        seen = mx.nd.zeros((SIGNALS,))
        seen[signum] = 1
        with _watch[0].waiting():
            received = np.flatnonzero(_sum_over_workers(self.dist, STOP_KEY, seen).asnumpy())
        return int(received.max()) if received.size else 0


class DataParallelVariant(VariantBackend):
    """The other combinations (`variants.VariantBackend`, which splits each batch over its
    contexts) on `replicas` contexts, their Trainer's kvstore summing the gradients."""

    trainer_options = {"kvstore": KVSTORE, "update_on_kvstore": False}

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int,
                 **options: Any) -> None:
        super().__init__(vocab_size, embed_size, **options)
        self.contexts = replica_contexts(self.context, replicas, replicas)
        self.context, self.replicas = self.contexts[0], len(self.contexts)
        self.net.collect_params().reset_ctx(self.contexts)
        self.init_params(self.seed)  # every context's copy, and a Trainer over them all
