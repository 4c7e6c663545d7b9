"""The optimisers in plain NumPy, as torch defines them: NumPy has no optimiser of its own.

Dense Adam (`adam_update`), `torch.optim.SparseAdam` (`sparse_adam_update`) and word2vec's
SGD (`sgd_update`); the last two move only the rows a batch touches.

The update, per table, with t the 1-based step:
    m = beta1 m + (1 - beta1) g
    v = beta2 v + (1 - beta2) g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
eps is added after the bias correction of sqrt(v), as torch does. Dense: every row's moments
decay at every step, touched by the batch or not. The in-place, fused version of the same
update is `backends/numpy/fast.py`'s; its sparse optimisers run these on the touched rows.
"""
from __future__ import annotations

import numpy as np

from backends.base import ADAM_BETAS, ADAM_EPS


def adam_update(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
                exp_avg_sq: np.ndarray, step: int, lr: float) -> None:
    """One Adam step on `param` (any shape), updating it and both moments in place."""
    beta1, beta2 = ADAM_BETAS
    # Python floats: under NumPy 2 a NumPy float64 scalar would make float32 arithmetic float64.
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    exp_avg[...] = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denominator = np.sqrt(exp_avg_sq) / bias_correction2 ** 0.5 + ADAM_EPS
    param -= float(lr) / bias_correction1 * exp_avg / denominator


def sparse_adam_update(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
                       exp_avg_sq: np.ndarray, rows: np.ndarray, step: int, lr: float) -> None:
    """`torch.optim.SparseAdam` on the (V, E) `param`: only `rows` move, moments included.

    Untouched rows keep their moments (no decay on the steps that skip them). SparseAdam's
    step size is lr sqrt(1 - beta2^t) / (1 - beta1^t), with eps added to the uncorrected
    sqrt(v): not quite Adam's placement of eps.
    """
    beta1, beta2 = ADAM_BETAS
    g = grad[rows]
    m = beta1 * exp_avg[rows] + (1 - beta1) * g
    v = beta2 * exp_avg_sq[rows] + (1 - beta2) * g * g
    exp_avg[rows], exp_avg_sq[rows] = m, v
    step_size = float(lr) * (1 - beta2 ** step) ** 0.5 / (1 - beta1 ** step)
    param[rows] -= step_size * m / (np.sqrt(v) + ADAM_EPS)


def sgd_update(param: np.ndarray, grad: np.ndarray, rows: np.ndarray, lr: float) -> None:
    """word2vec's update `w -= lr grad` on `rows` (the others' gradient is 0 anyway)."""
    param[rows] -= float(lr) * grad[rows]
