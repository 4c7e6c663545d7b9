"""TensorFlow's sparse optimisers, `--optimizer sparse_adam` and `sgd`, for both steps.

Keras 3 has no lazy Adam (its Adam densifies a lookup's `tf.IndexedSlices` gradient), so
`RowOptimizer` is torch's SparseAdam, and word2vec's SGD, on rows:
- the chapter step hands it the tape's `tf.IndexedSlices` (`apply_slices`): repeated ids are
  summed (`tf.unique` + `unsorted_segment_sum`), the padding id 0 dropped, and only those
  rows are gathered, updated and scattered back;
- the fast step hands it a local batch's rows (`common.batching.localize`, padded to a
  power-of-two count so XLA compiles few shapes) with their gradients (`apply_local`).
The state is a step count and, for sparse_adam, the (V, E) moments of both tables (sgd:
(0, E), none), in the same variables whichever step runs.
"""
from __future__ import annotations

import tensorflow as tf

from backends.base import ADAM_BETAS, ADAM_EPS, moment_rows


class RowOptimizer(tf.Module):
    """sparse_adam (torch.optim.SparseAdam) or sgd (`w -= lr grad`) on the touched rows."""

    def __init__(self, name: str, tables: tuple[tf.Variable, ...]) -> None:
        super().__init__(name=name)
        self.kind = name
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        rows = moment_rows(name, int(tables[0].shape[0]))
        shape = (rows, int(tables[0].shape[1]))
        self.exp_avg = tuple(tf.Variable(tf.zeros(shape), trainable=False, name="exp_avg")
                             for _ in tables)
        self.exp_avg_sq = tuple(tf.Variable(tf.zeros(shape), trainable=False,
                                            name="exp_avg_sq") for _ in tables)

    def reset(self) -> None:
        """Forget all state, as a fresh optimiser."""
        self.step.assign(0)
        for moment in (*self.exp_avg, *self.exp_avg_sq):
            moment.assign(tf.zeros_like(moment))

    def _step_size(self, lr: tf.Tensor) -> tf.Tensor:
        """SparseAdam's lr sqrt(1 - beta2^t) / (1 - beta1^t), in float64 as torch's floats."""
        beta1, beta2 = ADAM_BETAS
        step = tf.cast(self.step, tf.float64)
        return tf.cast(lr, tf.float64) * tf.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)

    def _apply_rows(self, index: int, table: tf.Variable, rows: tf.Tensor, grads: tf.Tensor,
                    touched: tf.Tensor, lr: tf.Tensor) -> None:
        """Update `rows` (n,) of `table` whose gradient is `grads` (n, E), where `touched`
        (n,) bool; untouched entries (padding) write back what they read. The step counted."""
        indices = rows[:, None]
        keep = touched[:, None]
        if self.kind == "sgd":
            table.scatter_nd_sub(indices, tf.where(keep, lr * grads, 0.0))
            return
        beta1, beta2 = ADAM_BETAS
        exp_avg, exp_avg_sq = self.exp_avg[index], self.exp_avg_sq[index]
        m, v = tf.gather(exp_avg, rows), tf.gather(exp_avg_sq, rows)
        new_m = m + (grads - m) * (1 - beta1)
        new_v = v + (grads * grads - v) * (1 - beta2)
        step_size = tf.cast(self._step_size(lr), tf.float32)
        values = tf.gather(table, rows)
        new_values = values - step_size * new_m / (tf.sqrt(new_v) + ADAM_EPS)
        exp_avg.scatter_nd_update(indices, tf.where(keep, new_m, m))
        exp_avg_sq.scatter_nd_update(indices, tf.where(keep, new_v, v))
        table.scatter_nd_update(indices, tf.where(keep, new_values, values))

    def apply_slices(self, gradients: list[tf.IndexedSlices], tables: tuple[tf.Variable, ...],
                     lr: tf.Tensor) -> None:
        """The chapter route: one step on the lookups' `tf.IndexedSlices` gradients."""
        self.step.assign_add(1)
        for index, (table, gradient) in enumerate(zip(tables, gradients)):
            rows, positions = tf.unique(gradient.indices)
            grads = tf.math.unsorted_segment_sum(gradient.values, positions, tf.size(rows))
            self._apply_rows(index, table, rows, grads, rows != 0, lr)

    def apply_local(self, rows: tf.Tensor, touched: tf.Tensor, gradients: tuple[tf.Tensor, ...],
                    tables: tuple[tf.Variable, ...], lr: tf.Tensor) -> None:
        """The fast route: `rows` (n,) the batch's rows, `touched` (2, n) per table,
        `gradients` (n, E) per table, over the local tables `tf.gather(table, rows)`."""
        self.step.assign_add(1)
        for index, (table, grads) in enumerate(zip(tables, gradients)):
            self._apply_rows(index, table, rows, grads, touched[index] > 0, lr)
