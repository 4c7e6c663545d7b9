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
Every replica then takes the same optimiser step. Collectives time out after
W2V_COLLECTIVE_TIMEOUT_S (45 s, gloo's default is 30 minutes), and a failed one raises
`ReplicaLost` instead of a traceback.
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
from common import parallel
from common.batching import Batch
from common.errors import ConfigError


class _Objective(nn.Module):
    """The chapter's summed objective as a module's `forward`, which DDP wraps (DDP hooks
    its gradient all-reduce into the backward of what its forward returns)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, centers: Tensor, contexts_negatives: Tensor, masks: Tensor,
                labels: Tensor) -> Tensor:
        return self.net.objective(centers, contexts_negatives, masks, labels)


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


class DataParallelBackend(TorchBackend):
    """`TorchBackend` as one of `replicas` processes, each on its share of every batch."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        self.rank, device = join_process_group(replicas, device)
        self.replicas = dist.get_world_size()
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self._ddp: DistributedDataParallel | None = None
        if self._autograd:
            ids = [self.torch_device] if self.torch_device.type == "cuda" else None
            with _collective(self.rank):
                self._ddp = DistributedDataParallel(_Objective(self.model), device_ids=ids)

    def _shard(self, batch: Batch) -> Batch:
        return parallel.shard(batch, self.replicas, self.rank)

    def _all_reduce(self, tensors: list[Tensor]) -> None:
        """Sum `tensors` over the replicas, in place (all started before any is awaited)."""
        with _collective(self.rank):
            for work in [dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=True)
                         for t in tensors]:
                work.wait()

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """The global batches' losses: each replica's shares, summed (one collective)."""
        stacked = torch.stack(losses)
        self._all_reduce([stacked])
        return stacked.cpu().numpy()

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        loss, grads = super().loss_and_grads(self._shard(batch))
        tensors = [torch.tensor([loss], dtype=torch.float64),
                   *(torch.from_numpy(np.ascontiguousarray(g)) for g in grads)]
        self._all_reduce(tensors)
        return float(tensors[0]), Params(*(t.numpy() for t in tensors[1:]))

    def train_step(self, batch: Batch) -> Tensor:
        shard = self._shard(batch)
        if self.sparse and not self._autograd:
            return self._sparse_fast_step(shard)
        self._set_step_lr()
        if self._ddp is not None:  # the chapter's loop body, through DDP
            self._optimizer.zero_grad(set_to_none=True)
            with _collective(self.rank):
                loss = self._ddp(*self._batch_tensors(shard))
                (loss * self.replicas).backward()  # DDP's mean of N * grad_r is sum_r grad_r
            self._optimizer.step()
            return loss.detach()
        loss = self._dense_gradients(shard)
        self._all_reduce(list(table.grad for table in self._tables))
        self._optimizer.step()
        return loss

    def _touched_gradients(self, batch: Batch) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """This shard's touched rows' gradients as sparse COO tensors, summed by gloo's sparse
        all-reduce (it concatenates them; `coalesce` adds the rows several replicas touched):
        the rows of the global batch and their gradients, what one replica would have."""
        loss, touched = super()._touched_gradients(batch)
        summed = [torch.sparse_coo_tensor(rows[None], grad, table.shape, check_invariants=False)
                  for table, (rows, grad) in zip(self._tables, touched)]
        self._all_reduce(summed)  # in place
        totals = [total.coalesce() for total in summed]
        return loss, [(total.indices()[0], total.values()) for total in totals]

    def agree_to_stop(self, signum: int) -> int:
        flag = torch.tensor([signum], dtype=torch.int64)
        with _collective(self.rank):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)
