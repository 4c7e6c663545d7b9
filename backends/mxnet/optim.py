"""MXNet's sparse optimisers, `--optimizer sparse_adam` and `sgd`, for both steps.

Both run MXNet's own optimisers with `lazy_update=True` on row-sparse gradients: Adam's lazy
update is torch.optim.SparseAdam's (only the gradient's rows move their moments and weights;
its step size lr sqrt(1 - beta2^t) / (1 - beta1^t) with eps on the uncorrected sqrt(v) is
SparseAdam's, so eps needs no per-step correction here), and SGD's is `w -= lr grad` on those
rows.

Why not `nn.Embedding(sparse_grad=True)` and a `gluon.Trainer`: in MXNet 1.9 row-sparse
gradients exist only in the legacy `mx.nd` API; under NumPy semantics, which the chapter's
MXNet tab uses (`npx.set_np()`), a parameter refuses them ("mxnet.numpy.zeros does not support
stype = row_sparse"). So the chapter step keeps its autograd graph and dense gradient, takes
its touched rows (`common.batching.touched_rows`) as a `row_sparse` array, and hands that to
the stock optimiser through its `Updater`, as a Trainer would. The fast step computes the
gradient of a local batch over the rows it looks up (`common.batching.localize`), so its
cost follows the batch, not V, and updates through the same `Updater`.
"""
from __future__ import annotations

import pickle
from typing import Any

import mxnet as mx
import numpy as np

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Params, empty_state


class LazyOptimizer:
    """MXNet's Adam or SGD with `lazy_update=True` over the two tables (index 0 centre,
    1 context), updated with row-sparse gradients; its state as `AdamState`."""

    def __init__(self, kind: str, lr: float, shape: tuple[int, int],
                 context: mx.Context) -> None:
        self.kind, self.lr, self.shape, self.context = kind, lr, shape, context
        self.reset()

    def reset(self) -> None:
        """A fresh optimiser: no state, step 0."""
        if self.kind == "sparse_adam":
            beta1, beta2 = ADAM_BETAS
            self.optimizer = mx.optimizer.Adam(learning_rate=self.lr, beta1=beta1, beta2=beta2,
                                               epsilon=ADAM_EPS, lazy_update=True)
        else:
            self.optimizer = mx.optimizer.SGD(learning_rate=self.lr, momentum=0.0,
                                              lazy_update=True)
        self.updater = mx.optimizer.get_updater(self.optimizer)
        self.step_count = 0

    def step(self, tables: tuple[Any, Any], rows: tuple[np.ndarray, np.ndarray],
             grads: tuple[Any, Any], lr: float) -> None:
        """One step of rate `lr`: table i's rows `rows[i]` (sorted, unique global ids) have
        the gradient `grads[i]` (one row each, any device array)."""
        self.step_count += 1
        self.optimizer.set_learning_rate(lr)
        for index, (table, table_rows, grad) in enumerate(zip(tables, rows, grads)):
            indices = mx.nd.array(table_rows, ctx=self.context, dtype=np.int64)
            sparse = mx.nd.sparse.row_sparse_array((grad.as_nd_ndarray(), indices),
                                                   shape=self.shape, ctx=self.context)
            self.updater(index, sparse, table.as_nd_ndarray())

    def state(self) -> AdamState:
        vocab_size, embed_size = self.shape
        if self.kind == "sgd" or not self.updater.states:
            return empty_state(self.kind, vocab_size, embed_size)._replace(step=self.step_count)
        states = pickle.loads(self.updater.get_states(dump_optimizer=False))
        exp_avg, exp_avg_sq = (Params(*(states[index][which].asnumpy() for index in range(2)))
                               for which in (0, 1))
        return AdamState(self.step_count, exp_avg, exp_avg_sq)

    def load_state(self, state: AdamState) -> None:
        self.reset()
        if self.kind == "sparse_adam":
            states = {index: tuple(mx.nd.array(np.asarray(values, np.float32), ctx=self.context)
                                   for values in pair)
                      for index, pair in enumerate(zip(state.exp_avg, state.exp_avg_sq))}
            self.updater.set_states(pickle.dumps(states))
        # MXNet counts t per parameter; the next step is t + 1 for both tables.
        self.optimizer._index_update_count.update({0: int(state.step), 1: int(state.step)})
        self.optimizer.num_update = int(state.step)
        self.step_count = int(state.step)
