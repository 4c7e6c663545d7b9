"""word2vec's four combinations in PyTorch: `nn.Embedding` tables, CBOW's context mean,
hierarchical softmax's inner-node table, trained by autograd and `torch.optim.Adam` or
`torch.optim.SGD`.

The shapes and the objective are `common.variants`'; the oracle is
`backends/numpy/variants.py`. Both steps run this autodiff step; for skip-gram with hierarchical
softmax the `fast` step computes the same objective over the real path nodes alone
(`packed_objective`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backends.base import ADAM_BETAS, ADAM_EPS
from backends.torch.backend import TorchBackend
from backends.variant_base import VariantMixin, VariantState
from common.variants import VariantBatch, input_table, output_table


def context_mean(vectors: Tensor, masks: Tensor) -> Tensor:
    """(B, C, E) input rows, (B, C) masks -> (B, E) their masked mean (cbow_mean=1)."""
    count = masks.sum(dim=1, keepdim=True).clamp(min=1)
    return (vectors * masks.unsqueeze(2)).sum(dim=1) / count


def slot_mean_bce(logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """(B, L) -> (B,): each example's mean sigmoid BCE over its real slots."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, weight=masks, reduction="none")
    return bce.sum(dim=1) / masks.sum(dim=1).clamp(min=1)


class Word2VecVariant(nn.Module):
    """The centre and context tables, and for hierarchical softmax the V-1 inner nodes."""

    def __init__(self, vocab_size: int, embed_size: int, model: str, loss: str) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.center = nn.Embedding(vocab_size, embed_size)
        self.context = nn.Embedding(vocab_size, embed_size)
        if loss == "hsoftmax":
            self.inner = nn.Embedding(vocab_size - 1, embed_size)
            nn.init.zeros_(self.inner.weight)  # word2vec starts its syn1 at zero

    def input_vector(self, inputs: Tensor, input_masks: Tensor) -> Tensor:
        """(B, C), (B, C) -> (B, E): the mean of the input words' rows (skip-gram: its one)."""
        return context_mean(getattr(self, input_table(self.model))(inputs), input_masks)

    def forward(self, inputs: Tensor, input_masks: Tensor, targets: Tensor) -> Tensor:
        """(B, C), (B, C), (B, L) -> (B, L) logits of the input mean against the targets."""
        h = self.input_vector(inputs, input_masks)
        u = getattr(self, output_table(self.model, self.loss))(targets)          # (B, L, E)
        return torch.bmm(u, h.unsqueeze(2)).squeeze(2)

    def objective(self, inputs: Tensor, input_masks: Tensor, targets: Tensor, masks: Tensor,
                  labels: Tensor) -> Tensor:
        """The batch objective: the sum of each example's mean over its real slots."""
        return slot_mean_bce(self(inputs, input_masks, targets), labels, masks).sum()

    def packed_objective(self, inputs: Tensor, input_masks: Tensor, targets: Tensor,
                         masks: Tensor, labels: Tensor) -> Tensor:
        """`objective` over the real output slots alone, gathered by `masks.nonzero()`.

        Skip-gram's hierarchical-softmax rows hold 2W paths, each padded to the tree's depth:
        about two thirds padding on PTB. Skipping it takes a PTB epoch from 27.5 s to 16.5 s
        on one thread (benchmarks/README.md). Same sum, another summation order.
        """
        rows, slots = masks.nonzero(as_tuple=True)
        h = self.input_vector(inputs, input_masks)                                      # (B, E)
        u = getattr(self, output_table(self.model, self.loss))(targets[rows, slots])   # (N, E)
        bce = F.binary_cross_entropy_with_logits((u * h[rows]).sum(dim=1),
                                                 labels[rows, slots], reduction="none")
        return (bce / masks.sum(dim=1).clamp(min=1)[rows]).sum()


class VariantBackend(VariantMixin, TorchBackend):
    """The four combinations through autograd and `torch.optim.Adam` or `SGD`."""

    def __init__(self, vocab_size: int, embed_size: int, *, model: str, loss: str,
                 max_window: int, num_noise: int, counts: np.ndarray | None = None,
                 tree: Any = None, **options: Any) -> None:
        from backends.base import Backend

        Backend.__init__(self, vocab_size, embed_size, **options)
        kind, index = self.check_device(self.device)
        self.torch_device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
        self.setup_variant(model, loss, max_window=max_window, num_noise=num_noise,
                           counts=counts, tree=tree)
        self.net = Word2VecVariant(vocab_size, embed_size, model, loss).to(self.torch_device)
        # Packing pays where padding dominates: skip-gram's 2W paths (CBOW's one path per row
        # is mostly real; packed, its PTB epoch took 6.9 s against 6.2 s padded).
        packed = self.step == "fast" and (model, loss) == ("skipgram", "hsoftmax")
        self.objective = self.net.packed_objective if packed else self.net.objective
        self.init_params(self.seed)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """The stock optimiser, no state yet: Adam (the chapter's), or SGD."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=self.lr)
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)

    def _weights(self) -> dict[str, Tensor]:
        return {name: getattr(self.net, name).weight for name in self.table_names}

    def _tensors(self, batch: VariantBatch) -> list[Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(self.torch_device)
                for array, dtype in zip(batch, (np.int64, np.float32, np.int64, np.float32,
                                                np.float32))]

    def get_tables(self) -> dict[str, np.ndarray]:
        return {name: weight.detach().cpu().numpy().copy()
                for name, weight in self._weights().items()}

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.check_tables(tables, "parameter table")
        with torch.no_grad():
            for name, weight in self._weights().items():
                weight.copy_(torch.from_numpy(np.asarray(tables[name], np.float32)))
        self.torch_optimizer = self._new_optimizer()
        self.adam_steps = 0

    def optimizer_tables(self) -> VariantState:
        if self.optimizer == "sgd":
            return VariantState(self.adam_steps, self.empty_moments(), self.empty_moments())
        moments: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
        for name, weight in self._weights().items():
            state = self.torch_optimizer.state.get(weight, {})
            for kind, out in zip(("exp_avg", "exp_avg_sq"), moments):
                out[name] = state[kind].cpu().numpy().copy() if state else \
                    np.zeros(tuple(weight.shape), np.float32)
        return VariantState(self.adam_steps, *moments)

    def load_optimizer_tables(self, state: VariantState) -> None:
        self.check_moments(state)
        self.torch_optimizer = self._new_optimizer()
        if self.optimizer == "sgd":  # no state but the step count (the schedule's position)
            self.adam_steps = int(state.step)
            return
        for name, weight in self._weights().items():
            self.torch_optimizer.state[weight] = {
                "step": torch.tensor(float(state.step)),
                "exp_avg": torch.tensor(np.asarray(state.exp_avg[name], np.float32),
                                        device=self.torch_device),
                "exp_avg_sq": torch.tensor(np.asarray(state.exp_avg_sq[name], np.float32),
                                           device=self.torch_device)}
        self.adam_steps = int(state.step)

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        weights = self._weights()
        loss = self.objective(*self._tensors(batch))
        # Hierarchical softmax leaves one of the pair out of the graph: its gradient is 0.
        grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True,
                                    materialize_grads=True)
        return float(loss), {name: grad.cpu().numpy() for name, grad in zip(weights, grads)}

    @torch.no_grad()
    def variant_eval(self, batch: VariantBatch) -> Tensor:
        return self.objective(*self._tensors(batch))

    def variant_step(self, batch: VariantBatch, lr: float) -> Tensor:
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr
        self.torch_optimizer.zero_grad(set_to_none=True)
        loss = self.objective(*self._tensors(batch))
        loss.backward()
        self.torch_optimizer.step()
        return loss.detach()
