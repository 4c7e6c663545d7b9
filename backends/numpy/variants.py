"""The oracle of word2vec's four combinations in NumPy: forward and hand-derived gradients.

With h_b the masked mean of the input rows (CBOW's context mean, cbow_mean=1; skip-gram's one
centre row), z_bl = h_b . out[t_bl], M the output mask and N_b = max(sum_l M_bl, 1):
    loss = sum_b (1 / N_b) sum_l M_bl bce(z_bl, y_bl)
    dz_bl = M_bl / N_b (sigmoid(z_bl) - y_bl)
    d out[t_bl] += dz_bl h_b,   dh_b = sum_l dz_bl out[t_bl],   d in[x_bc] += m_bc dh_b / n_b
Checked against finite differences in tests/test_variants.py; every framework's
`variants.py` must reproduce these numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from backends.numpy import optim
from backends.numpy.backend import NumpyBackend
from backends.variant_base import VariantMixin, VariantState
from common.variants import VariantBatch, input_table, output_table


def context_mean(vectors: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B, C, E) input rows, (B, C) masks -> (B, E) their masked mean (0 on padding rows)."""
    count = np.maximum(masks.sum(axis=1, keepdims=True), 1)
    return (vectors * masks[:, :, None]).sum(axis=1) / count


def slot_mean_bce(logits: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B, L) -> (B,): each example's mean sigmoid BCE over its real slots."""
    bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return (masks * bce).sum(axis=1) / np.maximum(masks.sum(axis=1), 1)


def objective(tables: dict[str, np.ndarray], batch: VariantBatch, model: str,
              loss: str) -> np.floating:
    """The batch objective (sum over examples) of (`model`, `loss`) on `tables`, in their
    dtype (float64 tables for the finite-difference check)."""
    inputs, input_masks, targets, masks, labels = batch
    h = context_mean(tables[input_table(model)][inputs], input_masks)        # (B, E)
    logits = np.einsum("be,ble->bl", h, tables[output_table(model, loss)][targets])
    return slot_mean_bce(logits, labels, masks).sum(dtype=logits.dtype)


def objective_and_gradients(tables: dict[str, np.ndarray], batch: VariantBatch, model: str,
                            loss: str) -> tuple[np.floating, dict[str, np.ndarray]]:
    """The objective and its gradient with respect to every table (dense, zero elsewhere)."""
    inputs, input_masks, targets, masks, labels = batch
    source, sink = input_table(model), output_table(model, loss)
    counts = np.maximum(input_masks.sum(axis=1, keepdims=True), 1)           # (B, 1)
    h = context_mean(tables[source][inputs], input_masks)                    # (B, E)
    u = tables[sink][targets]                                                 # (B, L, E)
    logits = np.einsum("be,ble->bl", h, u)
    slots = np.maximum(masks.sum(axis=1, keepdims=True), 1)
    dz = masks / slots * (1 / (1 + np.exp(-logits)) - labels)                 # (B, L)
    grads = {name: np.zeros_like(table) for name, table in tables.items()}
    np.add.at(grads[sink], targets.reshape(-1),
              (dz[:, :, None] * h[:, None, :]).reshape(-1, h.shape[1]))
    dh = np.einsum("bl,ble->be", dz, u) / counts                              # (B, E)
    np.add.at(grads[source], inputs.reshape(-1),
              (input_masks[:, :, None] * dh[:, None, :]).reshape(-1, h.shape[1]))
    return slot_mean_bce(logits, labels, masks).sum(dtype=logits.dtype), grads


class VariantBackend(VariantMixin, NumpyBackend):
    """The four combinations in NumPy: the oracle's gradient and `optim.adam_update`, or
    sgd's `w -= lr grad`."""

    def __init__(self, vocab_size: int, embed_size: int, *, model: str, loss: str,
                 max_window: int, num_noise: int, counts: np.ndarray | None = None,
                 tree: Any = None, **options: Any) -> None:
        from backends.base import Backend

        Backend.__init__(self, vocab_size, embed_size, **options)
        self.check_device(self.device)
        self.setup_variant(model, loss, max_window=max_window, num_noise=num_noise,
                           counts=counts, tree=tree)
        self._tables: dict[str, np.ndarray] = {}
        self.init_params(self.seed)

    def get_tables(self) -> dict[str, np.ndarray]:
        return {name: table.copy() for name, table in self._tables.items()}

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.check_tables(tables, "parameter table")
        self._tables = {name: np.array(tables[name], np.float32) for name in self.table_names}
        self._moments = [self.empty_moments() for _ in range(2)]
        self.adam_steps = 0

    def optimizer_tables(self) -> VariantState:
        exp_avg, exp_avg_sq = ({name: m.copy() for name, m in moments.items()}
                               for moments in self._moments)
        return VariantState(self.adam_steps, exp_avg, exp_avg_sq)

    def load_optimizer_tables(self, state: VariantState) -> None:
        self.check_moments(state)
        self._moments = [{name: np.array(moments[name], np.float32) for name in self.table_names}
                         for moments in (state.exp_avg, state.exp_avg_sq)]
        self.adam_steps = int(state.step)

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = objective_and_gradients(self._tables, batch, self.model_name,
                                              self.loss_name)
        return float(loss), grads

    def variant_eval(self, batch: VariantBatch) -> np.float32:
        return objective(self._tables, batch, self.model_name, self.loss_name)

    def variant_step(self, batch: VariantBatch, lr: float) -> np.float32:
        loss, grads = objective_and_gradients(self._tables, batch, self.model_name,
                                              self.loss_name)
        for name, table in self._tables.items():
            if self.optimizer == "sgd":  # the dense gradient: 0 on the untouched rows
                table -= float(lr) * grads[name]
                continue
            optim.adam_update(table, grads[name], self._moments[0][name], self._moments[1][name],
                              self.adam_steps, lr)
        return loss
