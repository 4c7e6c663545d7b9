"""The chapter's model in PyTorch: the embedding pair, `skip_gram` by `bmm`, the masked loss.

Two ways to the gradient, the same mathematics:
- `SkipGramModel` + autograd, as the chapter writes it. The sparse-Adam option trains this way
  (its optimiser needs `nn.Embedding(sparse=True)`'s sparse gradients).
- `DenseGradients`, the objective's gradient written out (as in `backends/numpy/model.py`):
  the dense-Adam step, 3x faster than the best autograd step on a 2-core CPU (4x faster than
  the chapter's loop). Autograd's step spends most of its time in `embedding_dense_backward`
  and in page faults on the (B, L, E) temporaries it allocates every step
  (`python -m benchmarks.torch_step_profile --profile chapter` shows where).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def skip_gram(centers: Tensor, contexts_negatives: Tensor, center_table: Tensor,
              context_table: Tensor, *, sparse: bool = False) -> Tensor:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), the chapter's `bmm(v, u^T)`.
    `sparse` makes autograd return sparse gradients for the tables (SparseAdam needs them).
    """
    v = F.embedding(centers, center_table, sparse=sparse)              # (B, 1, E)
    u = F.embedding(contexts_negatives, context_table, sparse=sparse)  # (B, L, E)
    return torch.bmm(v, u.permute(0, 2, 1))


def masked_bce(logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """The chapter's `SigmoidBCELoss`: (B, L) logits, labels, masks -> (B,) mean over L."""
    # `weight` must be floating; the chapter's example passes an integer mask.
    weight = masks.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), weight=weight,
                                              reduction="none").mean(dim=1)


def per_example_objective(logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the clamp makes all-padding rows count 0
    instead of 0/0 (fixed-shape batches pad the last one).
    """
    slots = masks.shape[1]
    real = masks.sum(dim=1).to(logits.dtype).clamp(min=1)
    return masked_bce(logits, labels, masks) * slots / real


class SkipGramModel(nn.Module):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1])."""

    def __init__(self, vocab_size: int, embed_size: int, *, sparse: bool = False) -> None:
        super().__init__()
        self.center = nn.Embedding(vocab_size, embed_size, sparse=sparse)
        self.context = nn.Embedding(vocab_size, embed_size, sparse=sparse)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform, as the chapter's `init_weights` (nn.Embedding's default is N(0, 1)).

        The backend then overwrites both tables from `init_params_numpy`, so that a seed means
        the same tables in every backend; this keeps the module right when used on its own.
        """
        nn.init.xavier_uniform_(self.center.weight)
        nn.init.xavier_uniform_(self.context.weight)

    def forward(self, centers: Tensor, contexts_negatives: Tensor) -> Tensor:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        return skip_gram(centers, contexts_negatives, self.center.weight, self.context.weight,
                         sparse=self.center.sparse)

    def objective(self, centers: Tensor, contexts_negatives: Tensor, masks: Tensor,
                  labels: Tensor) -> Tensor:
        """The optimised quantity, the chapter's `l.sum()`: a 0-d tensor."""
        logits = self(centers, contexts_negatives).reshape(labels.shape)
        return per_example_objective(logits, labels, masks).sum()


class ScatterPlan(NamedTuple):
    """The (V, B) sparse matrix that routes slot gradients to context rows, minus its values.

    Built on the host from the batch's ids alone (`scatter_plan`): row w lists the slots
    (b, l) whose id is w, so (d loss / d logits)[order] are its values.
    """

    row_starts: Tensor  # (V + 1,) int64, CSR row pointers
    examples: Tensor    # (B * L,) int64, the example b of each slot, sorted by id
    order: Tensor       # (B * L,) int64, flat slot indices sorted by id (stable)


def scatter_plan(contexts_negatives: np.ndarray, vocab_size: int) -> ScatterPlan:
    """Sort the batch's slots by id on the host: (B, L) ids -> ScatterPlan.

    NumPy's stable argsort is a radix sort on 16-bit keys: about 0.15 ms for B * L = 30720
    slots, several times faster than torch.sort, whose cost `index_add_` pays inside.
    """
    slots = contexts_negatives.shape[1]
    ids = contexts_negatives.reshape(-1)
    keys = ids.astype(np.uint16) if vocab_size <= 1 << 16 else ids
    order = np.argsort(keys, kind="stable")
    row_starts = np.zeros(vocab_size + 1, dtype=np.int64)
    np.cumsum(np.bincount(ids, minlength=vocab_size), out=row_starts[1:])
    return ScatterPlan(torch.from_numpy(row_starts), torch.from_numpy(order // slots),
                       torch.from_numpy(order))


class DenseGradients:
    """The objective and its dense gradients with respect to both tables, written out.

    With x_bl = v_b . u_bl (v = centre rows, u = context rows) and w_b = 1 / max(sum_l m_bl, 1):
        g_bl = d loss / d x_bl = w_b m_bl (sigmoid(x_bl) - y_bl)                (B, L)
        d loss / d center[i]  = sum over b with centers_b = i of sum_l g_bl u_bl
        d loss / d context[j] = sum over (b, l) with ids_bl = j of g_bl v_b
    Both are exact and dense (untouched rows get 0), so the optimiser is still the chapter's
    dense Adam. Large intermediates live in a reused workspace: a fresh 12 MB (B, L, E)
    tensor per step is a fresh mmap whose page faults cost milliseconds on some steps.
    """

    def __init__(self, vocab_size: int, embed_size: int, device: torch.device) -> None:
        self.vocab_size, self.embed_size, self.device = vocab_size, embed_size, device
        self._workspace = torch.empty(0, device=device)
        with warnings.catch_warnings():  # torch says once per process that CSR is "beta"
            warnings.simplefilter("ignore", UserWarning)
            torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.int64),
                                    torch.zeros(0, dtype=torch.int64), torch.zeros(0), (1, 1))

    def _buffer(self, *shape: int) -> Tensor:
        """A view of the workspace of `shape`, grown (never shrunk) on demand."""
        size = int(np.prod(shape))
        if self._workspace.numel() < size:
            self._workspace = torch.empty(size, device=self.device)
        return self._workspace[:size].view(*shape)

    @torch.no_grad()
    def __call__(self, centers: Tensor, contexts_negatives: Tensor, masks: Tensor,
                 labels: Tensor, center_table: Tensor, context_table: Tensor,
                 center_grad: Tensor, context_grad: Tensor,
                 plan: ScatterPlan | None = None) -> Tensor:
        """Overwrite `center_grad`, `context_grad` (V, E) and return the summed loss (0-d).

        (B, 1), (B, L) int64 ids, (B, L) float masks and labels, (V, E) tables.
        `plan` (CPU) sums the context gradient as a CSR matrix product; without it
        (GPU), `index_add_` sums it with atomics.
        """
        batch_size, slots = contexts_negatives.shape
        center_ids = centers.reshape(batch_size)
        slot_ids = contexts_negatives.reshape(-1)
        v = center_table.index_select(0, center_ids)                       # (B, E)
        u = torch.index_select(context_table, 0, slot_ids,
                               out=self._buffer(batch_size * slots, self.embed_size))
        logits = torch.bmm(v.unsqueeze(1), u.view(batch_size, slots, -1).transpose(1, 2))
        logits = logits.view(batch_size, slots)                            # (B, L)

        weights = masks / masks.sum(dim=1, keepdim=True).clamp(min=1)      # w_b m_bl
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights,
                                                  reduction="sum")
        slot_grads = torch.sigmoid(logits).sub_(labels).mul_(weights)      # g, (B, L)

        # sum_l g_bl u_bl is an embedding bag weighted by g: half the time of bmm(g, u).
        center_rows = F.embedding_bag(contexts_negatives, context_table,
                                      per_sample_weights=slot_grads, mode="sum")  # (B, E)
        center_grad.zero_().index_add_(0, center_ids, center_rows)

        if plan is not None:
            routes = torch.sparse_csr_tensor(plan.row_starts, plan.examples,
                                             slot_grads.reshape(-1)[plan.order],
                                             (self.vocab_size, batch_size),
                                             check_invariants=False)
            torch.mm(routes, v, out=context_grad)   # (V, B) @ (B, E); repeated ids summed
        else:
            # Reuses u's memory: u is dead once the logits exist (the bag read the table).
            slot_rows = torch.mul(slot_grads.unsqueeze(2), v.unsqueeze(1),
                                  out=self._buffer(batch_size, slots, self.embed_size))
            context_grad.zero_().index_add_(0, slot_ids, slot_rows.view(-1, self.embed_size))
        return loss
