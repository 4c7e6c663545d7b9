"""The NumPy reference backend: the parity oracle, and a (slow) trainer in its own right.

`--step chapter` (the oracle): `model.objective_and_gradients` (`np.add.at` scatter) and
`optim.adam_update`, table by table. `--step fast`: `fast.objective_and_gradients` (sorted
scatter) and `fast.adam_update`, in place over both tables at once. Both tables live in one
(2, V, E) float32 array, and so do the gradient and Adam's moments, so that both steps share
one state and a run may switch between them.

The sparse optimisers (`sparse_adam`, `sgd`): the chapter step takes the dense gradient and
`optim.sparse_adam_update` / `optim.sgd_update` on `common.batching.touched_rows` (the
oracle); the fast step renumbers the batch to the rows it looks up (`localize`), runs the
fast gradient on those rows alone and updates them, so its cost follows the batch, not V.
sgd keeps no moments (its state is the step count).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import PADDED, AdamState, Backend, Params, Work, moment_rows
from backends.numpy import fast, model, optim
from common.batching import Batch, localize, touched_rows

DTYPE = np.float32


class NumpyBackend(Backend):
    """Forward, hand-derived gradients and torch.optim.Adam, in plain NumPy on the host."""

    name = "numpy"
    framework = "numpy"

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self.check_device(device)
        shape = (2, vocab_size, embed_size)  # [0] centre table, [1] context table
        self._params = np.zeros(shape, DTYPE)
        # The fast sparse step needs no (V, E) gradient or scratch; sgd keeps no moments.
        dense = optimizer == "adam" or step == "chapter"
        self._grads = np.zeros(shape if dense else (2, 0, embed_size), DTYPE)
        moments = (2, moment_rows(optimizer, vocab_size), embed_size)
        self._exp_avg = np.zeros(moments, DTYPE)
        self._exp_avg_sq = np.zeros(moments, DTYPE)
        self._scratch = np.empty(shape if optimizer == "adam" else (2, 0, embed_size), DTYPE)
        # The chapter's `net` over views of the stacked tables: it sees every update.
        self.model = model.SkipGramModel(self._params[0], self._params[1])
        self.init_params(seed)

    # -- disclosure -------------------------------------------------------------------------
    def work(self) -> Work:
        scatter = "np.add.at scatter" if self.step == "chapter" else "sorted scatter"
        update = "" if self.optimizer == "adam" else f", {self.optimizer} on the touched rows"
        return Work(PADDED, "none", 1, f"eager NumPy, gradient by hand, {scatter}{update}")

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return model.embed(table, ids)

    def skip_gram(self, centers: np.ndarray, contexts_negatives: np.ndarray,
                  center_table: np.ndarray, context_table: np.ndarray) -> np.ndarray:
        return model.skip_gram(centers, contexts_negatives, center_table, context_table)

    def masked_bce(self, logits: np.ndarray, labels: np.ndarray,
                   masks: np.ndarray) -> np.ndarray:
        return model.masked_bce(logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------
    def get_params(self) -> Params:
        return Params(self._params[0].copy(), self._params[1].copy())

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        self._params[0], self._params[1] = params
        self.adam_steps = 0
        self._exp_avg.fill(0)
        self._exp_avg_sq.fill(0)

    # -- training ---------------------------------------------------------------------------
    def _forward_backward(self, batch: Batch) -> np.ndarray:
        """Fill `self._grads` for `batch` by this backend's step; return the 0-d loss."""
        if self.step == "chapter":
            loss, grads = self.model.objective_and_gradients(*batch)
            self._grads[0], self._grads[1] = grads
            return loss
        loss, _ = fast.objective_and_gradients(*batch, self._params[0], self._params[1],
                                               out=Params(self._grads[0], self._grads[1]))
        return loss

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        if self.step == "fast" and self.optimizer != "adam":
            loss, local, grads = self._local_gradients(batch)
            dense = np.zeros_like(self._params)
            dense[:, local.rows] = grads
            dense[:, 0] = 0  # the padding row: no gradient reaches it
            return float(loss), Params(dense[0], dense[1])
        loss = self._forward_backward(batch)
        return float(loss), Params(self._grads[0].copy(), self._grads[1].copy())

    def _local_gradients(self, batch: Batch) -> tuple[np.ndarray, Any, np.ndarray]:
        """The fast gradient over the rows the batch looks up: (loss, LocalBatch, (2, n, E))."""
        local = localize(batch)
        tables = self._params.take(local.rows, axis=1)     # (2, n, E)
        grads = np.empty_like(tables)
        loss, _ = fast.objective_and_gradients(*local.batch, tables[0], tables[1],
                                               out=Params(grads[0], grads[1]))
        return loss, local, grads

    def eval_loss(self, batch: Batch) -> np.float32:
        """The forward alone: no gradient buffer or Adam moment is touched."""
        return DTYPE(self.model.objective(*batch))

    def train_step(self, batch: Batch) -> np.float32:
        if self.optimizer != "adam":
            return self._sparse_step(batch)
        loss = self._forward_backward(batch)
        lr = self.next_lr()  # counts the step
        if self.step == "chapter":
            for table in range(2):
                optim.adam_update(self._params[table], self._grads[table],
                                  self._exp_avg[table], self._exp_avg_sq[table],
                                  self.adam_steps, lr)
        else:
            fast.adam_update(self._params, self._grads, self._exp_avg, self._exp_avg_sq,
                             self._scratch, self.adam_steps, lr)
        return DTYPE(loss)

    def _sparse_step(self, batch: Batch) -> np.float32:
        """sparse_adam or sgd: the oracle on the dense gradient (chapter), or the touched rows
        gathered, stepped and scattered back (fast)."""
        lr = self.next_lr()
        if self.step == "chapter":
            loss = self._forward_backward(batch)
            for table, rows in enumerate(touched_rows(batch)):
                if self.optimizer == "sgd":
                    optim.sgd_update(self._params[table], self._grads[table], rows, lr)
                else:
                    optim.sparse_adam_update(self._params[table], self._grads[table],
                                             self._exp_avg[table], self._exp_avg_sq[table],
                                             rows, self.adam_steps, lr)
            return DTYPE(loss)
        loss, local, grads = self._local_gradients(batch)
        for table, touched in enumerate((local.center_touched, local.context_touched)):
            rows = local.rows[touched]
            if self.optimizer == "sgd":
                self._params[table, rows] -= DTYPE(lr) * grads[table, touched]
            else:
                # The oracle's update, on (n, E) gathered rows instead of the (V, E) tables.
                moments = [self._exp_avg[table, rows], self._exp_avg_sq[table, rows]]
                values = self._params[table, rows]
                optim.sparse_adam_update(values, grads[table, touched], *moments,
                                         slice(None), self.adam_steps, lr)
                self._params[table, rows] = values
                self._exp_avg[table, rows], self._exp_avg_sq[table, rows] = moments
        return DTYPE(loss)

    def optimizer_state(self) -> AdamState:
        return AdamState(self.adam_steps,
                         Params(self._exp_avg[0].copy(), self._exp_avg[1].copy()),
                         Params(self._exp_avg_sq[0].copy(), self._exp_avg_sq[1].copy()))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)
        self._exp_avg[0], self._exp_avg[1] = state.exp_avg
        self._exp_avg_sq[0], self._exp_avg_sq[1] = state.exp_avg_sq
        self.adam_steps = int(state.step)

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"]
