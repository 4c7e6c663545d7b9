"""What every backend's `variants.py` shares: the host side of the four combinations.

A `VariantBackend` (one per framework, in `backends/<fw>/variants.py`) is that framework's
`Backend` whose tables are named (`center`, `context` and, for hierarchical softmax, `inner`)
and whose step is the framework's autodiff and stock optimiser (Adam, or SGD: on a dense gradient
it moves the touched rows alone, the others' gradient being 0) on `common.variants`' batches. This
mixin turns the chapter's batches into the combination's, draws the initial tables, and keeps
the `Backend` contract (two-table `Params` and `AdamState` for the centre/context pair) so the
epoch driver, the held-out loss and `similar` work unchanged. The framework supplies:

    get_tables() -> {name: (rows, E)}            host copies
    set_tables({name: array})                    replace them and reset the optimiser
    optimizer_tables() -> VariantState           the step and Adam's moments per table (sgd: (0, E))
    load_optimizer_tables(VariantState)
    variant_loss_and_grads(VariantBatch) -> (float, {name: gradient})
    variant_eval(VariantBatch) -> device scalar  the summed objective, forward only
    variant_step(VariantBatch, lr) -> device scalar   one Adam step, returns the summed loss
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from backends.base import AdamState, Params, init_params_numpy
from common.batching import Batch
from common.variants import (CHAPTER, HuffmanTree, VariantBatch, build_huffman, input_table,
                             table_names, to_variant)


class VariantState(NamedTuple):
    """The optimiser's state over named tables: what a checkpoint of any combination holds
    (sgd: the step count, with (0, E) moments, as `backends.base.AdamState`)."""

    step: int
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]


def initial_tables(vocab_size: int, embed_size: int, seed: int,
                   loss: str) -> dict[str, np.ndarray]:
    """The chapter's Xavier pair (the same for every combination and backend), and for
    hierarchical softmax V-1 inner-node vectors at zero, as word2vec initialises syn1."""
    center, context = init_params_numpy(vocab_size, embed_size, seed)
    tables = {"center": center, "context": context}
    if loss == "hsoftmax":
        tables["inner"] = np.zeros((vocab_size - 1, embed_size), np.float32)
    return tables


class VariantMixin:
    """Host-side glue for `VariantBackend`s; put it first in the bases."""

    vocab_size: int
    embed_size: int
    steps_per_call = 1  # one autodiff step per call, as the chapter's loop

    def setup_variant(self, model: str, loss: str, *, max_window: int, num_noise: int,
                      counts: np.ndarray | None = None,
                      tree: HuffmanTree | None = None) -> None:
        """Remember the combination; build the Huffman tree from the vocabulary's counts."""
        self.model_name, self.loss_name = model, loss
        self.max_window, self.num_noise = max_window, num_noise
        if loss == "hsoftmax" and tree is None:
            if counts is None:
                raise ValueError("hierarchical softmax needs the vocabulary's counts")
            tree = build_huffman(counts)
        self.tree = tree
        self.table_names = table_names(loss)

    def table_shape(self, name: str) -> tuple[int, int]:
        return (self.vocab_size - 1 if name == "inner" else self.vocab_size, self.embed_size)

    def variant_batch(self, batch: Batch | VariantBatch) -> VariantBatch:
        if isinstance(batch, VariantBatch):
            return batch
        return to_variant(batch, self.model_name, self.loss_name, max_window=self.max_window,
                          num_noise=self.num_noise, tree=self.tree)

    # -- the Backend contract --------------------------------------------------------------
    def init_params(self, seed: int) -> None:
        self.set_tables(initial_tables(self.vocab_size, self.embed_size, seed, self.loss_name))

    def get_params(self) -> Params:
        tables = self.get_tables()
        return Params(tables["center"], tables["context"])

    def set_params(self, params: Params) -> None:
        """The pair from `params`; the inner table (if any) starts again at zero."""
        self._check_params(params)
        tables = initial_tables(self.vocab_size, self.embed_size, 0, self.loss_name)
        tables.update(center=params.center, context=params.context)
        self.set_tables(tables)

    def moment_shape(self, name: str) -> tuple[int, int]:
        """Adam's moments are shaped as the table; sgd keeps none ((0, E), as AdamState)."""
        return (0, self.embed_size) if self.optimizer == "sgd" else self.table_shape(name)

    def empty_moments(self) -> dict[str, np.ndarray]:
        return {name: np.zeros(self.moment_shape(name), np.float32) for name in self.table_names}

    def check_tables(self, tables: dict[str, np.ndarray], what: str,
                     moments: bool = False) -> None:
        from common.errors import DataError

        if set(tables) != set(self.table_names):
            raise DataError(f"{what} holds tables {sorted(tables)}, --loss {self.loss_name} "
                            f"needs {list(self.table_names)}")
        shape_of = self.moment_shape if moments else self.table_shape
        for name, table in tables.items():
            if np.shape(table) != shape_of(name):
                raise DataError(f"{what} {name} has shape {np.shape(table)}, this model needs "
                                f"{shape_of(name)}")

    def check_moments(self, state: VariantState) -> None:
        for moments in (state.exp_avg, state.exp_avg_sq):
            self.check_tables(moments, "optimizer state", moments=True)

    def optimizer_state(self) -> AdamState:
        state = self.optimizer_tables()
        return AdamState(state.step, Params(state.exp_avg["center"], state.exp_avg["context"]),
                         Params(state.exp_avg_sq["center"], state.exp_avg_sq["context"]))

    def load_optimizer_state(self, state: AdamState) -> None:
        """The pair's moments from `state`; the inner table's (if any) at zero."""
        self._check_adam_state(state)
        zeros = self.empty_moments()
        self.load_optimizer_tables(VariantState(
            state.step, dict(zeros, center=state.exp_avg.center, context=state.exp_avg.context),
            dict(zeros, center=state.exp_avg_sq.center, context=state.exp_avg_sq.context)))

    def loss_and_grads(self, batch: Batch | VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        return self.variant_loss_and_grads(self.variant_batch(batch))

    def eval_loss(self, batch: Batch | VariantBatch) -> Any:
        return self.variant_eval(self.variant_batch(batch))

    def train_step(self, batch: Batch | VariantBatch) -> Any:
        batch = self.variant_batch(batch)
        return self.variant_step(batch, self.next_lr())

    def train_steps(self, batches: Sequence[Batch]) -> list[Any]:
        return [self.train_step(batch) for batch in batches]

    def export_table(self) -> np.ndarray:
        """The input-side table (the context table for CBOW): the vectors users get."""
        return self.get_tables()[input_table(self.model_name)]

    def similar(self, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from backends.base import Backend

        return Backend.similar(_TableView(self, self.export_table()), query_ids, k)


class _TableView:
    """`Backend.similar` over another table than the centre one."""

    def __init__(self, backend: Any, table: np.ndarray) -> None:
        self.vocab_size, self._table = backend.vocab_size, table

    def get_params(self) -> Params:
        return Params(self._table, self._table)


def is_variant(model: str, loss: str) -> bool:
    """True when (model, loss) is not the chapter's (its backends' `variants.py` train it)."""
    return (model, loss) != CHAPTER
