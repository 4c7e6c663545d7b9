"""PyTorch's optimisers for the two tables, and the fast step's row-wise sparse updates.

Kept out of `model.py` (the chapter's code): which stock optimiser each `--optimizer` means,
and how the fast step applies `torch.optim.SparseAdam` and SGD to the rows a batch touches
without autograd's sparse gradients, keeping their state in the stock optimiser's own
`state`, so the chapter and fast steps share it and a run may switch between them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from backends.base import ADAM_BETAS, ADAM_EPS


def make_optimizer(name: str, tables: list[Tensor], lr: float, *,
                   fused: bool) -> torch.optim.Optimizer:
    """adam: the chapter's `Adam` (`fused`: one kernel over all parameters); sparse_adam:
    `SparseAdam`; sgd: plain `SGD`, which takes autograd's sparse gradients as they come."""
    if name == "sparse_adam":
        return torch.optim.SparseAdam(tables, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    if name == "sgd":
        return torch.optim.SGD(tables, lr=lr)
    return torch.optim.Adam(tables, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused)


@torch.no_grad()
def sparse_adam_rows(optimizer: torch.optim.Optimizer, table: Tensor, rows: Tensor,
                     values: Tensor, grad: Tensor, lr: float) -> None:
    """One `SparseAdam` step of `table` whose gradient is `grad` (n, E) at `rows` (n,) unique,
    whose current `values` (n, E) the step gathered, in the optimiser's own state: the same
    figures as `torch.optim._functional.sparse_adam`. Written back with `index_copy_`, not
    `index_add_`: the rows are unique, and `index_add_` on CPU is one thread that reads each
    row again (at V = 1M, cold rows: twice `index_copy_`'s time, benchmarks/README.md)."""
    beta1, beta2 = ADAM_BETAS
    state = optimizer.state[table]
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(table), exp_avg_sq=torch.zeros_like(table))
    state["step"] += 1
    step = state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    m = exp_avg.index_select(0, rows).lerp_(grad, 1 - beta1)
    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    table.index_copy_(0, rows, values.add_(m.div_(v.sqrt_().add_(ADAM_EPS)), alpha=-step_size))


@torch.no_grad()
def sgd_rows(table: Tensor, rows: Tensor, values: Tensor, grad: Tensor, lr: float) -> None:
    """word2vec's `w -= lr grad` on `rows` (n,) unique of `table`, whose current `values`
    (n, E) the step gathered, `grad` (n, E) (`index_copy_`: see `sparse_adam_rows`)."""
    table.index_copy_(0, rows, values.add_(grad, alpha=-lr))
