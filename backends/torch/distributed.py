"""PyTorch data parallelism: `torch.distributed`, one process per replica, as torchrun runs it.

Each process joins the group from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; `w2v train --data-parallel N` sets them for N local processes),
over gloo on CPU and NCCL on CUDA, and trains on its share of every global batch:
- chapter step: the model in `DistributedDataParallel`, `loss.backward()`, `Adam`. DDP
  *averages* the replicas' gradients while the objective is their *sum*, so each replica
  back-propagates `world_size * loss` (exact for powers of two, and float32 rounding else);
- sparse_adam and sgd, chapter step: the same DDP, whose gloo all-reduce takes the
  embeddings' sparse gradients (`nn.Embedding(sparse=True)`) and concatenates them, so
  `SparseAdam` / `SGD` see the touched rows of the global batch;
- fast step: its dense gradients, written out, then one explicit `all_reduce(SUM)` per table;
  with sparse_adam / sgd, the touched rows' gradients as sparse COO tensors, all-reduced
  (gloo sums them, the communication follows the rows, not V), then the row-wise update.
Every replica then takes the same optimiser step. The other combinations
(`DataParallelVariant`) run the chapter step's way: DDP around their objective, then their
stock optimiser. Collectives time out after W2V_COLLECTIVE_TIMEOUT_S (45 s, gloo's default is
30 minutes), and a failed one raises `ReplicaLost` instead of a traceback.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from backends.base import Params, normalize_device
from backends.torch.backend import TorchBackend
from backends.torch.variants import VariantBackend
from common import parallel
from common.batching import Batch
from common.errors import ConfigError
from common.variants import VariantBatch


class _Objective(nn.Module):
    """A model's summed objective as a module's `forward`, which DDP wraps (DDP hooks its
    gradient all-reduce into the backward of what its forward returns)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *batch: Tensor) -> Tensor:
        return self.net.objective(*batch)


@contextlib.contextmanager
def _collective(rank: int) -> Iterator[None]:
    """A failed collective (a peer died, or timed out) as one line, not a traceback."""
    try:
        yield
    except RuntimeError as error:  # DistBackendError, gloo's "Connection closed by peer"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise parallel.ReplicaLost(f"replica {rank} lost contact with the others: {first}"
                                   ) from None


def join_process_group(replicas: int, device: str) -> tuple[int, str]:
    """Join torchrun's group (gloo on CPU, NCCL on CUDA): (rank, this replica's device)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != replicas:  # `parallel.replica_rank` checked it; a direct caller may not have
        raise ConfigError(f"WORLD_SIZE is {world} but --data-parallel is {replicas}")
    kind, _ = normalize_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        try:
            dist.init_process_group(
                "nccl" if kind == "gpu" else "gloo", init_method="env://", rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=parallel.collective_timeout()))
        except (RuntimeError, ValueError) as error:
            text = str(error)
            if "address already in use" in text.lower() or "EADDRINUSE" in text:
                raise ConfigError(f"port {port} on {address} (MASTER_PORT) is in use: choose "
                                  f"a free one") from None
            first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
            raise parallel.ReplicaLost(f"replica {rank} could not join the other replicas "
                                       f"at {address}:{port}: {first}") from None
        atexit.register(_leave)
    return rank, ("cpu" if kind == "cpu" else f"gpu:{local_rank}")


def _leave() -> None:
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


class Replicas:
    """The engine, whatever the model: this process's share of every global batch, DDP's
    summed gradients, and the collectives the epoch driver needs. Put it first in the bases,
    before the single-replica backend it distributes."""

    rank: int
    replicas: int
    _ddp: DistributedDataParallel | None = None

    def _join(self, replicas: int, device: str) -> str:
        """Join the group; this replica's device."""
        self.rank, device = join_process_group(replicas, device)
        self.replicas = dist.get_world_size()
        return device

    def _wrap(self, net: nn.Module, *, unused_tables: bool = False) -> None:
        """DDP around `net`'s objective; `unused_tables`: some table takes no part in the
        objective (hierarchical softmax leaves one of the pair out), which DDP must be told."""
        device = self.torch_device  # type: ignore[attr-defined]
        ids = [device] if device.type == "cuda" else None
        with _collective(self.rank):
            self._ddp = DistributedDataParallel(_Objective(net), device_ids=ids,
                                                find_unused_parameters=unused_tables)

    def _ddp_step(self, optimizer: torch.optim.Optimizer, tensors: list[Tensor]) -> Tensor:
        """The chapter's loop body through DDP: this replica's share forward and backward,
        the gradients summed, then the same optimiser step on every replica."""
        optimizer.zero_grad(set_to_none=True)
        with _collective(self.rank):
            loss = self._ddp(*tensors)  # type: ignore[misc]
            (loss * self.replicas).backward()  # DDP's mean of N * grad_r is sum_r grad_r
        optimizer.step()
        return loss.detach()

    def _all_reduce(self, tensors: list[Tensor]) -> None:
        """Sum `tensors` over the replicas, in place (all started before any is awaited)."""
        with _collective(self.rank):
            for work in [dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)
                         for t in tensors]:
                work.wait()

    def _summed(self, loss: float, grads: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        """This replica's loss and gradients -> the global batch's (one collective)."""
        tensors = [torch.tensor([loss], dtype=torch.float64),
                   *(torch.from_numpy(np.ascontiguousarray(g)) for g in grads)]
        self._all_reduce(tensors)
        return float(tensors[0]), [t.numpy() for t in tensors[1:]]

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """The global batches' losses: each replica's shares, summed (one collective)."""
        stacked = torch.stack(losses)
        self._all_reduce([stacked])
        return stacked.cpu().numpy()

    def agree_to_stop(self, signum: int) -> int:
        flag = torch.tensor([signum], dtype=torch.int64)
        with _collective(self.rank):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)


class DataParallelBackend(Replicas, TorchBackend):
    """`TorchBackend` as one of `replicas` processes, each on its share of every batch."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        device = self._join(replicas, device)
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        if self._autograd:
            self._wrap(self.model)

    def _shard(self, batch: Batch) -> Batch:
        return parallel.shard(batch, self.replicas, self.rank)

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        loss, grads = self._summed(*super().loss_and_grads(self._shard(batch)))
        return loss, Params(*grads)

    def train_step(self, batch: Batch) -> Tensor:
        shard = self._shard(batch)
        if self.sparse and not self._autograd:
            return self._sparse_fast_step(shard)
        self._set_step_lr()
        if self._ddp is not None:  # the chapter's loop body, through DDP
            return self._ddp_step(self._optimizer, list(self._batch_tensors(shard)))
        loss = self._dense_gradients(shard)
        self._all_reduce(list(table.grad for table in self._tables))
        self._optimizer.step()
        return loss

    def _touched_gradients(self, batch: Batch) -> tuple[Tensor, list[tuple[Tensor, Tensor,
                                                                             Tensor]]]:
        """This shard's touched rows' gradients as sparse COO tensors, summed by gloo's sparse
        all-reduce (it concatenates them; `coalesce` adds the rows several replicas touched):
        the rows of the global batch, their gradients and current values, what one replica
        would have."""
        loss, touched = super()._touched_gradients(batch)
        summed = [torch.sparse_coo_tensor(rows[None], grad, table.shape, check_invariants=False)
                  for table, (rows, grad, _) in zip(self._tables, touched)]
        self._all_reduce(summed)  # in place
        totals = [total.coalesce() for total in summed]
        return loss, [(total.indices()[0], total.values(),
                       table.detach().index_select(0, total.indices()[0]))
                      for table, total in zip(self._tables, totals)]


class DataParallelVariant(Replicas, VariantBackend):
    """The other combinations (`variants.VariantBackend`) on the same engine: DDP around
    their objective, their stock optimiser on every replica."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, device: str = "cpu",
                 **options: Any) -> None:
        device = self._join(replicas, device)
        super().__init__(vocab_size, embed_size, device=device, **options)
        self._wrap(self.net, unused_tables=self.loss_name == "hsoftmax")

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = super().variant_loss_and_grads(
            parallel.shard(batch, self.replicas, self.rank))
        loss, summed = self._summed(loss, list(grads.values()))
        return loss, dict(zip(grads, summed))

    def variant_step(self, batch: VariantBatch, lr: float) -> Tensor:
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr
        return self._ddp_step(self.torch_optimizer,
                              self._tensors(parallel.shard(batch, self.replicas, self.rank)))
