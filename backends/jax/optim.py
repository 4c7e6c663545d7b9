"""JAX's sparse optimisers, `--optimizer sparse_adam` and `sgd`: Optax has no lazy update.

Optax's transformations map a whole gradient pytree to a whole update, so their cost is V's.
Here the step differentiates with respect to the rows a batch looks up, gathered from the
tables (`common.batching.localize` renumbers the batch on the host, padded to a power-of-two
row count so that jit compiles few shapes), and these functions update those rows and
scatter them back: torch.optim.SparseAdam's update, or word2vec's `w -= lr grad`. Padding
entries (row 0, untouched) write back what they read.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from backends.base import ADAM_BETAS, ADAM_EPS


class RowState(NamedTuple):
    """The sparse optimisers' state: the step count and, for sparse_adam, (V, E) moments of
    both tables ((0, E) for sgd), in `Params` order."""

    count: jax.Array
    exp_avg: tuple[jax.Array, jax.Array]
    exp_avg_sq: tuple[jax.Array, jax.Array]


def update_rows(kind: str, table: jax.Array, exp_avg: jax.Array, exp_avg_sq: jax.Array,
                rows: jax.Array, grads: jax.Array, touched: jax.Array, count: jax.Array,
                lr: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of `kind` on `rows` (n,) of `table` (V, E), their gradient `grads` (n, E)
    where `touched` (n,) > 0; `count` is the step's number (1-based). -> the new table and
    moments."""
    keep = (touched > 0)[:, None]
    values = table[rows]
    if kind == "sgd":
        return table.at[rows].set(jnp.where(keep, values - lr * grads, values)), exp_avg, \
            exp_avg_sq
    beta1, beta2 = ADAM_BETAS
    m, v = exp_avg[rows], exp_avg_sq[rows]
    new_m = m + (grads - m) * (1 - beta1)
    new_v = v + (grads * grads - v) * (1 - beta2)
    step = count.astype(jnp.float32)
    step_size = lr * jnp.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    new_values = values - step_size * new_m / (jnp.sqrt(new_v) + ADAM_EPS)
    return (table.at[rows].set(jnp.where(keep, new_values, values)),
            exp_avg.at[rows].set(jnp.where(keep, new_m, m)),
            exp_avg_sq.at[rows].set(jnp.where(keep, new_v, v)))
