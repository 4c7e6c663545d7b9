"""word2vec's four combinations in JAX: pure functions of a parameter pytree, CBOW's context
mean, hierarchical softmax's inner-node table, `jax.value_and_grad` and Optax's Adam (or SGD)
in one `jax.jit`-compiled step.

The shapes and the objective are `common.variants'`; the oracle is
`backends/numpy/variants.py`. Both steps run this autodiff step (no tuned one).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax.backend import (JaxBackend, adam, adam_moments, adam_state_at,
                                  make_train_step)
from backends.variant_base import VariantMixin, VariantState
from common.variants import VariantBatch, input_table, output_table

Tables = dict[str, jax.Array]


def context_mean(vectors: jax.Array, masks: jax.Array) -> jax.Array:
    """(B, C, E) input rows, (B, C) masks -> (B, E) their masked mean (cbow_mean=1)."""
    count = jnp.maximum(masks.sum(axis=1, keepdims=True), 1)
    return (vectors * masks[:, :, None]).sum(axis=1) / count


def slot_mean_bce(logits: jax.Array, labels: jax.Array, masks: jax.Array) -> jax.Array:
    """(B, L) -> (B,): each example's mean sigmoid BCE over its real slots."""
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
    return (masks * bce).sum(axis=1) / jnp.maximum(masks.sum(axis=1), 1)


def objective(params: Tables, batch: VariantBatch, model: str, loss: str) -> jax.Array:
    """The batch objective: the sum of each example's mean over its real slots."""
    inputs, input_masks, targets, masks, labels = batch
    h = context_mean(params[input_table(model)][inputs], input_masks)            # (B, E)
    u = params[output_table(model, loss)][targets]                               # (B, L, E)
    return slot_mean_bce(jnp.einsum("ble,be->bl", u, h), labels, masks).sum()


def host_batch(batch: VariantBatch) -> VariantBatch:
    """The batch's arrays in the dtypes the compiled step takes (int32 ids, float32 else)."""
    return VariantBatch(*(np.asarray(array, dtype) for array, dtype in
                          zip(batch, (np.int32, np.float32, np.int32, np.float32, np.float32))))


def _to_host(tables: Tables) -> dict[str, np.ndarray]:
    """Parameters, gradients or an Adam moment -> host copies by name."""
    return {name: np.array(table, np.float32) for name, table in tables.items()}


class VariantBackend(VariantMixin, JaxBackend):
    """The four combinations through `jax.value_and_grad` and `optax.adam` or `optax.sgd`."""

    def __init__(self, vocab_size: int, embed_size: int, *, model: str, loss: str,
                 max_window: int, num_noise: int, counts: np.ndarray | None = None,
                 tree: Any = None, **options: Any) -> None:
        from backends.base import Backend

        Backend.__init__(self, vocab_size, embed_size, **options)
        kind, index = self.check_device(self.device)
        self.jax_device = jax.devices(kind)[index]
        self.setup_variant(model, loss, max_window=max_window, num_noise=num_noise,
                           counts=counts, tree=tree)
        self._optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0) \
            if self.optimizer == "sgd" else adam()
        self._eval_fn = functools.partial(objective, model=model, loss=loss)
        self._eval = jax.jit(self._eval_fn)
        self.use_gradients(jax.value_and_grad(self._eval_fn))
        self.init_params(self.seed)

    def use_gradients(self, gradients: Any) -> None:
        """Train with `gradients` (params, batch) -> (loss, grads): `jax.value_and_grad` of
        the objective, or the data-parallel engine's sum of it over the replicas."""
        self._step = make_train_step(gradients, self._optimizer)
        self._gradients = jax.jit(gradients)

    def _device_batch(self, batch: VariantBatch) -> VariantBatch:
        return VariantBatch(*(jax.device_put(array, self.jax_device)
                              for array in host_batch(batch)))

    def _put(self, tables: dict[str, np.ndarray]) -> Tables:
        return {name: jax.device_put(np.array(tables[name], np.float32), self.jax_device)
                for name in self.table_names}

    def get_tables(self) -> dict[str, np.ndarray]:
        return _to_host(self._params)

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.check_tables(tables, "parameter table")
        self._params = self._put(tables)
        self._opt_state = self._optimizer.init(self._params)
        self.adam_steps = 0

    def optimizer_tables(self) -> VariantState:
        if self.optimizer == "sgd":
            return VariantState(self.adam_steps, self.empty_moments(), self.empty_moments())
        moments = adam_moments(self._opt_state)
        return VariantState(int(moments.count), _to_host(moments.mu), _to_host(moments.nu))

    def load_optimizer_tables(self, state: VariantState) -> None:
        self.check_moments(state)
        self.adam_steps = int(state.step)
        if self.optimizer == "sgd":  # no state but the step count (the schedule's position)
            self._opt_state = self._optimizer.init(self._params)
            return
        self._opt_state = adam_state_at(self._optimizer, self._params, int(state.step),
                                        self._put(state.exp_avg), self._put(state.exp_avg_sq),
                                        self.jax_device)

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        value, grads = self._gradients(self._params, self._device_batch(batch))
        return float(value), {name: np.array(grad) for name, grad in grads.items()}

    def variant_eval(self, batch: VariantBatch) -> jax.Array:
        return self._eval(self._params, self._device_batch(batch))

    def variant_step(self, batch: VariantBatch, lr: float) -> jax.Array:
        self._params, self._opt_state, value = self._step(
            self._params, self._opt_state, self._device_batch(batch), np.float32(lr))
        return value
