"""The MXNet (Gluon) backend: the chapter's MXNet tab, optimising exactly the others' objective.

Three differences from that tab, each so that it trains what the PyTorch tab (and every other
backend here) trains:
- Xavier-uniform tables, set from `init_params_numpy` (the tab kept Gluon's default init).
- The summed objective, not the mean: the tab's `trainer.step(batch_size)` multiplies
  gradients by 1/B, while the PyTorch tab optimises the sum (`l.sum().backward()`). Adam is
  nearly scale-invariant, but not exactly (eps), and the losses would not match.
- `TorchAdam` below instead of Gluon's 'adam': the bias corrections and eps placed as
  torch.optim.Adam places them, on a vectorized extension operator (`kernels.py`,
  `adam_kernel.cc`) or, without a C++ compiler, MXNet's fused `adam_update`.

The step (`train_step`) is written out rather than taken from autograd, as torch's is:
`model.pair_plan` lists the batch's real pairs on the host, the hybridized
`model.PairObjective` (one cached graph, static memory) gives the loss and d loss / d logits,
one native operator (`gradient_kernel.cc`; without it `model.dense_gradients`, two sparse
matrix products) sums the table gradients, and one Adam operator per table updates it in
place. `loss_and_grads` returns that same gradient, and
`tests/test_mxnet_backend.py` checks it against autograd on the chapter's `SkipGramObjective`.
Where the time goes, and what was tried: README, "How each backend is made fast".
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Any, ClassVar

import mxnet as mx
import numpy as np

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Backend, Params
from backends.mxnet import kernels, model
from common.batching import Batch, real_pairs
from common.errors import ConfigError

TABLES = ("center", "context")  # optimiser index 0 and 1, as in Params
_UNRESOLVED = object()  # an operator not looked up yet (None means MXNet's own)


def available_devices() -> list[str]:
    """The `--device` values MXNet can use here: cpu, then gpu:i (none on the CPU-only wheel)."""
    try:
        gpus = mx.context.num_gpus()
    except mx.base.MXNetError:  # a CUDA build on a machine without a usable driver
        gpus = 0
    return ["cpu"] + [f"gpu:{index}" for index in range(gpus)]


def mxnet_context(device: str) -> mx.Context:
    """`--device` -> MXNet context: cpu -> mx.cpu(), gpu or gpu:N -> mx.gpu(N).

    A device this machine lacks raises a one-line DeviceError listing what it has.
    """
    kind, index = MXNetBackend.check_device(device)
    return mx.cpu() if kind == "cpu" else mx.gpu(index)


class TorchAdam(mx.optimizer.Optimizer):
    """torch.optim.Adam (dense) on MXNet's `adam_update` kernel or its vectorized twin.

    MXNet's own Adam folds the bias corrections into the learning rate,
        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t),   w -= lr_t * m / (sqrt(v) + eps),
    which puts eps outside the second bias correction; torch computes
        w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    Multiplying torch's numerator and denominator by sqrt(1 - beta2^t) shows that MXNet's
    update with eps_t = eps * sqrt(1 - beta2^t) is torch's, so that is what `update` passes.
    `lazy_update=False` and dense states: every row's moments decay at every step (MXNet's
    lazy update would skip rows absent from a row-sparse gradient).

    The moments are created here and kept by index (0 centre, 1 context), and the step
    counted here, so that the backend can read and restore them. The backend calls `update`
    itself: Gluon's Trainer would add an Updater, gradient bookkeeping and a Python loop for
    what is two kernel calls.

    On CPU the update runs `kernels.adam_update(kernel)`'s operator, `adam_kernel.cc`: the same
    arithmetic as `adam_update`, vectorized (9x faster on a PTB table in cache). It reads its
    scalars exactly where MXNet's parser can be an ulp off, so weights whose sqrt(v) is
    eps-sized can differ in the last bit. `kernel` is auto, native or builtin (`kernels.ENV`;
    None: from the environment).
    """

    def __init__(self, learning_rate: float, kernel: str | None = None) -> None:
        super().__init__(learning_rate=learning_rate)
        self.kernel = kernel
        self._native: Any = _UNRESOLVED  # the native Adam operator or None, on first use
        self.beta1, self.beta2 = ADAM_BETAS
        self.epsilon = ADAM_EPS
        self.steps: dict[int, int] = {}
        self.moments: dict[int, tuple[mx.nd.NDArray, mx.nd.NDArray]] = {}

    def create_state(self, index: int, weight: mx.nd.NDArray) -> tuple[mx.nd.NDArray, ...]:
        """(exp_avg, exp_avg_sq) for parameter `index`: zeros, or what was loaded before."""
        if index not in self.moments:
            self.moments[index] = tuple(
                mx.nd.zeros(weight.shape, weight.ctx, dtype=weight.dtype) for _ in range(2))
        return self.moments[index]

    def native_adam(self, context: mx.Context) -> Any:
        """The native Adam operator for arrays on `context`, or None for MXNet's `adam_update`.

        Resolved once per optimiser, on first use (building the library if need be), not at
        every step: `kernel` (or the environment) decides, as `kernels.adam_update` says.
        """
        if self._native is _UNRESOLVED:
            self._native = (kernels.adam_update(self.kernel) if context.device_type == "cpu"
                            else None)
        return self._native

    def update(self, index: int, weight: mx.nd.NDArray, grad: mx.nd.NDArray,
               state: tuple[mx.nd.NDArray, mx.nd.NDArray]) -> None:
        """One Adam step of `weight` in place, once per parameter and step."""
        step = self.steps.get(index, 0) + 1
        self.steps[index] = step
        bias_correction1 = 1 - self.beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - self.beta2 ** step)
        exp_avg, exp_avg_sq = state
        lr = self._get_lr(index) * bias_correction2_sqrt / bias_correction1
        epsilon = self.epsilon * bias_correction2_sqrt
        native = self.native_adam(weight.context) if self.rescale_grad == 1.0 else None
        if native is not None:
            native(weight, grad, exp_avg, exp_avg_sq, out=weight, lr=lr, epsilon=epsilon,
                   beta1=self.beta1, beta2=self.beta2)
        else:
            mx.nd.adam_update(weight, grad, exp_avg, exp_avg_sq, out=weight, lr=lr,
                              epsilon=epsilon, beta1=self.beta1, beta2=self.beta2, wd=0.0,
                              rescale_grad=self.rescale_grad, lazy_update=False)


class MXNetBackend(Backend):
    """MXNet 1.9 Gluon on CPU or CUDA: `--device cpu`, `gpu`, `gpu:N`."""

    name: ClassVar[str] = "mxnet"
    framework: ClassVar[str] = "mxnet"
    # The compiled step sees pairs, not (B, L) slots: a batch's own L costs nothing extra.
    fixed_shapes: ClassVar[bool] = False

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self.context = mxnet_context(device)
        if optimizer != "adam":
            raise ConfigError(f"the mxnet backend offers only --optimizer adam, got {optimizer!r}")
        kernels.kernel_mode()  # a bad W2V_MXNET_KERNEL fails here, not at the first step
        self.net = model.SkipGram(vocab_size, embed_size)
        self.net.initialize(ctx=self.context)  # Xavier, then overwritten by init_params
        self.objective = model.SkipGramObjective(self.net)  # the chapter's, for autograd
        self.pairs = model.PairObjective(vocab_size, embed_size)
        # One cached graph for the forward and d loss / d logits; static_alloc keeps its
        # memory from step to step, static_shape its plan (hence the fixed pair capacity).
        self.pairs.hybridize(static_alloc=True, static_shape=True)
        self._capacity = 0
        self._grads = tuple(mx.np.zeros((vocab_size, embed_size), ctx=self.context)
                            for _ in TABLES)
        self._new_optimizer()
        self.init_params(seed)

    @property
    def _tables(self) -> tuple[mx.np.ndarray, mx.np.ndarray]:
        return self.net.center.weight.data(), self.net.context.weight.data()

    @functools.cached_property
    def _native_gradients(self) -> Any:
        """The native gradient operator, or None for `model.dense_gradients` (sparse dot).

        Resolved on the first step, once, as `kernels.dense_gradients` says (CPU only).
        """
        return kernels.dense_gradients() if self.context.device_type == "cpu" else None

    def _new_optimizer(self) -> None:
        """A fresh optimiser (no state, step 0) over both tables, in `TABLES` order."""
        self._optimizer = TorchAdam(self.lr)
        self.adam_steps = 0

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> mx.np.ndarray:
        return mx.np.array(x, dtype=np.asarray(x).dtype, ctx=self.context)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.asnumpy()

    def losses_to_numpy(self, losses: list[Any]) -> np.ndarray:
        """One stack and one copy to the host for all pending 0-d losses (one sync)."""
        if not losses:
            return np.zeros(0, dtype=np.float64)
        return mx.np.stack(losses).asnumpy().astype(np.float64)

    def _writable(self, size: int, dtype: type) -> tuple[np.ndarray, mx.np.ndarray]:
        """A fresh (size,) device array and, on CPU, a NumPy view of its memory to fill.

        Filling device memory from the host this way skips `mx.np.array`, whose copy ends in
        `WaitToWrite`: that queues a no-op behind the engine's pending work and blocks until it
        has run, so each step's inputs waited for the previous step's Adam (3 ms per call on
        PTB) and the host never ran ahead. A fresh array has no pending work, and the view is
        filled before any operator is given the array. (`mx.nd.from_numpy` would avoid the
        copy too, at 0.2 ms of ctypes per call and a Python callback on the engine's threads.)
        """
        array = mx.nd.empty((size,), ctx=self.context, dtype=dtype)
        if self.context.device_type != "cpu":
            return np.empty(size, dtype), array.as_np_ndarray()
        pointer = ctypes.c_void_p()
        mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
        memory = (ctypes.c_char * (size * np.dtype(dtype).itemsize)).from_address(pointer.value)
        return np.frombuffer(memory, dtype), array.as_np_ndarray()

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: mx.np.ndarray, ids: mx.np.ndarray) -> mx.np.ndarray:
        return model.embed(mx.nd, table, ids)

    def skip_gram(self, centers: mx.np.ndarray, contexts_negatives: mx.np.ndarray,
                  center_table: mx.np.ndarray, context_table: mx.np.ndarray) -> mx.np.ndarray:
        return model.batch_dots(mx.nd, model.embed(mx.nd, center_table, centers),
                                model.embed(mx.nd, context_table, contexts_negatives))

    def masked_bce(self, logits: mx.np.ndarray, labels: mx.np.ndarray,
                   masks: mx.np.ndarray) -> mx.np.ndarray:
        return self.objective.loss(logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------

    def get_params(self) -> Params:
        return Params(*(table.asnumpy() for table in self._tables))

    def set_params(self, params: Params) -> None:
        for values in params:
            self._check_shape(values, "parameter table")
        for parameter, values in zip((self.net.center.weight, self.net.context.weight), params):
            parameter.set_data(self.asarray(np.asarray(values, dtype=np.float32)))
        self._new_optimizer()

    # -- training ---------------------------------------------------------------------------
    def _pair_arrays(self, batch: Batch) -> tuple[model.PairPlan, tuple[mx.np.ndarray, ...]]:
        """Batch -> its pair plan and the device arrays the step reads, filled in place.

        (capacity,) centre ids, context ids, signs, weights and (V + 1,) CSR row starts.
        """
        pairs = real_pairs(batch, self.vocab_size)
        count = len(pairs.center_ids)
        if count > self._capacity:
            # Grow in steps of 1024 pairs (PTB: 13,400 on average, at most 14,500), so the
            # graph is re-planned a few times in the first steps and then never.
            self._capacity = -(-max(count, 1) // 1024) * 1024
        capacity = self._capacity
        host_ids, ids = self._writable(2 * capacity + self.vocab_size + 1, np.int64)
        host_floats, floats = self._writable(2 * capacity, np.float32)
        plan = model.padded_plan(pairs, capacity, host_ids, host_floats)
        if self.context.device_type != "cpu":
            ids[:], floats[:] = host_ids, host_floats
        return plan, (ids[:capacity], ids[capacity:2 * capacity], ids[2 * capacity:],
                      floats[:capacity], floats[capacity:])

    def _dense_gradients(self, batch: Batch) -> mx.np.ndarray:
        """Overwrite both tables' dense gradients for `batch`; return the summed loss (0-d)."""
        plan, (center_ids, context_ids, row_starts, signs, weights) = self._pair_arrays(batch)
        center_table, context_table = self._tables
        loss, slot_grads = self.pairs(center_table, context_table, center_ids, context_ids,
                                      signs, weights)
        native = self._native_gradients
        if native is not None:
            # It reads only the first row_starts[V] = count pairs: no slicing off the padding.
            native(*(array.as_nd_ndarray() for array in (
                slot_grads, context_ids, row_starts, center_table, context_table)),
                   out=[grad.as_nd_ndarray() for grad in self._grads])
        else:
            count = plan.count
            model.dense_gradients(slot_grads[:count], context_ids[:count], row_starts,
                                  center_table, context_table, *self._grads)
        return loss

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
        loss = self._dense_gradients(batch)
        return float(loss.asnumpy()), Params(*(grad.asnumpy() for grad in self._grads))

    def eval_loss(self, batch: Batch) -> mx.np.ndarray:
        """The objective alone (no gradient is written, no state changes), still on device."""
        _, (center_ids, context_ids, _, signs, weights) = self._pair_arrays(batch)
        loss, _ = self.pairs(*self._tables, center_ids, context_ids, signs, weights)
        return loss

    def train_step(self, batch: Batch) -> mx.np.ndarray:
        loss = self._dense_gradients(batch)
        self._optimizer.set_learning_rate(self.next_lr())  # the schedule's rate for this step
        for index, (table, grad) in enumerate(zip(self._tables, self._grads)):
            state = self._optimizer.create_state(index, table)
            self._optimizer.update(index, table.as_nd_ndarray(), grad.as_nd_ndarray(), state)
        return loss  # no asnumpy(): the driver syncs only when it reports

    def optimizer_state(self) -> AdamState:
        moments = self._optimizer.moments
        if not moments:  # no step taken since the optimiser was made
            zeros = Params(*(np.zeros((self.vocab_size, self.embed_size), np.float32)
                             for _ in TABLES))
            return AdamState(0, zeros, zeros)
        return AdamState(self._optimizer.steps.get(0, 0),
                         Params(*(moments[i][0].asnumpy() for i in range(len(TABLES)))),
                         Params(*(moments[i][1].asnumpy() for i in range(len(TABLES)))))

    def load_optimizer_state(self, state: AdamState) -> None:
        for table in (*state.exp_avg, *state.exp_avg_sq):
            self._check_shape(table, "optimizer state")
        self._new_optimizer()
        for index, (exp_avg, exp_avg_sq) in enumerate(zip(state.exp_avg, state.exp_avg_sq)):
            # `create_state` hands these arrays to the next step.
            self._optimizer.moments[index] = tuple(
                mx.nd.array(np.asarray(values, np.float32), ctx=self.context)
                for values in (exp_avg, exp_avg_sq))
            self._optimizer.steps[index] = int(state.step)
        self.adam_steps = int(state.step)

    def synchronize(self) -> None:
        # MXNet's engine is asynchronous on CPU as well: calls return before the work is done.
        mx.nd.waitall()

    @classmethod
    def devices(cls) -> list[str]:
        return available_devices()

    @classmethod
    def gpu_unavailable(cls) -> str:
        if not mx.runtime.Features().is_enabled("CUDA"):
            return (f"mxnet {mx.__version__} is the CPU build; MXNet's CUDA builds are separate "
                    f"packages (pip install mxnet-cu112==1.9.1 in .venv-mxnet, README: GPUs)")
        return (f"mxnet {mx.__version__} is built with CUDA but sees no GPU (no NVIDIA driver, "
                f"or CUDA_VISIBLE_DEVICES hides them)")

    # -- use ------------------------------------------------------------------------------
    def similar(self, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The chapter's `get_similar_tokens` for Q queries at once: (Q,) -> (Q, k), (Q, k)."""
        table = self.net.center.weight.data()                                   # (V, E)
        ids = self.asarray(np.asarray(query_ids, dtype=np.int32))
        queries = model.embed(mx.nd, table, ids)                                # (Q, E)
        norms = (table * table).sum(axis=1)[None, :] * (queries * queries).sum(axis=1)[:, None]
        cos = mx.np.dot(queries, table.T) / mx.np.sqrt(norms + 1e-9)            # (Q, V)
        # The chapter takes top k+1 and drops the first, assuming it is the query; masking
        # the query is exact even when another word ties with it.
        is_query = mx.npx.one_hot(ids, self.vocab_size) > 0
        cos = mx.np.where(is_query, -mx.np.inf, cos)
        values, top = mx.npx.topk(cos, k=min(k, self.vocab_size), axis=1, ret_typ="both",
                                  dtype="int64")
        return top.asnumpy(), values.asnumpy()
