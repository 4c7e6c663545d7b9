"""The MXNet backend's tuned step (`--step fast`): the chapter's objective and gradient, faster.

The same numbers as the chapter step (`model.py`), by other means (benchmarks/README.md has
the measurements):
- the batch's real (centre, context) pairs only (`pair_plan`), listed on the host by
  `common.batching.real_pairs`, instead of all (B, L) slots (56% of PTB's are padding);
- the gradient written out (`PairObjective` gives the loss and d loss / d logits in one
  hybridized graph; `dense_gradients` or the native `w2v_dense_gradients`, `gradient_kernel.cc`,
  sums the table rows) instead of autograd;
- torch's Adam (`TorchAdam`) on a vectorized native operator (`adam_kernel.cc`; MXNet's
  `adam_update` without a C++ compiler), called directly instead of through `gluon.Trainer`;
- the step's inputs written straight into MXNet memory (`FastStep._writable`).
`kernels.py` builds and loads the native operators.
"""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Any, NamedTuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Params
from backends.mxnet import kernels
from common.batching import RealPairs, real_pairs

mx.npx.set_np()  # NumPy semantics for the hybridized `PairObjective`, as in model.py

TABLES = ("center", "context")  # optimiser index 0 and 1, as in Params
_UNRESOLVED = object()  # an operator not looked up yet (None means MXNet's own)


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
    arithmetic as `adam_update`, vectorized (MXNet's runs one float at a time). It reads its
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


class PairPlan(NamedTuple):
    """A batch as its real (centre, context) pairs, in two flat arrays the device reads.

    Pairs are sorted by centre id (stable), so that with `row_starts` they are the rows of a
    CSR matrix over (centre, context) ids. Entries past `count` are padding: id 0, weight 0.
    """

    ids: np.ndarray     # int64: centre ids (capacity), context ids (capacity), row_starts (V+1)
    floats: np.ndarray  # float32: signs (capacity), weights (capacity)
    count: int          # P, the number of real pairs
    capacity: int       # the padded pair count the compiled graph was built for


def pair_plan(batch: Any, vocab_size: int, capacity: int, ids: np.ndarray | None = None,
              floats: np.ndarray | None = None) -> PairPlan:
    """A Batch's real slots as (centre, context, sign, weight), padded to `capacity`."""
    return padded_plan(real_pairs(batch, vocab_size), capacity, ids, floats)


def padded_plan(pairs: RealPairs, capacity: int, ids: np.ndarray | None = None,
                floats: np.ndarray | None = None) -> PairPlan:
    """`common.batching.real_pairs` laid out for the compiled graph, padded to `capacity`.

    sign = 1 - 2 label (+1 for a noise word, -1 for a context word) turns the BCE of logit x
    into softplus(sign x); the weight is the chapter's per-example mean. `ids`
    (2 capacity + V + 1 int64) and `floats` (2 capacity float32) are filled when given, so
    that the plan can be written straight into device memory.
    """
    count, vocab_size = len(pairs.center_ids), len(pairs.row_starts) - 1
    if count > capacity:
        raise ValueError(f"{count} pairs exceed the plan's capacity {capacity}")
    ids = np.empty(2 * capacity + vocab_size + 1, np.int64) if ids is None else ids
    floats = np.empty(2 * capacity, np.float32) if floats is None else floats
    center_ids, context_ids, row_starts = ids[:capacity], ids[capacity:2 * capacity], \
        ids[2 * capacity:]
    signs, weights = floats[:capacity], floats[capacity:]
    for padded in (center_ids, context_ids, signs, weights):
        padded[count:] = 0
    center_ids[:count] = pairs.center_ids
    context_ids[:count] = pairs.context_ids
    signs[:count] = 1 - 2 * pairs.labels
    weights[:count] = pairs.weights
    row_starts[:] = pairs.row_starts
    return PairPlan(ids, floats, count, capacity)


class PairObjective(gluon.HybridBlock):
    """The objective over a batch's pairs and its gradient with respect to each logit.

    With x_p = v_c . u_o for pair p = (centre c, context o), s_p its sign, w_p its weight:
        loss = sum_p w_p softplus(s_p x_p)      (the chapter's l.sum(), padding excluded)
        g_p  = d loss / d x_p = w_p s_p sigmoid(s_p x_p)
    The dot products are one elementwise product and a FullyConnected against a row of ones:
    that row sum is oneDNN's vectorized inner product, where MXNet's `sum(axis=1)` is a
    scalar loop, and `batch_dot` over pairs would be one tiny GEMM per pair.
    """

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        super().__init__()
        self.vocab_size, self.embed_size = vocab_size, embed_size

    def hybrid_forward(self, F: Any, center_table: Any, context_table: Any, center_ids: Any,
                       context_ids: Any, signs: Any, weights: Any) -> tuple[Any, Any]:
        """(V, E) tables, (P,) ids, signs, weights -> 0-d loss, (P,) d loss / d logits."""
        sizes = dict(input_dim=self.vocab_size, output_dim=self.embed_size)  # no .shape here
        ones = F.np.ones((1, self.embed_size), dtype="float32")
        v = F.npx.embedding(center_ids, center_table, **sizes)            # (P, E)
        u = F.npx.embedding(context_ids, context_table, **sizes)          # (P, E)
        logits = F.npx.fully_connected(u * v, ones, num_hidden=1, no_bias=True)
        signed = F.np.squeeze(logits, axis=1) * signs                   # s_p x_p, (P,)
        terms = weights * F.npx.activation(signed, act_type="softrelu")
        # A running sum, in float64, is summed in pair order: the padding after the real
        # pairs adds exact zeros, so the loss does not depend on the capacity (a `dot` or
        # `sum` may group terms by length), and a resumed run reports bit for bit the same.
        running = F.np.cumsum(terms.astype("float64"))
        loss = F.np.squeeze(F.npx.slice(running, begin=(-1,), end=(None,)), axis=0)
        loss = loss.astype("float32")
        return loss, weights * signs * F.npx.sigmoid(signed)


def dense_gradients(slot_grads: Any, context_ids: Any, row_starts: Any, center_table: Any,
                    context_table: Any, center_grad: Any, context_grad: Any) -> None:
    """Overwrite both (V, E) gradients from the pairs' d loss / d logits, eagerly.

    M = sum_p g_p e_c e_o^T is a (V, V) CSR matrix (rows: centres, columns: contexts), so
        d loss / d center  = M @ context_table      d loss / d context = M^T @ center_table
    which sums repeated ids and leaves untouched rows 0: dense gradients, for dense Adam.
    Both products read each pair once; no (P, E) temporary is written. Sparse arrays are
    legacy `mx.nd` arrays, hence the `as_nd_ndarray()` views (no copies). The training step
    uses the native `w2v_dense_gradients` (`gradient_kernel.cc`, the same sums in one pass)
    where it is built; this is its fallback (W2V_MXNET_KERNEL=builtin) and its reference.
    """
    vocab_size = center_table.shape[0]
    # csr_matrix puts its result on the default context (the CPU) unless told otherwise,
    # whatever its inputs' context: on a GPU the products would then mix devices.
    pairs = mx.nd.sparse.csr_matrix((slot_grads.as_nd_ndarray(), context_ids.as_nd_ndarray(),
                                     row_starts.as_nd_ndarray()),
                                    shape=(vocab_size, vocab_size), ctx=center_table.ctx)
    mx.nd.sparse.dot(pairs, context_table.as_nd_ndarray(), out=center_grad.as_nd_ndarray())
    mx.nd.sparse.dot(pairs, center_table.as_nd_ndarray(), transpose_a=True,
                     forward_stype="default", out=context_grad.as_nd_ndarray())


class FastStep:
    """The tuned step over two (V, E) tables on `context`: its buffers and optimiser state."""

    def __init__(self, vocab_size: int, embed_size: int, lr: float,
                 context: mx.Context) -> None:
        self.vocab_size, self.embed_size, self.lr, self.context = (vocab_size, embed_size, lr,
                                                                   context)
        self.pairs = PairObjective(vocab_size, embed_size)
        # One cached graph for the forward and d loss / d logits; static_alloc keeps its
        # memory from step to step, static_shape its plan (hence the fixed pair capacity).
        self.pairs.hybridize(static_alloc=True, static_shape=True)
        self.capacity = 0
        self.grads = tuple(mx.np.zeros((vocab_size, embed_size), ctx=context) for _ in TABLES)
        self.reset()

    def reset(self) -> None:
        """A fresh optimiser (no state, step 0) over both tables, in `TABLES` order."""
        self.optimizer = TorchAdam(self.lr)

    @functools.cached_property
    def native_gradients(self) -> Any:
        """The native gradient operator, or None for `dense_gradients` (sparse dot).

        Resolved on the first step, once, as `kernels.dense_gradients` says (CPU only).
        """
        return kernels.dense_gradients() if self.context.device_type == "cpu" else None

    def _writable(self, size: int, dtype: type) -> tuple[np.ndarray, mx.np.ndarray]:
        """A fresh (size,) device array and, on CPU, a NumPy view of its memory to fill.

        Filling device memory from the host this way skips `mx.np.array`, whose copy ends in
        `WaitToWrite`: that queues a no-op behind the engine's pending work and blocks until it
        has run, so each step's inputs waited for the previous step's Adam and the host never
        ran ahead. A fresh array has no pending work, and the view is filled before any
        operator is given the array. Elsewhere the host array is copied in (`pair_arrays`).
        """
        array = mx.nd.empty((size,), ctx=self.context, dtype=dtype)
        if self.context.device_type != "cpu":
            return np.empty(size, dtype), array.as_np_ndarray()
        pointer = ctypes.c_void_p()
        mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
        memory = (ctypes.c_char * (size * np.dtype(dtype).itemsize)).from_address(pointer.value)
        return np.frombuffer(memory, dtype), array.as_np_ndarray()

    def pair_arrays(self, batch: Any) -> tuple[PairPlan, tuple[mx.np.ndarray, ...]]:
        """Batch -> its pair plan and the device arrays the step reads, filled in place.

        (capacity,) centre ids, context ids, signs, weights and (V + 1,) CSR row starts.
        """
        pairs = real_pairs(batch, self.vocab_size)
        count = len(pairs.center_ids)
        if count > self.capacity:
            # Grow in steps of 1024 pairs (PTB: 13,400 on average, at most 14,500), so the
            # graph is re-planned a few times in the first steps and then never.
            self.capacity = -(-max(count, 1) // 1024) * 1024
        capacity = self.capacity
        host_ids, ids = self._writable(2 * capacity + self.vocab_size + 1, np.int64)
        host_floats, floats = self._writable(2 * capacity, np.float32)
        plan = padded_plan(pairs, capacity, host_ids, host_floats)
        if self.context.device_type != "cpu":
            ids[:], floats[:] = host_ids, host_floats
        return plan, (ids[:capacity], ids[capacity:2 * capacity], ids[2 * capacity:],
                      floats[:capacity], floats[capacity:])

    def gradients(self, tables: tuple[mx.np.ndarray, mx.np.ndarray],
                  batch: Any) -> mx.np.ndarray:
        """Overwrite both tables' dense gradients (`self.grads`) for `batch`; the 0-d loss."""
        plan, (center_ids, context_ids, row_starts, signs, weights) = self.pair_arrays(batch)
        center_table, context_table = tables
        loss, slot_grads = self.pairs(center_table, context_table, center_ids, context_ids,
                                      signs, weights)
        native = self.native_gradients
        if native is not None:
            # It reads only the first row_starts[V] = count pairs: no slicing off the padding.
            native(*(array.as_nd_ndarray() for array in (
                slot_grads, context_ids, row_starts, center_table, context_table)),
                   out=[grad.as_nd_ndarray() for grad in self.grads])
        else:
            count = plan.count
            dense_gradients(slot_grads[:count], context_ids[:count], row_starts,
                            center_table, context_table, *self.grads)
        return loss

    def eval_loss(self, tables: tuple[mx.np.ndarray, mx.np.ndarray], batch: Any) -> Any:
        """The objective alone (no gradient is written, no state changes), still on device."""
        _, (center_ids, context_ids, _, signs, weights) = self.pair_arrays(batch)
        loss, _ = self.pairs(*tables, center_ids, context_ids, signs, weights)
        return loss

    def train_step(self, tables: tuple[mx.np.ndarray, mx.np.ndarray], batch: Any,
                   lr: float) -> mx.np.ndarray:
        """One Adam step of rate `lr` on `batch`; the 0-d loss, still on device."""
        loss = self.gradients(tables, batch)
        self.apply(tables, lr)
        return loss

    def apply(self, tables: tuple[mx.np.ndarray, mx.np.ndarray], lr: float) -> None:
        """Adam at rate `lr` on `tables` with the gradients in `self.grads`, in place."""
        self.optimizer.set_learning_rate(lr)
        for index, (table, grad) in enumerate(zip(tables, self.grads)):
            state = self.optimizer.create_state(index, table)
            self.optimizer.update(index, table.as_nd_ndarray(), grad.as_nd_ndarray(), state)

    def state(self) -> AdamState:
        moments = self.optimizer.moments
        if not moments:  # no step taken since the optimiser was made
            zeros = Params(*(np.zeros((self.vocab_size, self.embed_size), np.float32)
                             for _ in TABLES))
            return AdamState(0, zeros, zeros)
        return AdamState(self.optimizer.steps.get(0, 0),
                         Params(*(moments[i][0].asnumpy() for i in range(len(TABLES)))),
                         Params(*(moments[i][1].asnumpy() for i in range(len(TABLES)))))

    def load_state(self, state: AdamState) -> None:
        self.reset()
        for index, (exp_avg, exp_avg_sq) in enumerate(zip(state.exp_avg, state.exp_avg_sq)):
            # `create_state` hands these arrays to the next step.
            self.optimizer.moments[index] = tuple(
                mx.nd.array(np.asarray(values, np.float32), ctx=self.context)
                for values in (exp_avg, exp_avg_sq))
            self.optimizer.steps[index] = int(state.step)
