"""The PyTorch backend: the chapter's own framework, and the model the other backends follow.

Steps (`step=`), the same optimiser and state, so a run may switch between them:
- "chapter": the chapter's loop over `model.SkipGramModel`: `loss.backward()` through autograd,
  then `torch.optim.Adam`, eager.
- "fast": the gradient written out (`backends/torch/fast.py`): on CPU over the batch's real
  (centre, context) pairs only, on a GPU over all slots with `index_add_`'s atomics.

Optimisers (`optimizer=`, `backends/torch/optim.py`):
- "adam" (default): the chapter's dense `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8). Every
  row's moments decay at every step, touched or not. Both steps use its fused kernel (one
  pass over all parameters instead of a loop of small kernels per tensor).
- "sparse_adam" and "sgd": only the rows a batch touches move. The chapter step is torch's
  idiomatic route: `nn.Embedding(sparse=True, padding_idx=0)`, autograd's sparse gradients,
  `torch.optim.SparseAdam` / `torch.optim.SGD`. The fast step renumbers the batch to the rows
  it looks up (`common.batching.localize`), computes the pair gradient on those rows alone
  and applies the same update to them (`optim.sparse_adam_rows`, `optim.sgd_rows`) in the
  stock optimiser's state: its cost follows the batch, not V. On CPU, sgd with a vocabulary
  no larger than the batch's slots (PTB's) takes the dense step's pair gradient of the whole
  tables and `w -= lr grad` over all rows instead: untouched rows get a zero gradient, so the
  numbers are the same, without renumbering the batch and gathering its rows.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from backends.base import PADDED, PAIRS, AdamState, Backend, Params, Work, empty_state
from backends.torch import fast, model, optim
from common.batching import Batch, localize

# sgd's fast step on CPU updates whole tables while V <= this many rows per slot of the batch:
# below it an O(V E) pass costs less than renumbering and gathering (benchmarks/README.md).
DENSE_SGD_ROWS_PER_SLOT = 1.0


def _host_copy(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy copy that training cannot change (on CPU `.numpy()` would share memory)."""
    return tensor.detach().to("cpu", copy=True).numpy()


class TorchBackend(Backend):
    """PyTorch eager on CPU or CUDA: `--device cpu`, `gpu`, `gpu:N`."""

    name: ClassVar[str] = "torch"
    framework: ClassVar[str] = "torch"
    fixed_shapes: ClassVar[bool] = False  # eager: each batch may have its own L
    data_parallel: ClassVar[str] = "processes"  # distributed.py: torch.distributed, DDP

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        kind, index = self.check_device(device)
        self.torch_device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
        self.sparse = optimizer != "adam"
        self._autograd = step == "chapter"
        self.model = model.SkipGramModel(vocab_size, embed_size,
                                         sparse=self.sparse).to(self.torch_device)
        # CPU: the real pairs only, planned on the host; GPU: all slots, index_add_'s atomics.
        self._on_cpu = self.torch_device.type == "cpu"
        self._pair_gradients = fast.PairGradients(vocab_size)
        self._gradients = fast.DenseGradients(vocab_size, embed_size, self.torch_device)
        self._optimizer = self._new_optimizer()
        self.init_params(seed)

    @property
    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.center.weight, self.model.context.weight

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimiser (no state) over both tables."""
        tables = list(self._tables)
        if not self._autograd and not self.sparse:
            for table in tables:
                # No zero_grad: on a GPU `DenseGradients` overwrites these buffers every step
                # (no (V, E) allocation per step); on CPU `PairGradients`' fresh ones replace
                # them.
                table.grad = torch.zeros_like(table)
        return optim.make_optimizer(self.optimizer, tables, self.lr, fused=True)

    # -- disclosure -------------------------------------------------------------------------
    def work(self) -> Work:
        stock = {"adam": "torch.optim.Adam", "sparse_adam": "torch.optim.SparseAdam",
                 "sgd": "torch.optim.SGD"}[self.optimizer]
        if self._autograd:
            return Work(PADDED, "none", 1, f"eager, autograd, {stock}")
        if self.sparse:
            return Work(PADDED, "none", 1, f"eager, autograd, {stock} on the touched rows")
        return Work(PAIRS if self._on_cpu else PADDED, "none", 1,
                    "eager, gradient written out, fused torch.optim.Adam")

    @classmethod
    def set_threads(cls, threads: int) -> str:
        """Pin the CPUs, then torch's intra-op pool and, if no parallel work ran yet, its
        inter-op pool (torch allows that setting once, before its first use)."""
        how = super().set_threads(threads)
        if threads:
            torch.set_num_threads(threads)
            how += f"; torch.set_num_threads({threads})"
            try:
                torch.set_num_interop_threads(threads)
                how += f", set_num_interop_threads({threads})"
            except RuntimeError:
                how += " (inter-op pool already started)"
        return how

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> torch.Tensor:
        # On CPU the tensor shares the array's memory: no copy.
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        return torch.stack(losses).cpu().numpy()

    def _batch_tensors(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Batch -> (B, 1), (B, L) int64 ids and (B, L) float32 masks, labels on the device."""
        device = self.torch_device
        # int64 ids: `index_add_` with int32 indices is much slower on CPU.
        ids = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device)
               for x in (batch.centers, batch.contexts_negatives)]
        floats = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
                  for x in (batch.masks, batch.labels)]
        return (*ids, *floats)

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return model.embed(table, ids)

    def skip_gram(self, centers: torch.Tensor, contexts_negatives: torch.Tensor,
                  center_table: torch.Tensor, context_table: torch.Tensor) -> torch.Tensor:
        return model.skip_gram(centers, contexts_negatives, center_table, context_table)

    def masked_bce(self, logits: torch.Tensor, labels: torch.Tensor,
                   masks: torch.Tensor) -> torch.Tensor:
        return model.masked_bce(logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------

    def get_params(self) -> Params:
        return Params(*(_host_copy(table) for table in self._tables))

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        with torch.no_grad():
            for table, values in zip(self._tables, params):
                table.copy_(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))
        self._optimizer = self._new_optimizer()
        self.adam_steps = 0

    # -- training ---------------------------------------------------------------------------
    def _dense_gradients(self, batch: Batch) -> torch.Tensor:
        """Fill both tables' `.grad` for `batch`; return the summed loss (0-d, on device)."""
        center, context = self._tables
        if self._on_cpu:
            plan = fast.pair_plan(batch, self.vocab_size)
            loss, center.grad, context.grad = self._pair_gradients(plan, center, context)
            return loss
        return self._gradients(*self._batch_tensors(batch), center, context, center.grad,
                               context.grad)

    def _autograd_loss(self, batch: Batch) -> torch.Tensor:
        """The chapter's forward, for autograd (the chapter step and the sparse-Adam path)."""
        return self.model.objective(*self._batch_tensors(batch))

    def _local_gradients(self, batch: Batch) -> tuple[torch.Tensor, Any, torch.Tensor,
                                                         list[torch.Tensor], list[torch.Tensor]]:
        """The pair gradient over the rows the batch looks up (the fast sparse step):
        (loss, LocalBatch, rows (n,), [centre, context] gradients (n, E), their values (n, E))."""
        local = localize(batch)
        rows = torch.from_numpy(local.rows).to(self.torch_device)
        center, context = (table.detach().index_select(0, rows) for table in self._tables)
        if self._on_cpu:
            plan = fast.pair_plan(local.batch, len(local.rows))
            loss, *grads = self._pair_gradients(plan, center, context)
        else:
            grads = [torch.empty_like(center), torch.empty_like(context)]
            loss = fast.DenseGradients(len(local.rows), self.embed_size, self.torch_device)(
                *self._batch_tensors(local.batch), center, context, *grads)
        return loss, local, rows, grads, [center, context]

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
        if self.sparse and not self._autograd:
            loss, local, rows, grads, _ = self._local_gradients(batch)
            dense = [torch.zeros_like(table) for table in self._tables]
            for table, grad in zip(dense, grads):
                table.index_copy_(0, rows, grad)
                table[0] = 0  # the padding row: no gradient reaches it
            return float(loss), Params(*(_host_copy(g) for g in dense))
        if self._autograd:
            loss = self._autograd_loss(batch)
            grads = torch.autograd.grad(loss, list(self._tables))
            loss = loss.detach()
            # Sparse gradients list repeated ids separately; to_dense sums them.
            return float(loss), Params(*(_host_copy(g.to_dense()) for g in grads))
        loss = self._dense_gradients(batch)
        return float(loss), Params(*(_host_copy(table.grad) for table in self._tables))

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> torch.Tensor:
        """The chapter's forward without autograd: no `.grad` or optimiser state is touched."""
        return self.model.objective(*self._batch_tensors(batch))

    def _set_step_lr(self) -> None:
        """The scheduled rate for the step about to be taken (a float: no retrace, no sync)."""
        lr = self.next_lr()
        for group in self._optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batch: Batch) -> torch.Tensor:
        if self.sparse and not self._autograd:
            if (self.optimizer == "sgd" and self._on_cpu
                    and self.vocab_size <= DENSE_SGD_ROWS_PER_SLOT * batch.masks.size):
                return self._dense_sgd_step(batch)
            return self._sparse_fast_step(batch)
        self._set_step_lr()
        if self._autograd:  # the chapter's loop body
            self._optimizer.zero_grad(set_to_none=True)
            loss = self._autograd_loss(batch)
            loss.backward()
            self._optimizer.step()
            return loss.detach()
        loss = self._dense_gradients(batch)
        self._optimizer.step()
        return loss  # no .item(): the driver syncs only when it reports

    @torch.no_grad()
    def _dense_sgd_step(self, batch: Batch) -> torch.Tensor:
        """sgd through the dense pair gradient: `w -= lr grad` on every row, exact zeros on the
        untouched ones (a small vocabulary's step, see `DENSE_SGD_ROWS_PER_SLOT`)."""
        lr = self.next_lr()
        loss = self._dense_gradients(batch)
        for table in self._tables:
            table.add_(table.grad, alpha=-lr)
            table.grad = None  # the next step's are fresh; the chapter step's are sparse
        return loss

    def _touched_gradients(self, batch: Batch) -> tuple[torch.Tensor, list[tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """(loss, [(rows, gradient, current values)] per table): the rows `batch` touches
        (data-parallel replicas sum them over the global batch here)."""
        loss, local, rows, grads, values = self._local_gradients(batch)
        touched = []
        for grad, now, mask in zip(grads, values, (local.center_touched, local.context_touched)):
            # Positions from the host (a boolean mask costs a device-side nonzero per use).
            where = torch.from_numpy(np.flatnonzero(mask)).to(self.torch_device)
            touched.append(tuple(x.index_select(0, where) for x in (rows, grad, now)))
        return loss, touched

    def _sparse_fast_step(self, batch: Batch) -> torch.Tensor:
        """sparse_adam or sgd on the touched rows alone, in the stock optimiser's state."""
        lr = self.next_lr()
        loss, touched = self._touched_gradients(batch)
        for table, (table_rows, grad, now) in zip(self._tables, touched):
            if self.optimizer == "sgd":
                optim.sgd_rows(table, table_rows, now, grad, lr)
            else:
                optim.sparse_adam_rows(self._optimizer, table, table_rows, now, grad, lr)
        return loss

    def optimizer_state(self) -> AdamState:
        center, context = self._tables
        state = self._optimizer.state
        if self.optimizer == "sgd":  # no moments: the step count is the host's
            return empty_state("sgd", self.vocab_size, self.embed_size)._replace(
                step=self.adam_steps)
        if center not in state:  # no step taken since the optimiser was made
            return empty_state(self.optimizer, self.vocab_size, self.embed_size)
        # Adam keeps `step` as a tensor, SparseAdam as an int.
        return AdamState(int(state[center]["step"]),
                         Params(*(_host_copy(state[t]["exp_avg"]) for t in (center, context))),
                         Params(*(_host_copy(state[t]["exp_avg_sq"]) for t in (center, context))))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)
        if self.optimizer == "sgd":
            self._optimizer = self._new_optimizer()
            self.adam_steps = int(state.step)
            return

        def step() -> Any:
            # SparseAdam counts in a Python int; Adam in a float tensor, one per table: it adds
            # 1 to each in place, so a shared one would count twice.
            return int(state.step) if self.sparse else torch.tensor(float(state.step))

        # torch.tensor copies: the optimiser updates its moments in place.
        per_table = [{"step": step(),
                      "exp_avg": torch.tensor(np.asarray(exp_avg, np.float32)),
                      "exp_avg_sq": torch.tensor(np.asarray(exp_avg_sq, np.float32))}
                     for exp_avg, exp_avg_sq in zip(state.exp_avg, state.exp_avg_sq)]
        optimizer = self._new_optimizer()
        state_dict = optimizer.state_dict()
        state_dict["state"] = dict(enumerate(per_table))  # params numbered as in param_groups
        optimizer.load_state_dict(state_dict)
        self._optimizer = optimizer
        self.adam_steps = int(state.step)

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"] + [f"gpu:{index}" for index in range(torch.cuda.device_count())]

    @classmethod
    def gpu_unavailable(cls) -> str:
        if torch.version.cuda is None:
            return (f"torch {torch.__version__} is a CPU-only build; install a CUDA build: "
                    f"make env-gpu, or TORCH_INDEX=https://download.pytorch.org/whl/cu126 "
                    f"(README: GPUs)")
        return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no "
                f"GPU (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)")

