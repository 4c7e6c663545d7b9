"""The chapter's model in PyTorch: the embedding pair, `skip_gram` by batch matmul, the masked
loss, trained by autograd and `torch.optim.Adam` (the `chapter` step).

The tuned step that computes the same numbers without autograd is `backends/torch/fast.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def embed(table: Tensor, ids: Tensor) -> Tensor:
    """Rows of `table` at `ids`: (V, E), (...) ints -> (..., E), as `nn.Embedding` looks them up."""
    return F.embedding(ids, table)


def skip_gram(centers: Tensor, contexts_negatives: Tensor, center_table: Tensor,
              context_table: Tensor) -> Tensor:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), the chapter's `bmm(v, u^T)`.
    """
    v = embed(center_table, centers)              # (B, 1, E)
    u = embed(context_table, contexts_negatives)  # (B, L, E)
    return torch.bmm(v, u.transpose(1, 2))


def masked_bce(logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """The chapter's `SigmoidBCELoss`: (B, L) logits, labels, masks -> (B,) mean over L."""
    # `weight` must be floating; the chapter's example passes an integer mask.
    bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype),
                                             weight=masks.to(logits.dtype), reduction="none")
    return bce.mean(dim=1)


def per_example_objective(logits: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the clamp makes the all-padding rows that
    pad the last batch to a fixed shape count 0 instead of 0/0.
    """
    slots = masks.shape[1]
    real = masks.sum(dim=1).to(logits.dtype).clamp(min=1)
    return masked_bce(logits, labels, masks) * slots / real


class SkipGramModel(nn.Module):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1])."""

    def __init__(self, vocab_size: int, embed_size: int, *, sparse: bool = False) -> None:
        super().__init__()
        # Xavier-uniform, as the chapter's `init_weights` (nn.Embedding's default is N(0, 1)).
        # The backend then overwrites both tables from `init_params_numpy`, so that a seed
        # means the same tables in every backend; this keeps the module right on its own.
        # `sparse`: autograd returns sparse gradients (what `torch.optim.SparseAdam` needs), and
        # id 0, the padding, gets none, so that padding slots touch no row.
        padding_idx = 0 if sparse else None
        self.center = nn.Embedding(vocab_size, embed_size, sparse=sparse, padding_idx=padding_idx)
        self.context = nn.Embedding(vocab_size, embed_size, sparse=sparse,
                                    padding_idx=padding_idx)
        nn.init.xavier_uniform_(self.center.weight)
        nn.init.xavier_uniform_(self.context.weight)

    def forward(self, centers: Tensor, contexts_negatives: Tensor) -> Tensor:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        v, u = self.center(centers), self.context(contexts_negatives)  # (B, 1, E), (B, L, E)
        return torch.bmm(v, u.transpose(1, 2))

    def objective(self, centers: Tensor, contexts_negatives: Tensor, masks: Tensor,
                  labels: Tensor) -> Tensor:
        """The optimised quantity, the chapter's `l.sum()`: (B, 1), (B, L) ... -> a 0-d tensor."""
        logits = self(centers, contexts_negatives).reshape(labels.shape)
        return per_example_objective(logits, labels, masks).sum()
