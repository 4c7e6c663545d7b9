"""The PyTorch backend: the chapter's own framework, and the model the other backends follow.

Steps (`step=`), the same optimiser and state, so a run may switch between them:
- "chapter": the chapter's loop over `model.SkipGramModel`: `loss.backward()` through autograd,
  then `torch.optim.Adam`, eager.
- "fast": the gradient written out (`backends/torch/fast.py`): on CPU over the batch's real
  (centre, context) pairs only, on a GPU over all slots with `index_add_`'s atomics.

Optimisers (`optimizer=`):
- "adam" (default): the chapter's dense `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8). Every
  row's moments decay at every step, touched or not. Both steps use its fused kernel (one
  pass over all parameters instead of a loop of small kernels per tensor).
- "sparse_adam": `nn.Embedding(sparse=True)` + `torch.optim.SparseAdam`, through autograd.
  A *different* optimiser: only the rows a batch touches are updated, and their moments do
  not decay on the steps that skip them, so its losses do not match the chapter's. Its cost
  grows with the rows touched rather than with V, but on PTB-sized tables on CPU it is
  slower than the dense step (autograd's sparse gradients are coalesced every step). Its
  state (step, exp_avg, exp_avg_sq) means the same, so it checkpoints through `AdamState`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Backend, Params
from backends.torch import fast, model
from common.batching import Batch
from common.errors import ConfigError

OPTIMIZERS = ("adam", "sparse_adam")


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
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"the torch backend offers --optimizer {' or '.join(OPTIMIZERS)}, "
                              f"got {optimizer!r}")
        self.sparse = optimizer == "sparse_adam"
        # Autograd trains the chapter step, and the sparse optimiser (which needs autograd's
        # sparse gradients) in either step.
        self._autograd = step == "chapter" or self.sparse
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
        if self.sparse:
            return torch.optim.SparseAdam(tables, lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        if not self._autograd:
            for table in tables:
                # No zero_grad: on a GPU `DenseGradients` overwrites these buffers every step
                # (no (V, E) allocation per step); on CPU `PairGradients`' fresh ones replace
                # them.
                table.grad = torch.zeros_like(table)
        return torch.optim.Adam(tables, lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)

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

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
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

    def optimizer_state(self) -> AdamState:
        center, context = self._tables
        state = self._optimizer.state
        if center not in state:  # no step taken since the optimiser was made
            zeros = Params(*(np.zeros((self.vocab_size, self.embed_size), np.float32)
                             for _ in range(2)))
            return AdamState(0, zeros, zeros)
        # Adam keeps `step` as a tensor, SparseAdam as an int.
        return AdamState(int(state[center]["step"]),
                         Params(*(_host_copy(state[t]["exp_avg"]) for t in (center, context))),
                         Params(*(_host_copy(state[t]["exp_avg_sq"]) for t in (center, context))))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)

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

