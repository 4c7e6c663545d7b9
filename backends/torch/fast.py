"""PyTorch's tuned step (`--step fast`): the chapter's gradient written out, no autograd.

The same mathematics as `backends/torch/model.py` + autograd (tested equal), computed so that
no (B, L, E) temporary is written:
- on CPU, `PairGradients` over the batch's real (centre, context) pairs only, listed on the
  host by `pair_plan` (padding slots, most of PTB's, produce no work): `sampled_addmm` for
  the logits, two weighted `embedding_bag`s for the gradients;
- on a GPU, `DenseGradients` over all (B, L) slots, with `index_add_`'s atomics (no host work);
- the gradients are exact and dense, so the optimiser is still the chapter's dense Adam, in
  torch's fused kernel (`torch.optim.Adam(fused=True)`, one pass over all parameters).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.batching import Batch, real_pairs


class PairPlan(NamedTuple):
    """A batch as its real (centre, context) pairs, sorted by centre id: host tensors.

    Pair p is a real slot (mask > 0) of the batch. Sorted by centre id (stable), the pairs are
    the nonzeros of a (V, V) CSR matrix M over (centre, context) ids, whose rows are also the
    bags that sum the centre gradient; `by_context` re-sorts them by context id for the bags
    that sum the context gradient. Padding slots and all-padding rows produce no pair.
    """

    center_starts: Tensor    # (V + 1,) int64: centre i's pairs start at center_starts[i]
    context_ids: Tensor      # (P,) int64, in pair order (M's column indices)
    labels: Tensor           # (P,) float32, y_p
    weights: Tensor          # (P,) float32, w_p = m_bl / max(sum_l m_bl, 1), its example's
    zeros: Tensor            # (P,) float32, M's values for `sampled_addmm` (which ignores them)
    by_context: Tensor       # (P,) int64: pair order -> sorted by context id (stable)
    context_centers: Tensor  # (P,) int64: the centre ids of the pairs in `by_context` order
    context_starts: Tensor   # (V,) int64: bag offsets of the context ids in `by_context` order


def pair_plan(batch: Batch, vocab_size: int) -> PairPlan:
    """`common.batching.real_pairs`, plus the re-sort by context id: Batch -> PairPlan.

    In NumPy: a stable argsort of 16-bit keys is a radix sort, faster than torch.sort.
    """
    pairs = real_pairs(batch, vocab_size)
    context_ids = pairs.context_ids
    keys = context_ids.astype(np.uint16) if vocab_size <= 1 << 16 else context_ids
    by_context = np.argsort(keys, kind="stable")
    context_starts = np.zeros(vocab_size, dtype=np.int64)
    np.cumsum(np.bincount(context_ids, minlength=vocab_size)[:-1], out=context_starts[1:])
    return PairPlan(*map(torch.from_numpy, (
        pairs.row_starts, context_ids, pairs.labels, pairs.weights,
        np.zeros(len(context_ids), np.float32), by_context, pairs.center_ids[by_context],
        context_starts)))


class PairGradients:
    """The objective and its dense gradients over a batch's real pairs (`pair_plan`), on CPU.

    With x_p = center[c_p] . context[o_p] for pair p = (centre c_p, context o_p), label y_p
    and weight w_p (as in `DenseGradients`, padding slots simply absent):
        loss = sum_p w_p bce(x_p, y_p)             g_p = d loss / d x_p = w_p (sigmoid(x_p) - y_p)
        d loss / d center  = M @ context           d loss / d context = M^T @ center
    with M = sum_p g_p e_{c_p} e_{o_p}^T, (V, V). No (pairs, E) rows are ever written:
    - the logits are `sampled_addmm`, M's pattern times center @ context^T: one dot product
      per pair, reading the table rows in place instead of gathering them;
    - both products are `embedding_bag`s with one bag per vocabulary row (pairs by centre for
      M @ context, by context for M^T @ center), weighted by g: each writes a whole fresh (V, E)
      gradient, empty bags as 0, so nothing is zero-filled first (the backend hands them to
      Adam as `.grad`); a CSR `mm(csr, dense, out=)` would zero-fill and copy its `out`.
    The gradients are exact and dense (untouched rows get 0): Adam stays the chapter's.
    (benchmarks/README.md has the timings behind these choices.)
    """

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        _quiet_csr()

    @torch.no_grad()
    def __call__(self, plan: PairPlan, center_table: Tensor,
                 context_table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(V, E) tables -> 0-d summed loss, fresh (V, E) centre and context gradients."""
        vocab = plan.center_starts.numel() - 1  # V, or a local batch's rows (`localize`)
        # Detached: `embedding_bag` takes its forward-only kernel (several times faster) only
        # when no input requires grad, whatever the grad mode says.
        center_table, context_table = center_table.detach(), context_table.detach()
        if plan.context_ids.numel() <= vocab * vocab:
            pattern = torch.sparse_csr_tensor(plan.center_starts, plan.context_ids, plan.zeros,
                                              (vocab, vocab), check_invariants=False)
            # beta=0: M's values are not read. context_table.T is a view whose columns are the
            # table's rows, as the dot products want them (a contiguous copy is much slower).
            logits = torch.sparse.sampled_addmm(pattern, center_table, context_table.T,
                                                beta=0.0).values()         # x, (P,)
        else:  # sampled_addmm refuses more nonzeros than V * V (tiny vocabularies)
            counts = plan.center_starts.diff()
            center_ids = torch.repeat_interleave(torch.arange(vocab), counts)
            logits = (center_table[center_ids] * context_table[plan.context_ids]).sum(dim=1)
        loss = F.binary_cross_entropy_with_logits(logits, plan.labels, weight=plan.weights,
                                                  reduction="sum")
        slot_grads = torch.sigmoid(logits).sub_(plan.labels).mul_(plan.weights)  # g, (P,)
        center_grad = F.embedding_bag(plan.context_ids, context_table, plan.center_starts[:-1],
                                      mode="sum", per_sample_weights=slot_grads)
        context_grad = F.embedding_bag(plan.context_centers, center_table, plan.context_starts,
                                       mode="sum",
                                       per_sample_weights=slot_grads.index_select(
                                           0, plan.by_context))
        return loss, center_grad, context_grad


def _quiet_csr() -> None:
    """Make torch say its once-per-process "sparse CSR is beta" warning here, silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.int64),
                                torch.zeros(0, dtype=torch.int64), torch.zeros(0), (1, 1))


class DenseGradients:
    """The objective and its dense gradients over the batch's (B, L) slots: the GPU step.

    With x_bl = v_b . u_bl (v = centre rows, u = context rows) and w_b = 1 / max(sum_l m_bl, 1):
        g_bl = d loss / d x_bl = w_b m_bl (sigmoid(x_bl) - y_bl)                (B, L)
        d loss / d center[i]  = sum over b with centers_b = i of sum_l g_bl u_bl
        d loss / d context[j] = sum over (b, l) with ids_bl = j of g_bl v_b
    Both are exact and dense (untouched rows get 0), so the optimiser is still the chapter's
    dense Adam. Everything stays on the device (`index_add_` sums repeated ids with atomics),
    padding slots included; on CPU `PairGradients` does the same over the real pairs only.
    Large intermediates live in a reused workspace: a fresh (B, L, E) tensor per step is a
    fresh mmap, whose page faults are paid again every step.
    """

    def __init__(self, vocab_size: int, embed_size: int, device: torch.device) -> None:
        self.vocab_size, self.embed_size, self.device = vocab_size, embed_size, device
        self._workspace = torch.empty(0, device=device)

    def _buffer(self, *shape: int) -> Tensor:
        """A view of the workspace of `shape`, grown (never shrunk) on demand."""
        size = int(np.prod(shape))
        if self._workspace.numel() < size:
            self._workspace = torch.empty(size, device=self.device)
        return self._workspace[:size].view(*shape)

    @torch.no_grad()
    def __call__(self, centers: Tensor, contexts_negatives: Tensor, masks: Tensor,
                 labels: Tensor, center_table: Tensor, context_table: Tensor,
                 center_grad: Tensor, context_grad: Tensor) -> Tensor:
        """Overwrite `center_grad`, `context_grad` (V, E) and return the summed loss (0-d).

        (B, 1), (B, L) int64 ids, (B, L) float masks and labels, (V, E) tables.
        """
        batch_size, slots = contexts_negatives.shape
        # `embedding_bag`'s forward-only kernel needs inputs that do not require grad.
        center_table, context_table = center_table.detach(), context_table.detach()
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

        # sum_l g_bl u_bl is an embedding bag weighted by g: cheaper than bmm(g, u).
        center_rows = F.embedding_bag(contexts_negatives, context_table,
                                      per_sample_weights=slot_grads, mode="sum")  # (B, E)
        center_grad.zero_().index_add_(0, center_ids, center_rows)
        # Reuses u's memory: u is dead once the logits exist (the bag read the table).
        slot_rows = torch.mul(slot_grads.unsqueeze(2), v.unsqueeze(1),
                              out=self._buffer(batch_size, slots, self.embed_size))
        context_grad.zero_().index_add_(0, slot_ids, slot_rows.view(-1, self.embed_size))
        return loss
