"""The NumPy reference backend: the parity oracle, and a (slow) trainer in its own right.

Both tables live in one (2, V, E) float32 array, and so do the gradient and Adam's moments, so
that the dense Adam update is one pass of in-place ufuncs over all parameters rather than two.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Backend, Params
from backends.numpy import model
from common.batching import Batch
from common.errors import ConfigError

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
        if optimizer != "adam":
            raise ConfigError("the numpy backend offers only --optimizer adam")
        shape = (2, vocab_size, embed_size)  # [0] centre table, [1] context table
        self._params = np.zeros(shape, DTYPE)
        self._grads = np.zeros(shape, DTYPE)
        self._exp_avg = np.zeros(shape, DTYPE)
        self._exp_avg_sq = np.zeros(shape, DTYPE)
        self._scratch = np.empty(shape, DTYPE)
        self.adam_steps = 0
        self.init_params(seed)

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
        for index, table in enumerate(params):
            self._check_shape(table, "parameter table")
            self._params[index] = table
        self._reset_optimizer()


    def _reset_optimizer(self) -> None:
        self.adam_steps = 0
        self._exp_avg.fill(0)
        self._exp_avg_sq.fill(0)

    # -- training ---------------------------------------------------------------------------
    def _forward_backward(self, batch: Batch) -> np.ndarray:
        """Fill `self._grads` for `batch` and return the loss (a 0-d float32 array)."""
        loss, _ = model.objective_and_gradients(
            batch.centers, batch.contexts_negatives, batch.masks, batch.labels,
            self._params[0], self._params[1],
            out=Params(self._grads[0], self._grads[1]))
        return loss

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        loss = self._forward_backward(batch)
        return float(loss), Params(self._grads[0].copy(), self._grads[1].copy())

    def eval_loss(self, batch: Batch) -> np.float32:
        """The forward alone: no gradient buffer or Adam moment is touched."""
        return DTYPE(model.objective(batch.centers, batch.contexts_negatives, batch.masks,
                                     batch.labels, self._params[0], self._params[1]))

    def train_step(self, batch: Batch) -> np.float32:
        loss = self._forward_backward(batch)
        self._adam_update()
        return DTYPE(loss)

    def _adam_update(self) -> None:
        """torch.optim.Adam (single-tensor path), dense: every row's moments decay each step.

        m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        In place over the stacked tables, one scratch buffer, no temporaries.
        """
        beta1, beta2 = ADAM_BETAS
        lr = self.next_lr()  # counts the step
        grads, exp_avg, exp_avg_sq, scratch = (self._grads, self._exp_avg, self._exp_avg_sq,
                                               self._scratch)
        # Python floats, not NumPy float64 scalars: under NumPy 2 those would turn the float32
        # arithmetic into float64 (slower, and rounded unlike torch).
        bias_correction1 = 1 - beta1 ** self.adam_steps
        bias_correction2_sqrt = (1 - beta2 ** self.adam_steps) ** 0.5
        step_size = float(lr) / bias_correction1

        np.subtract(grads, exp_avg, out=scratch)     # lerp, as torch: m + w * (g - m)
        scratch *= 1 - beta1
        exp_avg += scratch
        exp_avg_sq *= beta2
        np.multiply(grads, grads, out=scratch)
        scratch *= 1 - beta2
        exp_avg_sq += scratch
        np.sqrt(exp_avg_sq, out=scratch)             # the denominator, eps outside the sqrt
        scratch /= bias_correction2_sqrt
        scratch += ADAM_EPS
        np.divide(exp_avg, scratch, out=scratch)
        scratch *= step_size
        self._params -= scratch

    def optimizer_state(self) -> AdamState:
        return AdamState(self.adam_steps,
                         Params(self._exp_avg[0].copy(), self._exp_avg[1].copy()),
                         Params(self._exp_avg_sq[0].copy(), self._exp_avg_sq[1].copy()))

    def load_optimizer_state(self, state: AdamState) -> None:
        for moments, target in ((state.exp_avg, self._exp_avg),
                                (state.exp_avg_sq, self._exp_avg_sq)):
            for index, table in enumerate(moments):
                self._check_shape(table, "optimizer state")
                target[index] = table
        self.adam_steps = int(state.step)

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"]
